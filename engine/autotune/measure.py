"""Timing conv candidates on the real device, each checked against the reference algorithm."""

from __future__ import annotations

import logging
import math
import statistics
import zlib
from dataclasses import dataclass

import numpy as np

from engine.conv import ALGORITHMS, ConvSpec

log = logging.getLogger("engine.autotune")


#: a candidate whose warm-up run took this many times the fastest warm-up is not timed further
WARMUP_PRUNE_FACTOR = 3.0


@dataclass
class Timing:
    """One candidate's median time, or ``inf`` and the reason it was rejected."""

    name: str
    ms: float
    reason: str = ""


def relative_error(xp, y, reference) -> float:
    """||y - ref|| / ||ref|| computed on the device; NaN when y holds NaN or inf."""
    scale = float(xp.linalg.norm(reference))
    return float(xp.linalg.norm(y - reference)) / max(scale, 1e-30)


def measure(backend, spec: ConvSpec, weight, bias, names, budget_s: float, max_repeats: int):
    """Time every algorithm in ``names`` (the reference first) on one random input.

    Each candidate is built and run once (warm-up), and its output checked against the
    reference's. A candidate whose warm-up took over three times the fastest one's keeps that
    time and is not run again (the reference is always timed, for the speed-ups). The others
    are timed in rounds, one run of each per round, so that a burst of load from other
    processes lands on all of them rather than on one; big layers get one round. Candidates
    twice as slow as the best after two rounds stop early. Returns the timings in ``names``
    order and the built instance of the fastest valid one. A candidate that raises, or whose
    output differs from the reference by more than its precision allows, is scored ``inf``.
    """
    rng = np.random.default_rng(zlib.crc32(spec.key().encode()))
    x = backend.asarray(rng.standard_normal((spec.n, spec.h, spec.w, spec.c), dtype=np.float32))
    out = backend.empty((spec.n, spec.out_h, spec.out_w, spec.k))
    scratch = Scratch(backend)
    timings = {name: Timing(name, math.inf, "not run") for name in names}
    ready, reference, warm_s = {}, None, {}
    for name in names:
        try:
            algo = ALGORITHMS[name](spec, weight, bias, backend)
            workspace = scratch.get(type(algo).workspace_elems(spec))
            start = backend.now()
            algo(x, out, workspace)
            warm_s[name] = backend.now() - start
            error = 0.0 if reference is None else relative_error(backend.xp, out, reference)
        except Exception as failure:  # any failure (OOM, CuPy, bugs) means "not this one"
            timings[name] = rejected(backend, spec, name, failure)
            continue
        if not error <= algo.tolerance:
            timings[name].reason = f"relative error {error:.2e} > {algo.tolerance:.0e}"
            continue
        if reference is None:
            reference = out.copy()  # the reference algorithm's output, or the first that ran
        ready[name] = algo
    timed = dict(ready)
    if ready:
        fastest = min(warm_s[name] for name in ready)
        for name in list(ready)[1:]:
            if warm_s[name] > WARMUP_PRUNE_FACTOR * fastest:
                timings[name] = Timing(name, warm_s[name] * 1e3)
                del timed[name]
        max_repeats = max(1, min(max_repeats, math.ceil(budget_s / fastest)))
    samples = time_rounds(backend, timed, x, out, scratch, timings, budget_s, max_repeats)
    for name, times_s in samples.items():
        timings[name] = Timing(name, statistics.median(times_s) * 1e3)
    valid = [t for t in timings.values() if math.isfinite(t.ms)]
    winner = ready[min(valid, key=lambda t: t.ms).name] if valid else None
    return [timings[name] for name in names], winner


def rejected(backend, spec: ConvSpec, name: str, failure: BaseException) -> Timing:
    reason = "out of memory" if backend.is_out_of_memory(failure) else repr(failure)
    log.warning("autotune: %s failed on %s: %s", name, spec.key(), reason)
    return Timing(name, math.inf, reason)


def time_rounds(backend, ready, x, out, scratch, timings, budget_s, max_repeats):
    """Seconds per run of each ready candidate, measured in interleaved rounds."""
    samples: dict[str, list[float]] = {name: [] for name in ready}
    active = list(ready)
    for round_index in range(max_repeats):
        for name in list(active):
            algo = ready[name]
            workspace = scratch.get(type(algo).workspace_elems(algo.spec))
            try:
                start = backend.now()
                algo(x, out, workspace)
                samples[name].append(backend.now() - start)
            except Exception as failure:  # as in the warm-up
                timings[name] = rejected(backend, algo.spec, name, failure)
                active.remove(name)
                del samples[name]
        if round_index == 1 and active:  # clear losers: two runs are evidence enough
            fastest = min(min(samples[name]) for name in active)
            active = [name for name in active if min(samples[name]) <= 2 * fastest]
        if all(sum(samples[name]) >= budget_s for name in active):
            break
    return samples


class Scratch:
    """One workspace for all candidates of a spec (they run one at a time), grown on demand."""

    def __init__(self, backend):
        self.backend, self.buffer = backend, None

    def get(self, elems: int):
        if self.buffer is None or self.buffer.size < elems:
            self.buffer = None  # free the smaller one first
            self.buffer = self.backend.empty((max(elems, 1),))
        return self.buffer[: max(elems, 1)]
