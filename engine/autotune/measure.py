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

    Returns the timings in ``names`` order and the built instance of the fastest valid one.
    A candidate that raises, or whose output differs from the first candidate's by more than
    its precision allows, is scored ``inf``.
    """
    rng = np.random.default_rng(zlib.crc32(spec.key().encode()))
    x = backend.asarray(rng.standard_normal((spec.n, spec.h, spec.w, spec.c), dtype=np.float32))
    out = backend.empty((spec.n, spec.out_h, spec.out_w, spec.k))
    reference, timings, best = None, [], (math.inf, None)
    for name in names:
        try:
            algo = ALGORITHMS[name](spec, weight, bias, backend)
            timing = time_one(backend, algo, x, out, reference, best[0], budget_s, max_repeats)
        except Exception as error:  # any failure (OOM, CuPy, bugs) means "not this one"
            reason = "out of memory" if backend.is_out_of_memory(error) else repr(error)
            log.warning("autotune: %s failed on %s: %s", name, spec.key(), reason)
            timing, algo = Timing(name, math.inf, reason), None
        timings.append(timing)
        if reference is None and math.isfinite(timing.ms):
            reference = out.copy()  # the reference algorithm's output, or the first that ran
        if timing.ms < best[0]:
            best = (timing.ms, algo)
    return timings, best[1]


def time_one(backend, algo, x, out, reference, best_ms, budget_s, max_repeats) -> Timing:
    """Warm up once (and check the output), then time runs until the budget or the repeat limit.

    Two runs both over twice the best time so far end it early: one slow run alone may be
    another process taking the core, so it does not condemn a candidate.
    """
    cls = type(algo)
    workspace = backend.empty((max(cls.workspace_elems(algo.spec), 1),))
    algo(x, out, workspace)
    if reference is not None:
        error = relative_error(backend.xp, out, reference)
        if not error <= cls.tolerance:
            return Timing(cls.name, math.inf, f"relative error {error:.2e} > {cls.tolerance:.0e}")
    times_s: list[float] = []
    while len(times_s) < max_repeats and sum(times_s) < budget_s:
        start = backend.now()
        algo(x, out, workspace)
        times_s.append(backend.now() - start)
        if len(times_s) == 2 and min(times_s) * 1e3 > 2 * best_ms:
            break
    return Timing(cls.name, statistics.median(times_s) * 1e3)
