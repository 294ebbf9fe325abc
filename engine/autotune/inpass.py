"""The tuner's second look: close calls on big-weight layers settled by whole forward passes.

Per-layer timing (engine/autotune/measure.py) evicts the private caches before each run, but a
layer's weights stay in the shared L3 cache between its timed runs. In a forward pass the other
layers' weights and activations go through L3 in between, so a layer whose weights outgrow L2
pays to stream them in, and the algorithm that reads fewer bytes can win the pass while losing
the per-layer timing: ResNet-18's 512-channel 3x3 convs at batch 1 (weights 9.4 MB; Winograd
F(2x2) reads 16.8 MB of transformed ones) won per-layer with Winograd (1.32 vs 1.68 ms) and lost
the pass by 2 ms of 20 with it (measured on a 2-core Emerald Rapids VM).

So on a CPU, after a model's plans are built, for each layer shape tuned in this process whose
weights exceed L2 and whose per-layer runners-up came within ``CLOSE`` of the winner, forward
passes run with the winner and with each such runner-up (``MAX_TRIES``) in alternating blocks,
the steps of that shape timed in place, and the faster stays. The comparison is written into
the cache entry (``in_pass``), so a restart loads the result and times nothing. Measured on
that VM: ResNet-18 224x224 batch 1 0.85-0.88x onnxruntime -> 0.99x (both 512-channel shapes
went to implicit GEMM), 64x64 0.84x -> 0.86x; a load spent 4-6 s more tuning.
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
MIN_GAIN = 0.98  # a runner-up replaces the winner when its median pass time is below this ratio
BUDGET_S = 6.0  # per model load: comparisons stop when it is spent (the biggest layers go first)


def refine(model, budget_s: float | None = None) -> None:
    """Settle the model's close per-layer calls on big-weight layers by whole passes (see the
    module docstring); smaller buckets first, the layers with the most pass time first."""
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
        for key, ops in sorted(groups.items(), key=lambda g: -_share(tuner, *g)):
            for name in _tries(model, key, ops):
                if time.perf_counter() > deadline:
                    log.info("autotune: in-pass comparisons stopped at their %.0f s budget",
                             budget_s)  # fmt: skip
                    return
                _compare(model, plan, key, ops, name)
            tuner.entries[key].setdefault("in_pass", [])


def _groups(model, plan) -> dict[str, list]:
    """This plan's conv ops by cache key, for the keys tuned in this process and not yet
    compared, whose weights outgrow L2; each key's ops across every plan of the model (a key
    is one choice wherever it occurs)."""
    tuner, l2 = model.tuner, l2_bytes()
    keys = {
        tuner.key(step.op.spec) for step in plan.conv_steps() if _weight_bytes(step.op.spec) > l2
    }
    keys = {k for k in keys if k in tuner.tuned_keys and "in_pass" not in tuner.entries[k]}
    groups = defaultdict(list)
    for other in model.plans.values():
        for step in other.conv_steps():
            key = tuner.key(step.op.spec)
            if key in keys:
                groups[key].append(step.op)
    return groups


def _weight_bytes(spec) -> int:
    return 4 * spec.k * (spec.c // spec.groups) * spec.r * spec.s


def _share(tuner, key: str, ops: list) -> float:
    return (tuner.entries[key].get("ms") or 0.0) * len(ops)


def tries(entry: dict, spec, device: str) -> list[str]:
    """The runners-up of a freshly tuned ``entry`` that ``refine`` will time in the pass: on a
    CPU, for weights over L2, the first MAX_TRIES within CLOSE of the winner. (The planner
    sizes the layer's workspace for them too: ``Choice.spare_elems``.)"""
    if device != "cpu" or _weight_bytes(spec) <= l2_bytes():
        return []
    close = [r["name"] for r in entry["runners_up"] if r["ms"] <= CLOSE * entry["ms"]]
    return [name for name in close if name in ALGORITHMS][:MAX_TRIES]


def _tries(model, key: str, ops: list) -> list[str]:
    """``tries`` that every op's planned workspace holds."""
    names = tries(model.tuner.entries[key], ops[0].spec, model.backend.device)
    return [name for name in names
            if all(op.workspace.nbytes // 4 >= op.full_elems
                   + ALGORITHMS[name].workspace_elems(op.spec) for op in ops)]  # fmt: skip


def _compare(model, plan, key: str, ops: list, name: str) -> None:
    """Time ``ops`` inside whole passes with the current choice and with ``name``, in
    alternating blocks; keep ``name`` when it is faster by MIN_GAIN; record both in the cache
    entry (milliseconds of the layers with this key in one pass of ``plan``)."""
    tuner = model.tuner
    entry = tuner.entries[key]
    current = [(op.choice, op.algorithm) for op in ops]
    built = [ALGORITHMS[name](op.spec, op.choice.weight, op.choice.bias, model.backend)
             for op in ops]  # fmt: skip
    samples = {entry["winner"]: [], name: []}
    try:
        for pair in range(PAIRS):
            order = (False, True) if pair % 2 == 0 else (True, False)
            for trying in order:
                for op, (_, algorithm), other in zip(ops, current, built):
                    op.algorithm = other if trying else algorithm
                samples[name if trying else entry["winner"]].append(_block(plan, ops))
    except Exception as failure:  # the per-layer winner stays; the model must still load
        log.warning("autotune: %s failed in the pass on %s: %r", name, key, failure)
        for op, (_, algorithm) in zip(ops, current):
            op.algorithm = algorithm
        return
    old, new = statistics.median(samples[entry["winner"]]), statistics.median(samples[name])
    record = {"name": name, "ms": round(new * 1e3, 4), "winner_ms": round(old * 1e3, 4)}
    better = decide(samples[entry["winner"]], samples[name])
    log.info("autotune: %s in the pass: %s %.3f ms vs %s %.3f ms%s", key, entry["winner"],
             old * 1e3, name, new * 1e3, " (switched)" if better else "")  # fmt: skip
    for op, (choice, algorithm), other in zip(ops, current, built):
        if better:
            runners = [entry["winner"], *(r for r in choice.runners_up if r != name)]
            op.choice = dataclasses.replace(choice, algorithm=other, runners_up=runners)
            op.algorithm = other
        else:
            op.algorithm = algorithm
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
