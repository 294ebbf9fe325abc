"""The tuner's second look: close calls on big-weight layers settled inside forward passes.

Per-layer timing (engine/autotune/measure.py) evicts the private caches before each run, but a
layer's weights stay in the shared L3 cache between its timed runs. In a forward pass the other
layers' weights and activations go through L3 in between, so a layer whose weights outgrow L2
pays to stream them in, and an algorithm that reads fewer weight bytes can win the pass while
losing the per-layer timing: ResNet-18's 512-channel 3x3 convs at batch 1 (weights 9.4 MB;
Winograd F(2x2) reads 16.8 MB of transformed ones) won per-layer with Winograd (1.32 vs 1.68
ms) and lost the pass by 2 ms of 20 with it (measured on a 2-core Emerald Rapids VM).

So on a CPU, after a model's plans are built, for each layer shape tuned in this process whose
winner reads more weight bytes than L2 holds, the runners-up within ``CLOSE`` of it that read
fewer (``MAX_TRIES``) are timed in place: forward passes step by step in alternating blocks,
the steps of that shape timed. The faster stays, and the comparison is written into the cache
entry (``in_pass``), so a restart loads the result and times nothing.
"""

from __future__ import annotations

import dataclasses
import logging
import statistics
import time
from collections import defaultdict

import numpy as np

from engine.autotune.measure import l2_bytes
from engine.conv import ALGORITHMS

log = logging.getLogger("engine.autotune")

CLOSE = 1.5  # runners-up within this factor of the per-layer winner are tried in the pass
MAX_TRIES = 2  # runners-up tried per layer shape
PAIRS = 6  # alternating (winner, runner-up) blocks per comparison
BLOCK_S = 0.04  # each block repeats the pass for at least this long
MIN_GAIN = 0.98  # a runner-up replaces the winner when its median time is below this ratio
BUDGET_S = 6.0  # per model load: comparisons stop when it is spent (the most weight bytes first)


def refine(model, budget_s: float | None = None) -> None:
    """Settle the model's close per-layer calls on big-weight layers in forward passes (see
    the module docstring); smaller buckets first, the layers that read the most weight bytes
    first."""
    tuner = model.tuner
    if tuner.mode == "off" or model.backend.device != "cpu":
        return
    budget_s = BUDGET_S if budget_s is None else budget_s
    deadline = time.perf_counter() + budget_s
    rng = np.random.default_rng(0)
    for bucket in model.batch_sizes:
        shape = (bucket, *model.input_shape)
        plan = model.plans[shape]
        groups = _groups(model, plan)
        if groups:
            x = rng.standard_normal(shape).astype(np.float32)
            model.backend.copy_to(plan.inputs[model.input_name], x)
        for key, ops in sorted(groups.items(), key=lambda g: -_weight_traffic(tuner, *g)):
            # (every op's workspace holds them: Choice.spare_elems)
            for name in tries(tuner.entries[key], ops[0].spec, model.backend.device):
                if time.perf_counter() > deadline:
                    log.info("autotune: in-pass comparisons stopped at their %.0f s budget",
                             budget_s)  # fmt: skip
                    return
                _compare(model, plan, key, ops, name)
            tuner.entries[key].setdefault("in_pass", [])


def _groups(model, plan) -> dict[str, list]:
    """This plan's conv ops by cache key, for the keys tuned in this process with something
    to try and not yet compared; each key's ops across every plan of the model (a key is one
    choice wherever it occurs)."""
    tuner, device = model.tuner, model.backend.device
    keys = set()
    for step in plan.conv_steps():
        key = tuner.key(step.op.spec)
        fresh = key in tuner.tuned_keys and "in_pass" not in tuner.entries[key]
        if fresh and tries(tuner.entries[key], step.op.spec, device):
            keys.add(key)
    groups = defaultdict(list)
    for other in model.plans.values():
        for step in other.conv_steps():
            key = tuner.key(step.op.spec)
            if key in keys:
                groups[key].append(step.op)
    return groups


def _weight_traffic(tuner, key: str, ops: list) -> int:
    """Weight bytes the winner reads for these ops in one pass."""
    return ALGORITHMS[tuner.entries[key]["winner"]].weight_bytes(ops[0].spec) * len(ops)


