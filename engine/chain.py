"""Runs of compiled steps of a CPU plan called as one compiled function.

Each step of a plan is a Python call, and each compiled kernel call releases the GIL and takes
it back. When two batch slices run as threads of one process (engine/split.py), every such
hand-off that finds the other slice in its Python code waits for a thread wake-up (tens of
microseconds on a VM): one slice of the CIFAR net took 1.2 ms alone and 1.6-2.0 ms beside the
other. Steps that can be a single compiled call on fixed buffers (``Op.compiled_call``: the
compiled convs on one thread, the compiled pool) are therefore grouped, each run of two or
more into a generated numba function that calls their kernels in order: one GIL hand-off and
one Python call per run. The buffers a plan binds never change, so the arguments are taken
once, from the plan's first call, and passed as three tables (array addresses, lengths,
scalars): numba's dispatch of the same arguments as tuples of arrays costs microseconds per
array, with the GIL held.

A plan below one image per core (engine/lanes.py) builds its runs as lane chains instead: each
step split into phases of per-lane calls (``Op.lane_phases``), every lane running its share of
a phase, with a spin barrier between phases.
"""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path

import numpy as np

from engine import jit

log = logging.getLogger("engine.jit")

#: bumped whenever a planned op's kernel changes after planning (``changed``): chains built
#: before then are rebuilt
_generation = [0]


def changed() -> None:
    _generation[0] += 1


def generation() -> int:
    return _generation[0]


def available(backend) -> bool:
    """Chains are built for CPU plans where numba is installed."""
    return backend.device == "cpu" and jit.available()


def backend_lanes(backend) -> int:
    """Lanes work on ``backend`` may split into (engine/lanes.py): 1 unless it is the CPU,
    numba is there and there are cores to split across."""
    if not available(backend):
        return 1
    from engine.lanes import lane_count

    return lane_count()


def lane_count(plan) -> int:
    """Lanes a plan's chains split into: 1 (plain chains) for a plan of one batch slice
    (engine/split.py, one thread per op)."""
    return backend_lanes(plan.backend) if plan.threads == 0 else 1


def _imports(kernels: list) -> list[str]:
    return [f"from {k.py_func.__module__} import {k.py_func.__name__} as K{i}"
            for i, k in enumerate(kernels)]  # fmt: skip


def _load(prefix: str, lines: list[str]):
    source = "\n".join([jit.MODULE_HEADER, *lines, ""])
    key = hashlib.sha256(source.encode()).hexdigest()[:12]
    return jit.load_source(f"{prefix}_{key}", source)


#: engine/spin.py by content: numba's cache of a lane chain does not see changes to it
SPIN_HASH = hashlib.sha256(Path(__file__).with_name("spin.py").read_bytes()).hexdigest()[:16]


def arg_kinds(args: tuple) -> str:
    """One letter per kernel argument: f (float32 array), i (int64 array), s (float32 scalar):
    the kinds a lane chain passes by address (every compiled kernel's arguments are these)."""
    kinds = ""
    for arg in args:
        if isinstance(arg, np.float32):
            kinds += "s"
        elif isinstance(arg, np.ndarray) and arg.ndim == 1 and arg.flags.c_contiguous:
            kinds += {np.dtype(np.float32): "f", np.dtype(np.int64): "i"}[arg.dtype]
        else:
            raise TypeError(f"a lane chain cannot pass {type(arg).__name__} arguments")
    return kinds


