"""The engine's CPU threads: how many cores it may use, its worker pool, and BLAS's threads.

Two ways to use the cores (``load_model(cpu_threading=...)``):

- ``"engine"`` (the default): BLAS stays on one thread for the whole forward pass, and only the
  engine's own per-core work splits (the ``*_parallel`` and ``_bands`` algorithms) use the other
  cores. In a server, OpenBLAS's idle threads spin for a while after every threaded GEMM, taking
  the cores the event loop and the decoders need; measured under HTTP load this cut the CPU time
  per request by 40% and raised throughput 1.13-1.39x (docs/PERFORMANCE.md).
- ``"blas"``: BLAS runs each GEMM on its own threads; the batch-parallel conv algorithms hold it
  to one thread while they split the batch across the engine's workers. 10-25% faster for a
  process that does nothing but run the model (benchmarks, offline batch jobs).

The numba-compiled conv algorithms (engine/jit.py) use the same pool for batch slices under both
policies: their kernels release the GIL and run through ``run_in_threads`` with BLAS held to one
thread; numba's own parallel regions are never used. Below one image per core they split an
image's rows across the lanes instead (engine/lanes.py: threads that wait in compiled code and
spin for 0.5 ms after a job, or through a pass with several lane chains, while BLAS runs on
the engine's thread only).

The autotune cache records the policy in its device fingerprint: winners timed under one are
not reused under the other.
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
from concurrent.futures import ThreadPoolExecutor

CPU_THREADING = ("blas", "engine")

CGROUP_CPU_MAX = "/sys/fs/cgroup/cpu.max"


@functools.cache
def cpu_cores() -> int:
    """Cores this process may use: its CPU affinity, capped by a cgroup v2 CPU quota (a
    container started with ``--cpus 2`` on a 64-core host sees 64 cores but gets 2)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    try:
        with open(CGROUP_CPU_MAX, encoding="ascii") as f:
            quota, period = f.read().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, -(-int(quota) // int(period))))
    except (OSError, ValueError):
        pass  # no cgroup v2 quota: the affinity stands
    return max(cores or 1, 1)


@functools.cache
def blas_libraries() -> tuple:
    """The loaded BLAS libraries' thread controls (threadpoolctl), or () when unavailable."""
    try:
        import numpy  # noqa: F401 - loads NumPy's BLAS so that threadpoolctl finds it
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return ()
    return tuple(ThreadpoolController().select(user_api="blas").lib_controllers)


class _SingleThreadedBlas:
    """BLAS calls run on the calling thread only while any caller is inside (a process-wide
    setting): the first to enter saves the thread counts, the last to leave restores them, so
    concurrent callers (two models in one process) cannot leave BLAS single-threaded."""

    def __init__(self):
        self.lock, self.inside, self.saved = threading.Lock(), 0, []

    def __enter__(self):
        with self.lock:
            if self.inside == 0:
                self.saved = [(lib, lib.get_num_threads()) for lib in blas_libraries()]
                for lib, _ in self.saved:
                    lib.set_num_threads(1)
            self.inside += 1

    def __exit__(self, *exc):
        with self.lock:
            self.inside -= 1
            if self.inside == 0:
                for lib, threads in self.saved:
                    lib.set_num_threads(threads)


single_threaded_blas = _SingleThreadedBlas()


@functools.cache
def worker_pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=max(cpu_cores() - 1, 1), thread_name_prefix="conv")


def run_in_threads(fn, calls: list[tuple]) -> None:
    """``fn(*call)`` for every call at once, the first on this thread, BLAS single-threaded.
    A single call just runs here (no pool, no change to BLAS's threads)."""
    if len(calls) == 1:
        fn(*calls[0])
        return
    with single_threaded_blas:
        pending = [worker_pool().submit(fn, *call) for call in calls[1:]]
        fn(*calls[0])
        for future in pending:
            future.result()


def blas_scope(cpu_threading: str):
    """The context a forward pass (or a timed tuning run) runs in under ``cpu_threading``."""
    if cpu_threading not in CPU_THREADING:
        raise ValueError(f"cpu_threading must be one of {CPU_THREADING}, got {cpu_threading!r}")
    return single_threaded_blas if cpu_threading == "engine" else contextlib.nullcontext()
