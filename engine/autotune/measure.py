"""Timing conv candidates on the real device, each checked against the reference algorithm."""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import statistics
import time
import zlib
from dataclasses import dataclass

import numpy as np

from engine import lanes
from engine.conv import ALGORITHMS, ConvSpec
from engine.threads import cpu_cores, run_in_threads

log = logging.getLogger("engine.autotune")


#: a candidate whose warm-up run took this many times the fastest warm-up is not timed further
WARMUP_PRUNE_FACTOR = 3.0
#: per-core L2 size assumed when sysfs does not say
DEFAULT_L2_BYTES = 1 << 20


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
    time (the reference is always timed, for the speed-ups) unless one more run after the
    others' rounds comes within twice their best; then it is timed in rounds too. The others
    are timed in rounds, one run of each per round, so that a burst of load from other
    processes lands on all of them rather than on one; big layers get one round. Candidates
    twice as slow as the best after two rounds stop early. On the CPU every timed run starts
    with the cores' L2 caches evicted (``CacheEvictor``), as inside a network. Returns the
    timings in ``names`` order and the built instance of the fastest valid one. A candidate
    that raises, or whose output differs from the reference by more than its precision
    allows, is scored ``inf``.
    """
    # on the CPU, the lane threads spin throughout, as between the passes of a busy engine
    with lanes.held() if backend.device == "cpu" else contextlib.nullcontext():
        return _measure(backend, spec, weight, bias, names, budget_s, max_repeats)


def _measure(backend, spec: ConvSpec, weight, bias, names, budget_s: float, max_repeats: int):
    trial = Trial(backend, spec)
    ready, warm_s = trial.warm_up(names, weight, bias)
    timed, pruned = dict(ready), {}
    if ready:
        fastest = min(warm_s.values())
        for name in list(ready)[1:]:
            if warm_s[name] > WARMUP_PRUNE_FACTOR * fastest:  # once more before it is dropped:
                warm_s[name] = min(warm_s[name], trial.run(ready[name]))  # one run can stall
            if warm_s[name] > WARMUP_PRUNE_FACTOR * fastest:
                trial.timings[name] = Timing(name, warm_s[name] * 1e3)
                pruned[name] = timed.pop(name)
        max_repeats = max(1, min(max_repeats, math.ceil(budget_s / fastest)))
    samples = trial.time_rounds(timed, budget_s, max_repeats)
    if samples and pruned:
        # a second chance after the others' rounds: a stall (another process, a thread pool
        # still spinning) can last through several warm-ups in a row (a ResNet-18 layer's
        # compiled candidates, 0.2 ms each, all scored 3-5 ms, and a 0.6 ms one won)
        best = min(statistics.median(times_s) for times_s in samples.values())
        again = {name: algo for name, algo in pruned.items() if trial.run(algo) <= 2 * best}
        samples.update(trial.time_rounds(again, budget_s, max_repeats))
    for name, times_s in samples.items():
        trial.timings[name] = Timing(name, statistics.median(times_s) * 1e3)
    valid = [t for t in trial.timings.values() if math.isfinite(t.ms)]
    winner = ready[min(valid, key=lambda t: t.ms).name] if valid else None
    timings = [trial.timings.get(name) or Timing(name, math.inf, "not run") for name in names]
    return timings, winner


class Trial:
    """The candidates of one spec on one random input, sharing one output and scratch buffer."""

    def __init__(self, backend, spec: ConvSpec):
        self.backend, self.spec = backend, spec
        rng = np.random.default_rng(zlib.crc32(spec.key().encode()))
        x = rng.standard_normal((spec.n, spec.h, spec.w, spec.c), dtype=np.float32)
        self.x = backend.asarray(x)
        self.out = backend.empty((spec.n, spec.out_h, spec.out_w, spec.k))
        self.scratch = Scratch(backend)
        self.timings: dict[str, Timing] = {}
        self.evict = cache_evictor() if backend.device == "cpu" else None
        # in a CPU plan compiled steps run as chains (engine/chain.py): split across the
        # lanes, or one batch slice's on its own thread
        from engine import chain

        self.chain_break_s, self.in_slice = 0.0, False
        if chain.backend_lanes(backend) >= 2 and not spec.threads:
            self.chain_break_s = 2 * lane_call_s()
        elif spec.threads == 1 and chain.available(backend):
            self.chain_break_s, self.in_slice = 2 * chain_call_s(), True

    def run(self, algo) -> float:
        """Seconds of one call of ``algo`` (device-synchronised), from cold private caches.

        In a plan with lanes, what a candidate costs there: a compiled one is run through a
        lane call as a chain's step (``run_in_lanes``), after an untimed call that moves the
        lanes onto its chain (a switch goes through Python on the lane's thread; in a plan
        the lanes stay on one chain); one that is not compiled is charged ``chain_break_s``,
        two empty lane calls: in a plan it splits the chain in two, one more lane call,
        and the compiled ones' timed lane call is one the chain does not make per step.
        Likewise in a batch slice's plan (one thread): a compiled candidate's kernel is called
        alone, without its Python wrapper, and the others are charged two empty chain calls
        (the MobileNet slices' 1x1 convs went to BLAS by 1-10% margins that the Python
        around a compiled conv made, each splitting the slice's chain)."""
        workspace = self.scratch.get(type(algo).workspace_elems(self.spec))
        call = algo.compiled_call(self.x, self.out, workspace) if self.in_slice else None
        chained = (
            call is not None
            or self.chain_break_s
            and algo.run_in_lanes(self.x, self.out, workspace, unsplit=True)
        )
        if self.evict is not None:
            self.evict()
        with self.backend.compute_scope():  # as the forward pass will run it
            start = self.backend.now()
            if call is not None:  # the kernel alone, as a chain calls it
                call[0](*call[1])
            elif chained:
                algo.run_in_lanes(self.x, self.out, workspace, unsplit=True)
            else:
                algo(self.x, self.out, workspace)
            seconds = self.backend.now() - start
        return seconds if chained or not self.chain_break_s else seconds + self.chain_break_s

    def error(self, reference) -> float:
        return relative_error(self.backend.xp, self.out, reference)

    def reject(self, name: str, failure: BaseException) -> None:
        backend = self.backend
        reason = "out of memory" if backend.is_out_of_memory(failure) else repr(failure)
        log.warning("autotune: %s failed on %s: %s", name, self.spec.key(), reason)
        self.timings[name] = Timing(name, math.inf, reason)

    def warm_up(self, names, weight, bias) -> tuple[dict, dict[str, float]]:
        """Build and run each candidate twice; the first that runs gives the reference output.
        Returns the candidates that ran correctly, and their warm-up seconds: those of the
        second run, since the first pays once-only costs (a GPU kernel's compile or cuBLAS's
        lazy loading, the first touch of the scratch buffer) that would prune a good one."""
        ready, warm_s, reference = {}, {}, None
        for name in names:
            try:
                algo = ALGORITHMS[name](self.spec, weight, bias, self.backend)
                self.run(algo)
                error = (
                    0.0
                    if reference is None
                    else relative_error(self.backend.xp, self.out, reference)
                )
                seconds = self.run(algo) if error <= algo.tolerance else math.inf
            except Exception as failure:  # any failure (OOM, CuPy, bugs) means "not this one"
                self.reject(name, failure)
                continue
            if not error <= algo.tolerance:
                reason = f"relative error {error:.2e} > {algo.tolerance:.0e}"
                self.timings[name] = Timing(name, math.inf, reason)
                continue
            if reference is None:
                reference = self.out.copy()
            ready[name], warm_s[name] = algo, seconds
        return ready, warm_s

    def time_rounds(self, ready: dict, budget_s: float, max_repeats: int) -> dict[str, list]:
        """Seconds per run of each candidate, measured in interleaved rounds."""
        samples: dict[str, list[float]] = {name: [] for name in ready}
        active = list(ready)
        for round_index in range(max_repeats):
            for name in list(active):
                try:
                    samples[name].append(self.run(ready[name]))
                except Exception as failure:  # as in the warm-up
                    self.reject(name, failure)
                    active.remove(name)
                    del samples[name]
            if round_index == 1 and active:  # clear losers: two runs are evidence enough
                fastest = min(min(samples[name]) for name in active)
                active = [name for name in active if min(samples[name]) <= 2 * fastest]
            if all(sum(samples[name]) >= budget_s for name in active):
                break
        return samples


def lane_call_s() -> float:
    """Median seconds of a lane call with nothing to do that moves the lanes from another
    chain onto its own (engine/lanes.py: a post, the lane threads' switch through Python, the
    empty body, the barrier): what one more chain in a pass costs."""
    pool, other = lanes.lanes(), _empty_chain()
    times = []
    for index in range(41):
        chain = pool.idle() if index % 2 else other
        start = time.perf_counter()
        pool.run(chain)
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def chain_call_s() -> float:
    """Median seconds of calling a one-thread chain with nothing to do (engine/chain.py):
    what a batch slice pays for one more chain in its pass."""
    chain, times = _empty_chain(split=False), []
    for _ in range(41):
        start = time.perf_counter()
        chain.call()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


@functools.cache
def _empty_chain(split: bool = True):
    from engine.chain import Chain, LaneChain

    return LaneChain([], []) if split else Chain([], [])


class Scratch:
    """One workspace for all candidates of a spec (they run one at a time), grown on demand."""

    def __init__(self, backend):
        self.backend, self.buffer = backend, None

    def get(self, elems: int):
        if self.buffer is None or self.buffer.size < elems:
            self.buffer = None  # free the smaller one first
            self.buffer = self.backend.empty((max(elems, 1),))
        return self.buffer[: max(elems, 1)]


def l2_bytes(path: str = "/sys/devices/system/cpu/cpu0/cache/index2/size") -> int:
    """The per-core L2 cache size from sysfs (Linux: "512K"), else DEFAULT_L2_BYTES."""
    try:
        with open(path, encoding="ascii") as f:
            text = f.read().strip().upper()
        scale = {"K": 1 << 10, "M": 1 << 20}.get(text[-1:], 1)
        size = int(text.rstrip("KM")) * scale
    except (OSError, ValueError):
        return DEFAULT_L2_BYTES
    return size if size > 0 else DEFAULT_L2_BYTES


class CacheEvictor:
    """Writes twice the L2 size of fresh data on every core before a timed CPU run.

    Timed back to back, a candidate finds its weights and scratch in L2 from its own previous
    run; inside a network the other layers have replaced them. Without this, algorithms with
    big scratch or transformed weights (Winograd) won per-layer timings at batch 1 and then
    lost the whole-network run (measured on a 2-core EPYC: 0.87-0.93x the untuned net).
    """

    def __init__(self):
        self.parts = [np.zeros(2 * l2_bytes() // 4, np.float32) for _ in range(cpu_cores())]

    def __call__(self) -> None:
        run_in_threads(_touch, [(part,) for part in self.parts])


@functools.cache
def cache_evictor() -> CacheEvictor:
    """One evictor per process: its buffers are made once, not per tuned spec."""
    return CacheEvictor()


def _touch(buffer: np.ndarray) -> None:
    np.add(buffer, 1.0, out=buffer)