def lane_module(kernels: list, widths: list[int], kinds: list[str]):
    """A module with ``run(ctrl, sync, woken, lane, parts, job, A, N, S)``: on lane 0 (the
    engine's thread, ``lead``) the job's body once with ``parts`` lanes, after posting it to
    the lanes spinning now when ``parts`` is 0 (``spin.post``; returns WOKE without running it
    when that found sleeping lanes, named in ``woken``: the caller wakes their threads and
    calls again with the posted ``ctrl[PARTS]``; else DONE); on the others (``serve``,
    engine/lanes.py) the body of every job of this chain posted to it, until it has spun
    ``ctrl[SPINS]`` turns for nothing (returns DONE: it sleeps) or another chain's job is
    posted (SWITCH). In the body, phase i calls ``kernels[i]`` once on rank 0 when ``widths[i]``
    is 1, else once per share 0..widths[i]-1, shares dealt round-robin to the job's lanes (all
    on rank 0 when it runs alone). Arguments of ``kinds[i]`` (``arg_kinds``) come from the
    tables of array addresses ``A``, their lengths ``N`` and scalars ``S``, share after share,
    phase after phase (``LaneChain``): one argument per table instead of hundreds of tuples
    (numba's dispatch of the CIFAR net's chain as tuples took 22 us a call). Lanes meet at a
    barrier after each phase that more than one share runs or that follows one, and at the
    end. One function with the body written once: numba compiles every caller of a kernel
    with the kernel's code, so each extra function costs another compile."""
    lines, arrays, scalars = [], 0, 0
    for index, (width, kind) in enumerate(zip(widths, kinds)):
        if index and (width > 1 or widths[index - 1] > 1):
            lines.append("        barrier(sync, rank, parts)")
        per_array, per_scalar = len(kind) - kind.count("s"), kind.count("s")
        who = "share" if width > 1 else "0"
        exprs, seen = [], {"s": 0, "a": 0}  # scalars and arrays of this call so far
        for letter in kind:
            if letter == "s":
                exprs.append(f"S[{scalars} + {per_scalar} * {who} + {seen['s']}]")
                seen["s"] += 1
            else:
                slot = f"{arrays} + {per_array} * {who} + {seen['a']}"
                exprs.append(f"numba.carray({letter}_at(A[{slot}]), N[{slot}])")
                seen["a"] += 1
        head = f"for share in range(rank, {width}, parts):" if width > 1 else "if rank == 0:"
        lines += [f"        {head}", f"            K{index}({', '.join(exprs)})"]
        arrays, scalars = arrays + per_array * width, scalars + per_scalar * width
    source = [
        f"# spin {SPIN_HASH}",
        "from engine.spin import BUSY, DONE, GO, JOB, PARTS, SLEEP, SPIN, SPINS, STRIDE",
        "from engine.spin import SWITCH, WAKING, WOKE",
        "from engine.spin import barrier, load, post, store, swap",
        "from engine.spin import f32_at as f_at, i64_at as i_at",
        *_imports(kernels),
        "",
        "",
        "@numba.njit(nogil=True, cache=True)",
        "def run(ctrl, sync, woken, lane, parts, job, A, N, S):",
        "    at = lane * STRIDE",
        "    if lane:",
        "        swap(ctrl, at, WAKING, SPIN)  # woken by a post: spinning from now on",
        "    else:",
        "        if parts == 0:  # post it (one compiled call: Python here runs cache-cold)",
        "            parts = post(ctrl, sync, woken.size, job, woken)",
        "            if woken[0]:",
        "                return WOKE",
        "        store(ctrl, BUSY, 1)",
        "    rank = 0",
        "    idle = 0",
        "    while True:",
        "        if lane:",
        "            state = load(ctrl, at)",
        "            if state == GO:",
        "                if load(ctrl, JOB) != job:",
        "                    return SWITCH  # another chain's job",
        "                rank, parts = load(ctrl, at + 1), load(ctrl, PARTS)",
        "            elif state != SPIN:  # being given a job (CLAIMED)",
        "                continue",
        "            elif load(ctrl, BUSY):  # the engine's thread is in a job: one comes soon",
        "                idle = 0",
        "                continue",
        "            elif idle < load(ctrl, SPINS):",
        "                idle += 1",
        "                continue",
        "            elif swap(ctrl, at, SPIN, SLEEP):",
        "                return DONE",
        "            else:",
        "                continue",
        *lines,
        "        barrier(sync, rank, parts)",
        "        if not lane:",
        "            store(ctrl, BUSY, 0)",
        "            return DONE",
        "        store(ctrl, at, SPIN)",
        "        idle = 0",
    ]
    return _load(f"lanes_{len(kernels)}", source)


