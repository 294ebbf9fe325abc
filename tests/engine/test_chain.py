"""Runs of compiled steps called as one compiled function (engine/chain.py): which steps are
chained, numerics against onnxruntime call after call, and a kernel swapped after chaining."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import helper

import engine.autotune as autotune
from engine import jit, lanes, load_model
from engine.backends import cpu_elementwise
from engine.bench.nets import cifar_net, mobilenet
from engine.chain import Chain, LaneChain
from engine.lanes import MIN_SHARE
from tests.engine.conv_cases import compiled_first
from tests.engine.faults import break_conv, conv_names
from tests.engine.onnx_builders import make_model, randn
from tests.engine.reference import rel_error

pytestmark = pytest.mark.skipif(not jit.available(), reason="numba missing: nothing to chain")


@pytest.fixture
def net(monkeypatch):
    monkeypatch.setattr(autotune, "heuristic_default", compiled_first)
    proto = cifar_net(seed=4)
    return proto.SerializeToString(), ort.InferenceSession(proto.SerializeToString())


def segments_of(model, n: int) -> list:
    plan = model._plan((model.bucket_for(n), *model.input_shape))
    return plan.lanes()[0]._segments


def chains_of(model, n: int) -> list:
    return [s for s in segments_of(model, n) if isinstance(s, Chain | LaneChain)]


def test_the_convs_and_pools_run_as_one_chain(net):
    """(Untuned: implicit_gemm, which pools from the workspace, in the same chain.)"""
    model_bytes, session = net
    model = load_model(model_bytes, batch_sizes=(1, 4), autotune_mode="off")
    assert segments_of(model, 1) is None  # built by the first call, from its buffers
    rng = np.random.default_rng(0)
    answers = []
    for n in (1, 3, 4, 1, 4, 1):  # fresh inputs each call: a chain must never keep stale data
        x = rng.standard_normal((n, 3, 32, 32)).astype(np.float32)
        expected = session.run(None, {"input": x})[0]
        y = model(x)
        assert rel_error(y, expected) < 1e-4
        assert (model.last_stats.batch, model.last_stats.bucket) == (n, model.bucket_for(n))
        answers.append((y, y.copy()))
    for y, kept in answers:  # each answer its own array: later calls changed none
        np.testing.assert_array_equal(y, kept)
    for n in (1, 4):
        chains = [s for s in segments_of(model, n) if isinstance(s, Chain | LaneChain)]
        assert len(chains) == 1
        ops = [type(step.op).__name__ for step in chains[0].steps]
        assert ops.count("Conv") == 5 and ops.count("GlobalPool") == 1
        assert "MaxPool" not in ops  # both 2x2 pools fused into their convs (engine.passes)


@pytest.mark.parametrize("n", [1, 2])  # one lane chain (the whole pass one call); batch slices
def test_a_kernel_swapped_after_chaining_is_used(net, n):
    """Swapping a conv's algorithm (here: a deliberately wrong one) rebuilds the chains."""
    model_bytes, session = net
    model = load_model(model_bytes, batch_sizes=(n,), autotune_mode="off")
    x = np.random.default_rng(1).standard_normal((n, 3, 32, 32)).astype(np.float32)
    expected = session.run(None, {"input": x})[0]
    for _ in range(2):
        assert rel_error(model(x), expected) < 1e-4
    break_conv(model, conv_names(model)[2], shift=0.5)
    assert rel_error(model(x), expected) > 1e-3


def test_residual_adds_and_depthwise_convs_join_the_chain(monkeypatch):
    monkeypatch.setattr(autotune, "heuristic_default", compiled_first)
    proto = mobilenet(seed=2, size=32)
    session = ort.InferenceSession(proto.SerializeToString())
    model = load_model(proto.SerializeToString(), batch_sizes=(1, 4), autotune_mode="off")
    rng = np.random.default_rng(3)
    for n in (1, 4, 1, 3):
        x = rng.standard_normal((n, 3, 32, 32)).astype(np.float32)
        assert rel_error(model(x), session.run(None, {"input": x})[0]) < 1e-4
    for n in (1, 4):
        chains = chains_of(model, n)
        ops = [(type(step.op).__name__, step.op.ctx.node and step.op.ctx.node.op)
               for c in chains for step in c.steps]  # fmt: skip
        assert ("Binary", "Add") in ops and ("Conv", "Conv") in ops
        assert len(chains) == 1  # stem to head: every step a compiled call


