"""The tuner's in-pass comparisons (engine/autotune/inpass.py): a layer whose weights outgrow
L2 has its close per-layer runners-up timed inside whole forward passes; the faster stays, the
comparison is saved with the cache entry, and a restart loads it without timing anything."""

from __future__ import annotations

import json
import logging

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from engine import load_model
from engine.autotune import inpass
from engine.autotune.measure import l2_bytes
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


@pytest.fixture
def every_runner_up(monkeypatch):
    """Every runner-up counts as close (which are close depends on this machine's timings)."""
    monkeypatch.setattr(inpass, "CLOSE", float("inf"))


@pytest.mark.parametrize("bucket", [1, 2])  # 2: one batch slice per core on two cores
def test_close_calls_on_big_layers_are_timed_in_the_pass_and_saved(
    tmp_path, every_runner_up, bucket
):
    rng = np.random.default_rng(1)
    proto, shape = big_small_model(rng)
    shape = (bucket, *shape)
    cache = tmp_path / "autotune.json"
    model = load_model(proto.SerializeToString(), batch_sizes=(bucket,), autotune_cache=cache)
    (big, big_entry), (small, small_entry) = convs(model, bucket)
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
