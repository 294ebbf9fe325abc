"""Buckets run as one slice of the batch per core (engine/split.py): numerics against
onnxruntime, which buckets split, tuning per slice, and graphs that must not be split."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from engine import load_model
from engine.split import SplitPlan, slices
from engine.threads import cpu_cores
from tests.engine.reference import rel_error
from tests.engine.test_model import small_cnn

pytestmark = pytest.mark.skipif(cpu_cores() < 2, reason="one core: nothing to split")


@pytest.fixture(scope="module")
def cnn(tmp_path_factory):
    path = tmp_path_factory.mktemp("split") / "small.onnx"
    onnx.save(small_cnn(np.random.default_rng(11)), path)
    return path


def test_slices_cover_the_batch_once():
    for n in range(1, 20):
        for lanes in (1, 2, 3, 4):
            parts = slices(n, lanes)
            assert parts[0][0] == 0 and parts[-1][1] == n and len(parts) == min(n, lanes)
            assert all(a < b for a, b in parts)
            assert all(p[1] == q[0] for p, q in zip(parts, parts[1:]))
            assert max(b - a for a, b in parts) - min(b - a for a, b in parts) <= 1


@pytest.mark.parametrize("n", [2, 3, 5, 7])
def test_split_buckets_match_onnxruntime(cnn, tmp_path, n):
    """Odd batches give slices of different sizes; padded buckets leave the last slice short."""
    model = load_model(cnn, batch_sizes=(1, 3, 8), autotune_cache=tmp_path / "tune.json")
    plan = model._plan((model.bucket_for(n), *model.input_shape))
    assert isinstance(plan, SplitPlan) and len(plan.parts) == min(cpu_cores(), plan.ranges[-1][1])
    assert isinstance(model._plan((1, *model.input_shape)), type(plan.parts[0]))  # batch 1 whole
    x = np.random.default_rng(n).standard_normal((n, 3, 9, 11)).astype(np.float32)
    expected = ort.InferenceSession(str(cnn)).run(None, {"x": x})[0]
    assert rel_error(model(x), expected) < 1e-4
    assert rel_error(model(x[::-1].copy()), expected[::-1]) < 1e-4  # no state kept between calls


def test_each_slice_is_tuned_for_one_thread(cnn, tmp_path):
    cache = tmp_path / "tune.json"
    load_model(cnn, batch_sizes=(1, 4), autotune_cache=cache)
    keys = json.loads(cache.read_text())["entries"]
    whole = [k for k in keys if k.startswith("n1_") and not k.endswith("_t1")]
    sliced = [k for k in keys if k.endswith("_t1")]
    assert len(whole) == 3  # bucket 1: three convs, threads as the tuner finds best
    assert len(sliced) == 3 and all(k.startswith(f"n{4 // min(cpu_cores(), 4)}_") for k in sliced)


def test_blas_threading_and_buffers(cnn):
    blas = load_model(cnn, batch_sizes=(4,), cpu_threading="blas", autotune_mode="off")
    assert not isinstance(blas._plan((4, *blas.input_shape)), SplitPlan)
    split = load_model(cnn, batch_sizes=(1, 4, 8), autotune_mode="off")
    assert len(split.arenas) == min(cpu_cores(), 4)  # one arena per slice, shared by buckets
    for plan in split.plans.values():
        for lane, arena in zip(plan.lanes(), split.arenas):
            assert arena.fits(lane)


def test_a_graph_with_a_fixed_batch_dimension_is_not_split(tmp_path):
    """Flatten(axis=0) mixes the images: slices would compute something else."""
    node = helper.make_node("Flatten", ["x"], ["y"], axis=0)
    graph = helper.make_graph(
        [node], "flat",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 2, 3, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 72])],
    )  # fmt: skip
    path = tmp_path / "flat.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    model = load_model(path, batch_sizes=(4,), autotune_mode="off")
    assert not isinstance(model._plan((4, 2, 3, 3)), SplitPlan)
    x = np.random.default_rng(3).standard_normal((4, 2, 3, 3)).astype(np.float32)
    assert np.array_equal(model.run({"x": x})[0], x.reshape(1, 72))
