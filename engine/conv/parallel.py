"""Batch-parallel variants of the CPU algorithms: the batch split across the cores.

NumPy runs its copies and element-wise ops (the gather, the Winograd transforms' copies, the
epilogue) on one core; only the BLAS GEMM is threaded, and OpenBLAS threads lose much of their
speed on the narrow GEMMs of small convs (and far more when other processes share the cores).
Here each core takes a slice of the batch and runs the whole base algorithm on it in its own
thread, with BLAS held to one thread: every phase runs on every core. NumPy and BLAS release the
GIL, so the threads overlap. CPU only: CuPy work is already parallel on the device.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from engine import lanes
from engine.conv.base import ConvAlgorithm, gemm_weights
from engine.conv.im2col_gemm import Im2colGemm, im2col_then_gemm
from engine.conv.im2col_gemm_chunked import Chunk, band_chunk
from engine.conv.spec import ConvSpec
from engine.threads import blas_libraries, run_in_threads


class BatchParallel(ConvAlgorithm):
    """``base`` on ``spec.cores`` slices of the batch at once; subclasses set ``base``."""

    base: ClassVar[type[ConvAlgorithm]]
    devices = ("cpu",)

    @classmethod
    def applicable(cls, spec: ConvSpec) -> bool:
        threads_help = spec.cores >= 2 and bool(blas_libraries())
        return spec.n >= 2 and threads_help and cls.base.applicable(spec)

    @classmethod
    def slices(cls, spec: ConvSpec) -> list[tuple[int, int]]:
        """Near-equal [n0, n1) ranges of the batch, one per core."""
        parts = min(spec.cores, spec.n)
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


def _variant(wrapper: type[ConvAlgorithm], base: type[ConvAlgorithm], suffix: str, doc: str,
             class_suffix: str):  # fmt: skip
    """A ``wrapper`` subclass running ``base``, named ``<base><suffix>``."""
    attrs = {"base": base, "name": f"{base.name}{suffix}", "math": base.math,
             "tolerance": base.tolerance, "__doc__": f"{base.name} {doc}."}  # fmt: skip
    return type(f"{base.__name__}{class_suffix}", (wrapper,), attrs)


def parallel_variant(base: type[ConvAlgorithm]) -> type[BatchParallel]:
    """The batch-parallel algorithm built on ``base``, named ``<base>_parallel``."""
    return _variant(BatchParallel, base, "_parallel", "on one slice of the batch per core",
                    "Parallel")  # fmt: skip


class Im2colGemmBands(ConvAlgorithm):
    """im2col + GEMM for a batch smaller than the core count (batch 1: latency): each image's
    output rows split into one band per core, each band gathered and multiplied in its own
    thread with single-threaded BLAS."""

    name = "im2col_gemm_bands"
    devices = ("cpu",)

    @classmethod
    def bands(cls, spec: ConvSpec) -> list[Chunk]:
        parts = min(spec.cores, spec.out_h)
        bounds = [spec.out_h * i // parts for i in range(parts + 1)]
        return [band_chunk(spec, n, oh0, oh1) for n in range(spec.n)
                for oh0, oh1 in zip(bounds[:-1], bounds[1:])]  # fmt: skip

    @classmethod
    def applicable(cls, spec: ConvSpec) -> bool:
        threads_help = spec.cores >= 2 and bool(blas_libraries())
        return threads_help and spec.n < spec.cores and spec.out_h >= 2

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


def _one_thread(spec: ConvSpec) -> ConvSpec:
    return dataclasses.replace(spec, threads=1)


class OnThisThread(ConvAlgorithm):
    """``base``, which splits an image's rows across the cores, run on the calling thread only
    (in a lane chain, one share on lane 0): a small layer can gain less from a second core than
    the hand-off costs, and a step the tuner gives to BLAS instead would break the plan's
    compiled chain; the tuner times both. Subclasses set ``base``."""

    base: ClassVar[type[ConvAlgorithm]]
    devices = ("cpu",)

    @classmethod
    def applicable(cls, spec: ConvSpec) -> bool:
        """Where lanes (engine/lanes.py) split the base, only for 1x1 convs: the tuner now
        times both through a lane call as chain steps (engine/autotune/measure.py), and
        offered for every layer it picked none for the CIFAR-style net or ResNet-18 64x64,
        so the other layers are spared the extra candidate (its compile and timing)."""
        if spec.n >= spec.cores or not cls.base.applicable(_one_thread(spec)):
            return False
        return (spec.r, spec.s) == (1, 1) or spec.threads == 1 or not lanes.available()

    @classmethod
    def workspace_elems(cls, spec: ConvSpec) -> int:
        return cls.base.workspace_elems(_one_thread(spec))

    def __init__(self, spec, weight, bias, backend):
        super().__init__(spec, weight, bias, backend)
        self.inner = self.base(_one_thread(spec), weight, bias, backend)

    def __call__(self, x, out, workspace) -> None:
        self.inner(x, out, workspace)

    def compiled_call(self, x, out, workspace):
        return self.inner.compiled_call(x, out, workspace)


def one_thread_variant(base: type[ConvAlgorithm]) -> type[OnThisThread]:
    """``base`` on the calling thread only, named ``<base>_1t``."""
    return _variant(OnThisThread, base, "_1t", "on the calling thread only", "OneThread")