def argument_tables(args: list[tuple]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The addresses and lengths of the arrays in ``args`` (calls after calls) and their
    float32 scalars: what a ``lane_module`` body reads its calls' arguments from."""
    arrays = [a for call in args for a in call if isinstance(a, np.ndarray)]
    scalars = [a for call in args for a in call if isinstance(a, np.float32)]
    addresses = np.array([a.ctypes.data for a in arrays], np.int64)
    return addresses, np.array([a.size for a in arrays], np.int64), np.array(scalars, np.float32)


def compiled_body(module, words: np.ndarray, tables: tuple):
    """``module.run`` (a ``lane_module``) compiled, or loaded from the disk cache, now for
    these control words and tables: during the plan's first call, not during the next one,
    which may be a client's request."""
    numba = jit.compiler().numba
    i64, word = numba.int64, numba.typeof(words)
    module.run.compile((word, word, word, i64, i64, i64, *(numba.typeof(t) for t in tables)))
    return module.run


class Chain:
    """One run of steps on one thread: ``call()`` does what their ``op.run`` calls would.

    The body is a ``lane_module`` of one lane, run with its own control words (the slices of
    a batch run their chains at once, each alone): its arguments come as three tables, where
    numba's dispatch of the same calls as tuples of arrays took ~22 us (CIFAR net) holding the
    GIL that the other slice's thread waits for."""

    def __init__(self, steps: list, calls: list[tuple]):
        self.steps = steps
        kernels = [kernel for kernel, _ in calls]
        module = lane_module(kernels, [1] * len(calls), [arg_kinds(a) for _, a in calls])
        self.args = [args for _, args in calls]  # keeps the tables' arrays alive
        self.tables = argument_tables(self.args)
        self.words = np.zeros(8, np.int64)  # lane 0's barrier count (a cache line); no other lane
        started = time.perf_counter()
        self.function = compiled_body(module, self.words, self.tables)
        log.info("chain of %d kernels ready in %.2f s", len(calls), time.perf_counter() - started)

    def call(self) -> None:
        self.function(self.words, self.words, self.words, 0, 1, 0, *self.tables)


class LaneChain:
    """One run of steps split across the lanes (engine/lanes.py): ``call()`` does what their
    ``op.run`` calls would, on every lane at once."""

    def __init__(self, steps: list, phases: list[list[tuple]]):
        from engine.lanes import lanes

        self.steps, self.lanes = steps, lanes()
        kernels = [calls[0][0] for calls in phases]
        self.widths = [len(calls) for calls in phases]  # lanes that run each phase
        kinds = [arg_kinds(calls[0][1]) for calls in phases]
        module = lane_module(kernels, self.widths, kinds)
        # the tables the body reads its arguments from, lane after lane, phase after phase;
        # ``self.args`` keeps the arrays they point into alive
        self.args = [args for calls in phases for _, args in calls]
        self.tables = argument_tables(self.args)
        started = time.perf_counter()
        self.function = compiled_body(module, self.lanes.ctrl, self.tables)
        self.job = self.lanes.register(self)
        log.info("lane chain of %d phases ready in %.2f s", len(phases),
                 time.perf_counter() - started)  # fmt: skip

    def call(self) -> None:
        self.lanes.run(self)

    def lead(self, parts: int) -> int:
        """The body on this thread as rank 0 of ``parts`` lanes, or with 0: posted first to
        the lanes spinning now (``lane_module``: WOKE or DONE)."""
        lanes = self.lanes
        return self.function(lanes.ctrl, lanes.sync, lanes.woken, 0, parts, self.job, *self.tables)

    def serve(self, lane: int) -> bool:
        """Run posted jobs of this chain on ``lane`` until it sleeps (False) or another
        chain's job is posted (True)."""
        lanes = self.lanes
        args = (lanes.ctrl, lanes.sync, lanes.woken, lane, 0, self.job, *self.tables)
        return self.function(*args) == lanes.spin.SWITCH


def segments(plan) -> list:
    """The plan's steps with each run of two or more chainable steps as one Chain (or, split
    across lanes, one LaneChain), from the value table of the plan's last call
    (``plan._env``)."""
    env, found, run = plan._env, [], []
    lanes = lane_count(plan)

    def close() -> None:
        steps, phases = [s for s, _ in run], [calls for _, p in run for calls in p]
        if any(len(calls) > 1 for calls in phases):
            found.append(LaneChain(steps, phases))
        elif len(phases) >= 2:  # one thread: the calls in order
            found.append(Chain(steps, [calls[0] for calls in phases]))
        else:
            found.extend(steps)
        run.clear()

    for step in plan.steps:
        ins = [env[name] if name else None for name in step.inputs]
        if step.op.reshapes_input and any(step.inputs[0] in s.outputs for s, _ in run):
            run.append((step, []))  # a reshape of a buffer the chain writes: nothing to run
            continue
        phases = step.op.lane_phases(ins, step.buffers, lanes) if step.op.allocates else None
        if phases is None:
            close()
            found.append(step)
        else:
            run.append((step, phases))
    close()
    return found
