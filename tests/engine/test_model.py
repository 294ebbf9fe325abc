"""The Model's own behaviour: batch buckets, shared buffers, input checks, info, allocation."""

from __future__ import annotations

import tracemalloc

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from engine import InputShapeError, ModelLoadError, UnsupportedModelError, load_model
from tests.engine.reference import rel_error


def _tensor(rng, name, shape, scale=0.3):
    return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)


def small_cnn(rng, channels=3, size=(9, 11)) -> onnx.ModelProto:
    """Conv-BN-Relu, strided conv, maxpool, residual add, GAP, Gemm, Softmax; non-square input."""
    inits = [
        _tensor(rng, "w0", (6, channels, 3, 3)), _tensor(rng, "b0", (6,)),
        numpy_helper.from_array(rng.uniform(0.5, 1.5, 6).astype(np.float32), "gamma"),
        _tensor(rng, "beta", (6,)), _tensor(rng, "mean", (6,)),
        numpy_helper.from_array(rng.uniform(0.5, 1.5, 6).astype(np.float32), "var"),
        _tensor(rng, "w1", (6, 6, 3, 3)), _tensor(rng, "w2", (6, 6, 1, 1)),
        _tensor(rng, "fc_w", (5, 6)), _tensor(rng, "fc_b", (5,)),
    ]  # fmt: skip
    nodes = [
        helper.make_node("Conv", ["x", "w0", "b0"], ["c0"], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c0", "gamma", "beta", "mean", "var"], ["bn"]),
        helper.make_node("Relu", ["bn"], ["r0"]),
        helper.make_node("Conv", ["r0", "w1"], ["c1"], pads=[1, 0, 1, 2], strides=[2, 1]),
        helper.make_node("Conv", ["c1", "w2"], ["c2"]),
        helper.make_node("Add", ["c1", "c2"], ["sum"]),
        helper.make_node(
            "MaxPool", ["sum"], ["p"], kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1
        ),
        helper.make_node("GlobalAveragePool", ["p"], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["flat"]),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], transB=1),
        helper.make_node("Softmax", ["logits"], ["y"], axis=1),
    ]
    graph = helper.make_graph(
        nodes, "small",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", channels, *size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])], inits,
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.fixture(scope="module")
def cnn(tmp_path_factory):
    rng = np.random.default_rng(7)
    path = tmp_path_factory.mktemp("m") / "small.onnx"
    onnx.save(small_cnn(rng), path)
    return path


def _reference(path, x):
    return ort.InferenceSession(str(path)).run(None, {"x": x})[0]


@pytest.mark.parametrize("n", [1, 3, 7, 8, 11])
def test_any_batch_size_matches_onnxruntime(cnn, n):
    model = load_model(cnn, batch_sizes=(1, 2, 4, 8))
    x = np.random.default_rng(n).standard_normal((n, 3, 9, 11)).astype(np.float32)
    assert rel_error(model(x), _reference(cnn, x)) < 1e-4


def test_buckets_share_buffers_without_mixing_results(cnn):
    model = load_model(cnn, batch_sizes=(1, 4))
    rng = np.random.default_rng(3)
    a = rng.standard_normal((4, 3, 9, 11)).astype(np.float32)
    b = rng.standard_normal((1, 3, 9, 11)).astype(np.float32)
    model(a)  # the first call of a plan builds its compiled chains (same numerics from then on)
    ya = model(a)
    yb = model(b)
    np.testing.assert_array_equal(model(a), ya)  # a bucket-1 run in between changed nothing
    assert rel_error(yb, _reference(cnn, b)) < 1e-4
    # a padded row does not change the answers of the real rows
    np.testing.assert_allclose(model(a[:3]), ya[:3], rtol=1e-5, atol=1e-6)


def test_batch_larger_than_every_bucket_is_split(cnn):
    model = load_model(cnn, batch_sizes=(2,))
    x = np.random.default_rng(5).standard_normal((5, 3, 9, 11)).astype(np.float32)
    assert model(x).shape == (5, 5)
    assert rel_error(model(x), _reference(cnn, x)) < 1e-4
    assert model.last_stats.batch == 5


def test_steady_state_allocates_nothing_in_proportion_to_the_batch(tmp_path):
    path = tmp_path / "wide.onnx"
    onnx.save(small_cnn(np.random.default_rng(2), size=(65, 67)), path)
    model = load_model(path, batch_sizes=(16,))
    x = np.random.default_rng(1).standard_normal((16, 3, 65, 67)).astype(np.float32)
    model(x)
    tracemalloc.start()
    model(x)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    first_activation = 16 * 6 * 65 * 67 * 4
    # NumPy copies strided views through a bounded buffer (~32 KiB), one per worker thread
    iteration_buffers = 4 * 64 * 1024
    assert iteration_buffers < first_activation / 4
    assert peak < iteration_buffers, f"a steady-state call allocated {peak} bytes"


@pytest.mark.parametrize(
    "shape, dtype",
    [((2, 3, 9, 10), np.float32), ((2, 4, 9, 11), np.float32), ((3, 9, 11), np.float32),
     ((2, 3, 9, 11), np.int32), ((0, 3, 9, 11), np.float32)],
)  # fmt: skip
def test_wrong_input_is_a_typed_error_naming_the_shapes(cnn, shape, dtype):
    model = load_model(cnn, batch_sizes=(1, 2))
    with pytest.raises(InputShapeError, match=r"\(|int32") as error:
        model(np.ones(shape, dtype))
    assert isinstance(error.value, ValueError)


def test_info_lists_layers_algorithms_and_shapes(cnn):
    info = load_model(cnn, batch_sizes=(1, 2)).info()
    assert info["name"] == "small" and info["device"] == "cpu" and info["backend"] == "numpy"
    assert info["inputs"][0]["shape"] == ["N", 3, 9, 11]
    assert info["outputs"][0]["shape"] == ["N", 5]
    assert info["batch_sizes"] == [1, 2]
    convs = [layer for layer in info["layers"] if layer["op"] == "Conv"]
    assert len(convs) == 3  # BatchNorm and Relu folded into the first conv
    assert all(c["algorithm"] and c["source"] in ("default", "tuned", "cache") for c in convs)
    assert "BatchNormalization" not in {layer["op"] for layer in info["layers"]}


def test_unsupported_ops_are_all_named(tmp_path):
    nodes = [
        helper.make_node("Erf", ["x"], ["a"]),
        helper.make_node("Relu", ["a"], ["b"], bogus=3),
        helper.make_node("Mish", ["b"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "bad", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )  # fmt: skip
    path = tmp_path / "bad.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)
    with pytest.raises(UnsupportedModelError) as error:
        load_model(path)
    message = str(error.value)
    assert "Erf" in message and "Mish" in message and "bogus" in message


def test_unreadable_model_is_a_load_error(tmp_path):
    path = tmp_path / "junk.onnx"
    path.write_bytes(np.random.default_rng(0).bytes(300))
    with pytest.raises(ModelLoadError):
        load_model(path)
    with pytest.raises(ModelLoadError):
        load_model(tmp_path / "missing.onnx")


@pytest.mark.parametrize("n", [1, 2, 5])
def test_engine_cpu_threading_matches_onnxruntime(cnn, n):
    """BLAS on one thread and the engine's own per-core split: same answers as onnxruntime."""
    model = load_model(cnn, batch_sizes=(1, 2, 8), cpu_threading="engine")
    assert model.info()["cpu_threading"] == "engine"
    x = np.random.default_rng(n).standard_normal((n, 3, 9, 11)).astype(np.float32)
    assert rel_error(model(x), _reference(cnn, x)) < 1e-5


@pytest.mark.parametrize("cpu_threading", ["engine", "blas"])
def test_cpu_threading_decides_blas_threads_inside_a_pass(cnn, monkeypatch, cpu_threading):
    from engine.threads import blas_libraries

    libraries = blas_libraries()
    if not libraries or max(lib.get_num_threads() for lib in libraries) < 2:
        pytest.skip("needs a BLAS that threadpoolctl can see, with 2+ threads")
    before = [lib.get_num_threads() for lib in libraries]
    model = load_model(cnn, batch_sizes=(2,), cpu_threading=cpu_threading)
    op = next(iter(model.plans.values())).steps[0].op
    seen, run = [], op.run

    def spy(*args):
        seen.append([lib.get_num_threads() for lib in libraries])
        return run(*args)

    monkeypatch.setattr(op, "run", spy)
    model(np.random.default_rng(3).standard_normal((2, 3, 9, 11)).astype(np.float32))
    assert seen == [[1] * len(libraries) if cpu_threading == "engine" else before]
    assert [lib.get_num_threads() for lib in libraries] == before


def test_a_cache_tuned_under_one_cpu_threading_is_not_used_under_the_other(cnn, tmp_path):
    cache = tmp_path / "tune.json"
    load_model(cnn, batch_sizes=(1,), autotune_cache=cache, cpu_threading="blas")
    other = load_model(cnn, batch_sizes=(1,), autotune_cache=cache, cpu_threading="engine")
    assert other.info()["autotune"]["cache_status"] == "foreign"
    assert other.info()["autotune"]["hits"] == 0


def test_unknown_cpu_threading_is_refused(cnn):
    with pytest.raises(ValueError, match="cpu_threading"):
        load_model(cnn, batch_sizes=(1,), cpu_threading="openmp")
