"""Runs of compiled steps of a CPU plan called as one compiled function.

Each step of a plan is a Python call, and each compiled kernel call releases the GIL and takes
it back. When two batch slices run as threads of one process (engine/split.py), every such
hand-off that finds the other slice in its Python code waits for a thread wake-up (tens of
microseconds on a VM): one slice of the CIFAR net took 1.2 ms alone and 1.6-2.0 ms beside the
other. Steps that can be a single compiled call on fixed buffers (``Op.compiled_call``: the
compiled convs on one thread, the compiled pool) are therefore grouped, each run of two or
more into a generated numba function that calls their kernels in order: one GIL hand-off and
one Python call per run. The buffers a plan binds never change, so the arguments are taken
once, from the plan's first call.
"""

from __future__ import annotations

import hashlib
import logging
import time

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


def chain_function(kernels: list):
    """A compiled ``chain(a0, a1, ...)`` calling ``kernels[i](*ai)`` in order."""
    imports, calls = [], []
    for index, kernel in enumerate(kernels):
        module, name = kernel.py_func.__module__, kernel.py_func.__name__
        imports.append(f"from {module} import {name} as K{index}")
        calls.append(f"    K{index}(*a{index})")
    params = ", ".join(f"a{i}" for i in range(len(kernels)))
    source = "\n".join([jit.MODULE_HEADER, *imports, "", "",
                        "@numba.njit(nogil=True, cache=True)", f"def chain({params}):",
                        *calls, ""])  # fmt: skip
    key = hashlib.sha256(source.encode()).hexdigest()[:12]
    return jit.load_source(f"chain_{len(kernels)}_{key}", source).chain


class Chain:
    """One run of steps: ``call()`` does what their ``op.run`` calls would."""

    def __init__(self, steps: list, calls: list[tuple]):
        self.steps = steps
        self.function = chain_function([kernel for kernel, _ in calls])
        self.args = tuple(args for _, args in calls)
        # compiled (or loaded from the disk cache) now, during the plan's first call, not
        # during the next one, which may be a client's request
        numba, started = jit.compiler().numba, time.perf_counter()
        self.function.compile(tuple(numba.typeof(args) for args in self.args))
        log.info("chain of %d kernels ready in %.2f s", len(calls), time.perf_counter() - started)

    def call(self) -> None:
        self.function(*self.args)


def segments(plan) -> list:
    """The plan's steps with each run of two or more chainable steps as one Chain, from the
    value table of the plan's last call (``plan._env``)."""
    env, found, run = plan._env, [], []

    def close() -> None:
        if len(run) >= 2:
            found.append(Chain([s for s, _ in run], [c for _, c in run]))
        else:
            found.extend(s for s, _ in run)
        run.clear()

    for step in plan.steps:
        ins = [env[name] if name else None for name in step.inputs]
        call = step.op.compiled_call(ins, step.buffers) if step.op.allocates else None
        if call is None:
            close()
            found.append(step)
        else:
            run.append((step, call))
    close()
    return found
