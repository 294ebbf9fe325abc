"""Runs of compiled steps called as one compiled function (engine/chain.py): which steps are
chained, numerics against onnxruntime call after call, and a kernel swapped after chaining."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

import engine.autotune as autotune
from engine import jit, load_model
from engine.bench.nets import cifar_net, mobilenet
from engine.chain import Chain, LaneChain
from tests.engine.conv_cases import compiled_first
from tests.engine.faults import break_conv, conv_names
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
    model_bytes, session = net
    model = load_model(model_bytes, batch_sizes=(1, 4), autotune_mode="off")
    assert segments_of(model, 1) is None  # built by the first call, from its buffers
    rng = np.random.default_rng(0)
    for n in (1, 3, 4, 1, 4):  # fresh inputs each call: a chain must never keep stale data
        x = rng.standard_normal((n, 3, 32, 32)).astype(np.float32)
        assert rel_error(model(x), session.run(None, {"input": x})[0]) < 1e-4
    for n in (1, 4):
        chains = [s for s in segments_of(model, n) if isinstance(s, Chain | LaneChain)]
        assert len(chains) == 1
        ops = [type(step.op).__name__ for step in chains[0].steps]
        assert ops.count("Conv") == 5 and ops.count("MaxPool") == 2
        assert ops.count("GlobalPool") == 1


def test_a_kernel_swapped_after_chaining_is_used(net):
    """Swapping a conv's algorithm (here: a deliberately wrong one) rebuilds the chains."""
    model_bytes, session = net
    model = load_model(model_bytes, batch_sizes=(2,), autotune_mode="off")
    x = np.random.default_rng(1).standard_normal((2, 3, 32, 32)).astype(np.float32)
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
        ops = [(type(step.op).__name__, step.op.ctx.node.op) for c in chains for step in c.steps]
        assert ("Binary", "Add") in ops and ("Conv", "Conv") in ops
        assert len(chains) == 1  # stem to head: every step a compiled call
