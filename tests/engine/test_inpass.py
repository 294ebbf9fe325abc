"""The tuner's in-pass comparisons (engine/autotune/inpass.py): a layer whose weights outgrow
L2 has its close per-layer runners-up timed inside whole forward passes; the faster stays, the
comparison is saved with the cache entry, and a restart loads it without timing anything."""

from __future__ import annotations

import dataclasses
import json
import logging

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import engine.autotune as autotune
from engine import jit, load_model
from engine.autotune import inpass
from engine.autotune.measure import l2_bytes
from engine.conv import ALGORITHMS, ConvSpec
from tests.engine.onnx_builders import randn
from tests.engine.reference import rel_error

SMALL = 8  # the second conv's output channels: weights far below any L2


def big_small_model(rng):
    """x -> Conv 3x3 pad 1, C -> C (weights just over this machine's L2) -> Relu -> Conv 1x1,
    C -> 8 (a layer the comparisons must leave alone); a free batch dimension. Returns the model
    and the input's (C, H, W)."""
    c = 32
    while 4 * c * c * 9 <= l2_bytes():
        c += 32
    inits = [numpy_helper.from_array(randn(rng, c, c, 3, 3, scale=0.05), "w"),
             numpy_helper.from_array(randn(rng, c), "b"),
             numpy_helper.from_array(randn(rng, SMALL, c, 1, 1, scale=0.1), "w2")]  # fmt: skip
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["a"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a"], ["r"]),
             helper.make_node("Conv", ["r", "w2"], ["y"])]  # fmt: skip
    graph = helper.make_graph(
        nodes, "big_small",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", c, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", SMALL, 6, 6])], inits,
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)]), (c, 6, 6)


def convs(model, bucket=1):
    """(op, cache entry) of each conv of a bucket's plan: the big one first."""
    plan = model.plans[(bucket, *model.input_shape)]
    tuner = model.tuner
    return [(s.op, tuner.entries.get(tuner.key(s.op.spec))) for s in plan.conv_steps()]


def matches_onnxruntime(model, proto, shape, rng, calls=3) -> None:
    shape = shape if len(shape) == 4 else (1, *shape)
    session = ort.InferenceSession(proto.SerializeToString())
    for _ in range(calls):  # the later calls run the compiled chains
        x = randn(rng, *shape)
        assert rel_error(model(x), session.run(None, {"x": x})[0]) < 1e-4


HEAVY = "winograd_f2x2_compiled"  # reads 16/9 of the raw weight bytes


@pytest.fixture
def every_runner_up(monkeypatch):
    """The big layer's per-layer winner is Winograd (it reads the most weight bytes) and every
    runner-up counts as close: which algorithm wins a layer, and by how much, depends on the
    machine, not on what these tests check. The timings stay the measured ones, Winograd's
    moved to the front."""
    if not jit.available():
        pytest.skip("numba missing: no compiled Winograd")
    measure = autotune.measure

    def heavy_first(backend, spec, weight, bias, names, *args):
        timings, winner = measure(backend, spec, weight, bias, names, *args)
        heavy = next((t for t in timings if t.name == HEAVY), None)
        if heavy is None or not np.isfinite(heavy.ms) or spec.r != 3:
            return timings, winner
        fastest = min(t.ms for t in timings)
        timings = [dataclasses.replace(t, ms=fastest * 0.9) if t is heavy else t for t in timings]
        return timings, ALGORITHMS[HEAVY](spec, weight, bias, backend)

    monkeypatch.setattr(autotune, "measure", heavy_first)
    monkeypatch.setattr(inpass, "CLOSE", float("inf"))


def test_only_runners_up_that_read_fewer_weight_bytes_are_tried():
    spec = ConvSpec(n=1, c=512, h=7, w=7, k=512, r=3, s=3, pads=(1, 1, 1, 1))
    entry = {"winner": HEAVY, "ms": 1.0,
             "runners_up": [{"name": "winograd_f4x4_compiled", "ms": 1.01},
                            {"name": "implicit_gemm", "ms": 1.3},
                            {"name": "im2col_gemm", "ms": 1.4},
                            {"name": "im2col_gemm_bands", "ms": 9.0}]}  # fmt: skip
    # F(4x4) reads 36/9 of the weights, more than F(2x2)'s 16/9; bands is not close
    assert inpass.tries(entry, spec, "cpu") == ["implicit_gemm", "im2col_gemm"]
    assert inpass.tries(entry, spec, "cuda") == []
    assert inpass.tries(entry, dataclasses.replace(spec, threads=1), "cpu") == []  # a slice
    lighter = dict(entry, winner="implicit_gemm", runners_up=entry["runners_up"][:1])
    assert inpass.tries(lighter, spec, "cpu") == []  # nothing reads fewer than the raw weights
    small = dataclasses.replace(spec, c=16, k=16)
    assert inpass.tries(entry, small, "cpu") == []  # fits in L2: the per-layer timing stands


