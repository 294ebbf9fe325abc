"""A max-pool fused into the preceding conv (engine/passes.py ``fuse_pools``): the compiled
Winograd kernels pool in their output transform; every other algorithm runs the conv into the
workspace and pools from there. Either way the result is onnxruntime's."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import helper

import engine.autotune as autotune
from engine import jit, load_model
from engine.conv import ALGORITHMS
from tests.engine.onnx_builders import make_model, randn
from tests.engine.reference import rel_error

ACTIVATIONS = {
    "none": [],
    "relu": [("Relu", {})],
    "leaky": [("LeakyRelu", {"alpha": 0.2})],
    "hardswish": [("HardSwish", {})],  # not monotonic: must be applied before the max
}


def conv_pool_model(rng, n, c, size, k, activation, window, **pool_attrs):
    """x -> Conv 3x3 pad 1 (+ activation) -> MaxPool -> Conv 1x1: the pooled map feeds another
    conv."""
    consts = {"w": randn(rng, k, c, 3, 3, scale=0.3), "b": randn(rng, k),
              "w2": randn(rng, 4, k, 1, 1, scale=0.3)}  # fmt: skip
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["a0"], pads=[1, 1, 1, 1])]
    for i, (op, attrs) in enumerate(ACTIVATIONS[activation]):
        nodes.append(helper.make_node(op, [f"a{i}"], [f"a{i + 1}"], **attrs))
    last = nodes[-1].output[0]
    attrs = {"kernel_shape": [window, window], "strides": [window, window], **pool_attrs}
    nodes += [helper.make_node("MaxPool", [last], ["p"], **attrs),
              helper.make_node("Conv", ["p", "w2"], ["y"])]  # fmt: skip
    x = randn(rng, n, c, size, size)
    return make_model(nodes, {"x": x}, ["y"], consts, opset=14), x.shape


def forced(monkeypatch, name):
    """Untuned models use ``name`` for every conv it applies to (im2col_gemm elsewhere)."""
    pick = lambda spec: name if ALGORITHMS[name].applicable(spec) else "im2col_gemm"  # noqa: E731
    monkeypatch.setattr(autotune, "heuristic_default", pick)


def checked(proto, shape, rng, calls=3):
    """The model, after ``calls`` passes on fresh inputs, each matching onnxruntime's."""
    session = ort.InferenceSession(proto.SerializeToString())
    model = load_model(proto.SerializeToString(), batch_sizes=(shape[0],), autotune_mode="off")
    for _ in range(calls):  # later calls run the compiled chains, where there are any
        x = randn(rng, *shape)
        assert rel_error(model(x), session.run(None, {"x": x})[0]) < 1e-4
    return model


def conv_steps(model):
    plan = model._plan((model.max_batch_size, *model.input_shape))
    return [s for lane in plan.lanes() for s in lane.steps if type(s.op).__name__ == "Conv"]


def step_ops(model):
    plan = model._plan((model.max_batch_size, *model.input_shape))
    return [type(s.op).__name__ for s in plan.lanes()[0].steps]


WINOGRAD = ["winograd_f2x2_compiled", "winograd_f4x4_compiled"]


@pytest.mark.skipif(not jit.available(), reason="numba missing: no compiled Winograd")
@pytest.mark.parametrize("name", WINOGRAD)
@pytest.mark.parametrize("activation", ["none", "relu", "leaky"])
@pytest.mark.parametrize("n, size", [(1, 16), (1, 13), (2, 18)])
def test_winograd_pools_in_its_output_transform(monkeypatch, name, activation, n, size):
    """Even and odd maps (a 13x13 output pools to 6x6, its last row and column dropped), tiles
    running past the map's edge, one image or one per core."""
    forced(monkeypatch, name)
    rng = np.random.default_rng(size + n)
    proto, shape = conv_pool_model(rng, n, 16, size, 24, activation, window=2)
    model = checked(proto, shape, rng)
    assert "MaxPool" not in step_ops(model)
    first = conv_steps(model)[0].op
    assert first.algorithm.name == name and first.pooled and first.pool == 2


@pytest.mark.parametrize("name, activation, window, size, seed", [
    *[(name, "hardswish", 2, 15, 3) for name in ("im2col_gemm", "winograd_f2x2_3x3", *WINOGRAD)],
    *[(name, "relu", 4, 20, 7) for name in WINOGRAD],
])  # fmt: skip
def test_algorithms_that_cannot_pool_run_the_pool_after_the_conv(
    monkeypatch, name, activation, window, size, seed
):
    """A conv whose activation must come before the max (HardSwish is not monotonic, and the
    compiled Winograd applies it after its kernel), whose algorithm has no pooled output
    stage, or whose window the kernels do not take (they pool 2 x 2 only): the op pools the
    full map from its workspace."""
    if name in WINOGRAD and not jit.available():
        pytest.skip("numba missing: no compiled Winograd")
    forced(monkeypatch, name)
    rng = np.random.default_rng(seed)
    proto, shape = conv_pool_model(rng, 1, 8, size, 16, activation, window=window)
    model = checked(proto, shape, rng)
    first = conv_steps(model)[0].op
    assert first.pool == window and not first.pooled
    assert "MaxPool" not in step_ops(model)


@pytest.mark.parametrize("attrs", [
    {"pads": [0, 0, 1, 1]},
    {"ceil_mode": 1},
    {"dilations": [2, 2]},
    {"strides": [1, 1]},
])  # fmt: skip
def test_pools_the_conv_cannot_take_stay_separate(monkeypatch, attrs):
    forced(monkeypatch, "winograd_f4x4_compiled" if jit.available() else "im2col_gemm")
    rng = np.random.default_rng(len(str(attrs)))
    proto, shape = conv_pool_model(rng, 1, 8, 17, 16, "relu", window=2, **attrs)
    model = checked(proto, shape, rng)
    assert "MaxPool" in step_ops(model)
    assert conv_steps(model)[0].op.pool == 1


def test_a_conv_output_read_twice_is_not_pooled_in_place():
    """The full-size map is also a graph output: the pool stays a step of its own."""
    rng = np.random.default_rng(11)
    x = randn(rng, 1, 4, 12, 12)
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["a"], pads=[1, 1, 1, 1]),
        helper.make_node("MaxPool", ["a"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
    ]
    proto = make_model(nodes, {"x": x}, ["p", "a"], {"w": randn(rng, 8, 4, 3, 3)})
    session = ort.InferenceSession(proto.SerializeToString())
    model = load_model(proto.SerializeToString(), batch_sizes=(1,), autotune_mode="off")
    outputs = model.run({"x": x})
    for got, want in zip(outputs, session.run(None, {"x": x})):
        assert rel_error(got, want) < 1e-5
    assert "MaxPool" in step_ops(model)
