"""Batch-parallel variants of the CPU algorithms: the batch split across the cores.

NumPy runs its copies and element-wise ops (the gather, the Winograd transforms' copies, the
epilogue) on one core; only the BLAS GEMM is threaded, and OpenBLAS threads lose much of their
speed on the narrow GEMMs of small convs (and far more when other processes share the cores).
Here each core takes a slice of the batch and runs the whole base algorithm on it in its own
thread, with BLAS held to one thread: every phase runs on every core. NumPy and BLAS release the
GIL, so the threads overlap. CPU only: CuPy work is already parallel on the device.
"""

from __future__ import annotations

import functools
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import ClassVar

from engine.conv.base import ConvAlgorithm, gemm_weights
from engine.conv.im2col_gemm import Im2colGemm, im2col_then_gemm
from engine.conv.im2col_gemm_chunked import Chunk, band_chunk
from engine.conv.spec import ConvSpec

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
    """``fn(*call)`` for every call at once, the first on this thread, BLAS single-threaded."""
    with single_threaded_blas:
        pending = [worker_pool().submit(fn, *call) for call in calls[1:]]
        fn(*calls[0])
        for future in pending:
            future.result()


class BatchParallel(ConvAlgorithm):
    """``base`` on ``cpu_cores()`` slices of the batch at once; subclasses set ``base``."""

    base: ClassVar[type[ConvAlgorithm]]
    devices = ("cpu",)

    @classmethod
    def applicable(cls, spec: ConvSpec) -> bool:
        threads_help = cpu_cores() >= 2 and bool(blas_libraries())
        return spec.n >= 2 and threads_help and cls.base.applicable(spec)

    @classmethod
    def slices(cls, spec: ConvSpec) -> list[tuple[int, int]]:
        """Near-equal [n0, n1) ranges of the batch, one per core."""
        parts = min(cpu_cores(), spec.n)
        bounds = [spec.n * i // parts for i in range(parts + 1)]
        return list(zip(bounds[:-1], bounds[1:]))

    @classmethod
    def workspace_elems(cls, spec: ConvSpec) -> int:
        slices = cls.slices(spec)
        return sum(cls.base.workspace_elems(spec.with_batch(n1 - n0)) for n0, n1 in slices)

    def __init__(self, spec, weight, bias, backend):
        super().__init__(spec, weight, bias, backend)
        self.parts, offset = [], 0
        for n0, n1 in self.slices(spec):
            sub = spec.with_batch(n1 - n0)
            elems = self.base.workspace_elems(sub)
            self.parts.append((n0, n1, offset, elems, self.base(sub, weight, bias, backend)))
            offset += elems

    def __call__(self, x, out, workspace) -> None:
        calls = [
            (algo, x[n0:n1], out[n0:n1], workspace[offset : offset + elems])
            for n0, n1, offset, elems, algo in self.parts
        ]
        run_in_threads(lambda algo, *args: algo(*args), calls)


def parallel_variant(base: type[ConvAlgorithm]) -> type[BatchParallel]:
    """The batch-parallel algorithm built on ``base``, named ``<base>_parallel``."""
    attrs = {
        "base": base,
        "name": f"{base.name}_parallel",
        "math": base.math,
        "tolerance": base.tolerance,
        "__doc__": f"{base.name} on one slice of the batch per core.",
    }
    return type(f"{base.__name__}Parallel", (BatchParallel,), attrs)


class Im2colGemmBands(ConvAlgorithm):
    """im2col + GEMM for a batch smaller than the core count (batch 1: latency): each image's
    output rows split into one band per core, each band gathered and multiplied in its own
    thread with single-threaded BLAS."""

    name = "im2col_gemm_bands"
    devices = ("cpu",)

    @classmethod
    def bands(cls, spec: ConvSpec) -> list[Chunk]:
        parts = min(cpu_cores(), spec.out_h)
        bounds = [spec.out_h * i // parts for i in range(parts + 1)]
        return [band_chunk(spec, n, oh0, oh1) for n in range(spec.n)
                for oh0, oh1 in zip(bounds[:-1], bounds[1:])]  # fmt: skip

    @classmethod
    def applicable(cls, spec: ConvSpec) -> bool:
        threads_help = cpu_cores() >= 2 and bool(blas_libraries())
        return threads_help and spec.n < cpu_cores() and spec.out_h >= 2

    @classmethod
    def workspace_elems(cls, spec: ConvSpec) -> int:
        return sum(Im2colGemm.workspace_elems(band.spec) for band in cls.bands(spec))

    def __init__(self, spec, weight, bias, backend):
        super().__init__(spec, weight, bias, backend)
        self.weights = self.shared(
            "gemm", weight, lambda: backend.asarray(gemm_weights(spec, weight))
        )
        self.parts, offset = [], 0
        for band in self.bands(spec):
            elems = Im2colGemm.workspace_elems(band.spec)
            self.parts.append((band, offset, elems))
            offset += elems

    def _band(self, band: Chunk, x, out, workspace) -> None:
        out_part = out[band.n0, band.oh0 : band.oh1].reshape(-1, self.spec.k)
        x_part = x[band.n0 : band.n1, band.ih0 : band.ih1]
        im2col_then_gemm(self.backend, band.spec, x_part, out_part, self.weights, workspace)
        self.finish(out_part)

    def __call__(self, x, out, workspace) -> None:
        calls = [(band, x, out, workspace[o : o + elems]) for band, o, elems in self.parts]
        run_in_threads(self._band, calls)