def test_close_calls_on_big_layers_are_timed_in_the_pass_and_saved(tmp_path, every_runner_up):
    rng = np.random.default_rng(1)
    proto, shape = big_small_model(rng)
    cache = tmp_path / "autotune.json"
    model = load_model(proto.SerializeToString(), batch_sizes=(1,), autotune_cache=cache)
    (big, big_entry), (small, small_entry) = convs(model)
    records = big_entry["in_pass"]
    # the planner held workspace for each runner-up it would try: none was skipped
    assert len(records) == min(inpass.MAX_TRIES, len(big_entry["runners_up"])) >= 1
    tried = [r["name"] for r in records]
    per_layer = [big_entry["winner"], *(r["name"] for r in big_entry["runners_up"])]
    assert len(set(tried)) == len(tried) and set(tried) <= set(per_layer)
    for record in records:
        assert record["ms"] > 0 and record["winner_ms"] > 0
    assert big.algorithm.name == big_entry["winner"]  # the plan runs what the cache says
    assert "in_pass" not in small_entry  # its weights fit in L2: the per-layer timing stands
    matches_onnxruntime(model, proto, shape, rng)
    saved = json.loads(cache.read_text())["entries"]
    assert saved[model.tuner.key(big.spec)] == big_entry


def test_batch_slices_keep_the_per_layer_choice(every_runner_up):
    """A batch slice's plan (one slice per core) would run its slices one after the other
    step by step, each on one core: not the pass the choice is for."""
    rng = np.random.default_rng(6)
    proto, shape = big_small_model(rng)
    model = load_model(proto.SerializeToString(), batch_sizes=(2,), autotune_cache=None)
    for op, entry in convs(model, 2):
        if op.spec.threads == 1:  # split (two or more cores)
            assert "in_pass" not in entry and op.algorithm.name == entry["winner"]
    matches_onnxruntime(model, proto, (2, *shape), rng)


def test_a_restart_loads_the_comparison_and_times_nothing(tmp_path, every_runner_up, monkeypatch):
    rng = np.random.default_rng(2)
    proto, shape = big_small_model(rng)
    cache = tmp_path / "autotune.json"
    first = load_model(proto.SerializeToString(), batch_sizes=(1,), autotune_cache=cache)
    chosen = [op.algorithm.name for op, _ in convs(first)]

    def not_again(*args):
        raise AssertionError("compared again after a restart")

    monkeypatch.setattr(inpass, "_compare", not_again)
    second = load_model(proto.SerializeToString(), batch_sizes=(1,), autotune_cache=cache)
    assert second.tuner.stats.misses == 0
    assert [op.algorithm.name for op, _ in convs(second)] == chosen
    assert {op.choice.source for op, _ in convs(second)} == {"cache"}
    matches_onnxruntime(second, proto, shape, rng)


def test_a_runner_up_that_wins_the_pass_becomes_the_winner(tmp_path, every_runner_up, monkeypatch):
    """(``decide`` made to say yes: which one wins on this machine is not the test's business.)"""
    monkeypatch.setattr(inpass, "MAX_TRIES", 1)
    monkeypatch.setattr(inpass, "decide", lambda winner_s, runner_s: True)
    rng = np.random.default_rng(3)
    proto, shape = big_small_model(rng)
    cache = tmp_path / "autotune.json"
    model = load_model(proto.SerializeToString(), batch_sizes=(1,), autotune_cache=cache)
    (big, entry), _ = convs(model)
    (record,) = entry["in_pass"]
    assert record["name"] == entry["winner"] == big.algorithm.name
    assert entry["runners_up"][0]["name"] == record["replaced"] != entry["winner"]
    assert big.choice.runners_up[0] == record["replaced"]  # the fallback order follows
    matches_onnxruntime(model, proto, shape, rng)
    monkeypatch.undo()
    again = load_model(proto.SerializeToString(), batch_sizes=(1,), autotune_cache=cache)
    assert convs(again)[0][0].algorithm.name == record["name"]


def test_a_runner_up_that_fails_in_the_pass_leaves_the_winner(
    tmp_path, every_runner_up, monkeypatch, caplog
):
    def fails(plan, ops):
        raise RuntimeError("broken in the pass")

    monkeypatch.setattr(inpass, "_block", fails)
    rng = np.random.default_rng(4)
    proto, shape = big_small_model(rng)
    with caplog.at_level(logging.WARNING, logger="engine.autotune"):
        model = load_model(proto.SerializeToString(), batch_sizes=(1,), autotune_cache=None)
    (big, entry), _ = convs(model)
    assert big.algorithm.name == entry["winner"] and entry["in_pass"] == []
    assert "broken in the pass" in caplog.text
    matches_onnxruntime(model, proto, shape, rng)


def test_no_budget_no_comparisons(tmp_path, every_runner_up, monkeypatch):
    monkeypatch.setattr(inpass, "BUDGET_S", 0.0)
    rng = np.random.default_rng(5)
    proto, _ = big_small_model(rng)
    model = load_model(proto.SerializeToString(), batch_sizes=(1,), autotune_cache=None)
    (_, entry), _ = convs(model)
    assert "in_pass" not in entry  # left for a later tuning (force mode), not marked as done


@pytest.mark.parametrize(
    "winner, runner, expected",
    [
        ([1.0] * 6, [0.9] * 6, True),  # faster in every pair
        ([1.0] * 6, [0.99] * 6, False),  # within MIN_GAIN: noise, the per-layer winner stays
        ([1.0] * 6, [0.5, 0.5, 1.1, 1.1, 1.1, 0.9], False),  # two lucky blocks are not enough
        ([1.0] * 6, [0.9, 0.9, 0.9, 0.9, 1.2, 1.2], True),  # four of six, median well below
        ([1.0] * 6, [1.1] * 6, False),
    ],
)
def test_decide(winner, runner, expected):
    assert inpass.decide(winner, runner) is expected