def tries(entry: dict, spec, device: str) -> list[str]:
    """The runners-up of a freshly tuned ``entry`` that ``refine`` will time in the pass: on a
    CPU, where the winner reads more weight bytes than L2 holds, the first MAX_TRIES within
    CLOSE of it that read fewer (the effect the per-layer timing misses favours only those).
    None in a batch slice's plan (``spec.threads == 1``): run step by step, its slices would
    take turns, each on one core, where the pass runs them at once. (The planner sizes the
    layer's workspace for these too: ``Choice.spare_elems``.)"""
    winner = ALGORITHMS.get(entry["winner"])
    if device != "cpu" or spec.threads or winner is None:
        return []
    most = winner.weight_bytes(spec)
    if most <= l2_bytes():
        return []
    names = [r["name"] for r in entry["runners_up"] if r["ms"] <= CLOSE * entry["ms"]]
    fewer = [n for n in names if n in ALGORITHMS and ALGORITHMS[n].weight_bytes(spec) < most]
    return fewer[:MAX_TRIES]


def _compare(model, plan, key: str, ops: list, name: str) -> None:
    """Time ``ops`` inside whole passes with the current choice and with ``name``, in
    alternating blocks; keep ``name`` when it is faster by MIN_GAIN; record both in the cache
    entry (milliseconds of the layers with this key in one pass of ``plan``)."""
    tuner = model.tuner
    entry = tuner.entries[key]
    current = [op.choice for op in ops]  # (op.algorithm is its choice's algorithm)
    built = [ALGORITHMS[name](op.spec, op.choice.weight, op.choice.bias, model.backend)
             for op in ops]  # fmt: skip
    samples = {entry["winner"]: [], name: []}
    try:
        for pair in range(PAIRS):
            order = (False, True) if pair % 2 == 0 else (True, False)
            for trying in order:
                for op, choice, other in zip(ops, current, built):
                    op.algorithm = other if trying else choice.algorithm
                samples[name if trying else entry["winner"]].append(_block(plan, ops))
    except Exception as failure:  # the per-layer winner stays; the model must still load
        log.warning("autotune: %s failed in the pass on %s: %r", name, key, failure)
        for op, choice in zip(ops, current):
            op.algorithm = choice.algorithm
        return
    old, new = statistics.median(samples[entry["winner"]]), statistics.median(samples[name])
    record = {"name": name, "ms": round(new * 1e3, 4), "winner_ms": round(old * 1e3, 4)}
    better = decide(samples[entry["winner"]], samples[name])
    log.info("autotune: %s in the pass: %s %.3f ms vs %s %.3f ms%s", key, entry["winner"],
             old * 1e3, name, new * 1e3, " (switched)" if better else "")  # fmt: skip
    for op, choice, other in zip(ops, current, built):
        if better:
            runners = [entry["winner"], *(r for r in choice.runners_up if r != name)]
            op.choice = dataclasses.replace(choice, algorithm=other, runners_up=runners)
        op.algorithm = op.choice.algorithm
    if better:
        record["replaced"] = entry["winner"]
        runners = [r for r in entry["runners_up"] if r["name"] != name]
        ms = next(r["ms"] for r in entry["runners_up"] if r["name"] == name)
        entry["runners_up"] = [{"name": entry["winner"], "ms": entry["ms"]}, *runners]
        entry["winner"], entry["ms"] = name, ms
    entry.setdefault("in_pass", []).append(record)
    tuner.dirty = True


def decide(winner_s: list[float], runner_s: list[float]) -> bool:
    """Whether the runner-up beat the winner in the passes: its median below MIN_GAIN of the
    winner's, and faster in most of the alternating pairs (one noisy block cannot decide)."""
    faster = sum(r < w for w, r in zip(winner_s, runner_s))
    ratio = statistics.median(runner_s) / statistics.median(winner_s)
    return ratio < MIN_GAIN and faster * 3 >= 2 * len(runner_s)


def _block(plan, ops: list) -> float:
    """Seconds that ``ops`` take in one forward pass of ``plan`` (the median over passes for at
    least BLOCK_S, after an untimed one): the layers in their place, after the layers before
    them, without the other layers' time and noise. The passes run step by step
    (``run_step``): chaining compiled steps would compile a new chain for every algorithm
    tried."""
    timed, spent = {id(op) for op in ops}, [0.0]

    def run_step(step, ins):
        if id(step.op) not in timed:
            return step.op.run(ins, step.buffers)
        start = time.perf_counter()
        outs = step.op.run(ins, step.buffers)
        spent[0] += time.perf_counter() - start
        return outs

    passes = []
    with plan.backend.compute_scope():
        plan.execute(run_step)
        start = time.perf_counter()
        while not passes or time.perf_counter() - start < BLOCK_S:
            spent[0] = 0.0
            plan.execute(run_step)
            passes.append(spent[0])
    return statistics.median(passes)
