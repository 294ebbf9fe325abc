"""im2col + GEMM in chunks of output rows whose column matrix fits a workspace limit.

The whole-layer column matrix of a big layer is many times the cache; gathering and multiplying
one cache-sized chunk at a time keeps the columns hot between the gather and the GEMM, and bounds
the workspace (the way cuDNN bounds its workspace on a GPU).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import ClassVar

from engine.conv.base import ConvAlgorithm, gemm_weights
from engine.conv.im2col_gemm import Im2colGemm, cols_elems, im2col_then_gemm
from engine.conv.spec import ConvSpec


@dataclasses.dataclass(frozen=True)
class Chunk:
    """Images [n0, n1), output rows [oh0, oh1), the input rows [ih0, ih1) they read, and the
    sub-convolution that computes them (its own batch, height and pads)."""

    n0: int
    n1: int
    oh0: int
    oh1: int
    ih0: int
    ih1: int
    spec: ConvSpec


def band_chunk(spec: ConvSpec, n: int, oh0: int, oh1: int) -> Chunk:
    """Output rows [oh0, oh1) of image n as a convolution of the input rows they touch."""
    first = oh0 * spec.strides[0] - spec.pads[0]  # input row of the band's first tap (may be < 0)
    last = (oh1 - 1) * spec.strides[0] - spec.pads[0] + spec.dilations[0] * (spec.r - 1)
    ih0, ih1 = max(first, 0), min(last + 1, spec.h)
    ih1 = max(ih1, ih0)
    pads = (ih0 - first, spec.pads[1], last + 1 - ih1, spec.pads[3])
    sub = dataclasses.replace(spec, n=1, h=ih1 - ih0, pads=pads)
    return Chunk(n, n + 1, oh0, oh1, ih0, ih1, sub)


def plan_chunks(spec: ConvSpec, limit_elems: int) -> Iterator[Chunk]:
    """Whole images per chunk when one image's columns fit ``limit_elems``, else row bands."""
    row_elems = spec.out_w * spec.r * spec.s * spec.c
    image_elems = spec.out_h * row_elems
    if image_elems <= limit_elems:
        step = max(1, limit_elems // image_elems)
        for n0 in range(0, spec.n, step):
            n1 = min(spec.n, n0 + step)
            yield Chunk(n0, n1, 0, spec.out_h, 0, spec.h, dataclasses.replace(spec, n=n1 - n0))
        return
    band = max(1, limit_elems // row_elems)
    for n in range(spec.n):
        for oh0 in range(0, spec.out_h, band):
            yield band_chunk(spec, n, oh0, min(spec.out_h, oh0 + band))


class Im2colGemmChunked(ConvAlgorithm):
    """im2col + GEMM, ``chunk_elems`` floats of columns at a time."""

    name = "im2col_gemm_chunked"
    #: 1 MiB of columns: about one core's L2 on current x86 server CPUs.
    chunk_elems: ClassVar[int] = 1 << 18

    @classmethod
    def applicable(cls, spec: ConvSpec) -> bool:
        return cols_elems(spec) > 2 * cls.chunk_elems  # otherwise it is im2col_gemm itself

    @classmethod
    def workspace_elems(cls, spec: ConvSpec) -> int:
        return max(Im2colGemm.workspace_elems(c.spec) for c in plan_chunks(spec, cls.chunk_elems))

    def __init__(self, spec, weight, bias, backend):
        super().__init__(spec, weight, bias, backend)
        self.weights = self.shared(
            "gemm", weight, lambda: backend.asarray(gemm_weights(spec, weight))
        )
        self.chunks = list(plan_chunks(spec, self.chunk_elems))

    def __call__(self, x, out, workspace) -> None:
        k = self.spec.k
        for c in self.chunks:
            x_part = x[c.n0 : c.n1, c.ih0 : c.ih1]
            out_part = out[c.n0 : c.n1, c.oh0 : c.oh1].reshape(-1, k)
            im2col_then_gemm(self.backend, c.spec, x_part, out_part, self.weights, workspace)
            self.finish(out_part)  # while the chunk's output is still in cache