def test_residual_relus_and_clips_join_the_chain(monkeypatch):
    """Add -> Relu is one Add with the ReLU fused; a Clip after an Add stays its own step: both
    compiled into the chain, and at batch 1 (16x64x64 sums) split across the lanes where this
    machine has them. Fresh inputs each call against onnxruntime."""
    monkeypatch.setattr(autotune, "heuristic_default", compiled_first)
    rng = np.random.default_rng(5)
    x = randn(rng, 1, 16, 64, 64)
    consts = {name: randn(rng, 16, 16, 3, 3, scale=0.2) for name in ("wa", "wb", "wc")}
    nodes = [
        helper.make_node("Conv", ["x", "wa"], ["a"], pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["a", "wb"], ["b"], pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["a", "b"], ["s"]),
        helper.make_node("Relu", ["s"], ["r"]),
        helper.make_node("Add", ["r", "a"], ["t"]),
        helper.make_node("Clip", ["t"], ["u"], min=-0.5, max=0.75),
        helper.make_node("Conv", ["u", "wc"], ["y"], pads=[1, 1, 1, 1]),
    ]
    proto = make_model(nodes, {"x": x}, ["y"], consts, opset=10)
    session = ort.InferenceSession(proto.SerializeToString())
    model = load_model(proto.SerializeToString(), batch_sizes=(1, 2), autotune_mode="off")
    for n in (1, 2, 1, 1, 2):
        x = randn(rng, n, 16, 64, 64)
        expected = np.concatenate([session.run(None, {"x": x[i : i + 1]})[0] for i in range(n)])
        assert rel_error(model(x), expected) < 1e-4
    for n in (1, 2):
        chains = chains_of(model, n)
        assert len(chains) == 1
        steps = chains[0].steps
        ops = [(type(s.op).__name__, s.op.ctx.node and s.op.ctx.node.op) for s in steps]
        layout = ("LayoutConvert", None)  # the input into NHWC, the output back: compiled too
        assert ops == [layout, *[("Conv", "Conv")] * 2, ("Binary", "Add"), ("Binary", "Add"),
                       ("Activation", "Clip"), ("Conv", "Conv"), layout]  # fmt: skip
        fused = [s.op.epilogue for s, op in zip(steps, ops) if op == ("Binary", "Add")]
        assert [e and e.kind for e in fused] == ["relu", None]
    if lanes.available():
        (chain,) = chains_of(model, 1)
        assert isinstance(chain, LaneChain) and max(chain.widths) == lanes.lane_count()


def test_element_wise_spans_cover_the_buffer_on_cache_lines():
    for size, count in ((5, 2), (MIN_SHARE, 4), (2 * MIN_SHARE + 3, 2), (10 * MIN_SHARE + 7, 3)):
        spans = [tuple(s) for s in cpu_elementwise.spans(size, count)]
        assert spans[0][0] == 0 and spans[-1][1] == size
        assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
        assert all(a % cpu_elementwise.ALIGN == 0 for a, _ in spans)
        assert len(spans) == max(1, min(count, size // MIN_SHARE))


@pytest.mark.parametrize("pool, attrs", [
    ("MaxPool", {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}),
    ("AveragePool", {"kernel_shape": [3, 3], "strides": [1, 1], "pads": [1, 1, 1, 1]}),
    ("AveragePool", {"kernel_shape": [2, 2], "strides": [2, 2], "pads": [0, 0, 1, 1],
                     "count_include_pad": 1}),
])  # fmt: skip
def test_pools_and_the_head_join_the_chain_split_across_lanes(monkeypatch, pool, attrs):
    """Conv -> pool -> conv -> Flatten -> Gemm at batch 1: the pool's rows split across the
    lanes where this machine has them, the reshape and the classifier inside the chain."""
    monkeypatch.setattr(autotune, "heuristic_default", compiled_first)
    rng = np.random.default_rng(len(attrs))
    x = randn(rng, 1, 8, 64, 64)
    consts = {"wa": randn(rng, 16, 8, 3, 3, scale=0.3), "wb": randn(rng, 4, 16, 1, 1),
              "fc": randn(rng, 10, 4 * 32 * 32, scale=0.05), "fb": randn(rng, 10)}  # fmt: skip
    nodes = [
        helper.make_node("Conv", ["x", "wa"], ["a"], pads=[1, 1, 1, 1]),
        helper.make_node(pool, ["a"], ["p"], **attrs),
        helper.make_node("Conv", ["p", "wb"], ["b"]),
        helper.make_node("Flatten", ["b"], ["f"]),
        helper.make_node("Gemm", ["f", "fc", "fb"], ["y"], transB=1, alpha=0.5),
    ]
    if attrs["strides"] == [1, 1]:  # a 32x32 map into the head either way
        nodes[2] = helper.make_node("Conv", ["p", "wb"], ["b"], strides=[2, 2])
    proto = make_model(nodes, {"x": x}, ["y"], consts, opset=11)
    session = ort.InferenceSession(proto.SerializeToString())
    model = load_model(proto.SerializeToString(), batch_sizes=(1,), autotune_mode="off")
    for _ in range(3):
        x = randn(rng, 1, 8, 64, 64)
        assert rel_error(model(x), session.run(None, {"x": x})[0]) < 1e-4
    (chain,) = chains_of(model, 1)
    ops = [type(s.op).__name__ for s in chain.steps]
    assert ops == ["LayoutConvert", "Conv", pool, "Conv", "LayoutConvert", "Flatten", "Gemm"]
    if lanes.available():
        step, env = chain.steps[2], model._plan((1, 8, 64, 64))._env
        phases = step.op.lane_phases([env[step.inputs[0]]], step.buffers, lanes.lane_count())
        assert len(phases[0]) == lanes.lane_count()
