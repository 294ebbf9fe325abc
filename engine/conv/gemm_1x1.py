"""1x1 convolutions without padding are a plain GEMM on the NHWC input.

Stride 1 uses the input in place (no gather at all); a strided 1x1 conv copies the strided view
of the input (the pixels it reads, 1/(sh*sw) of them) into the workspace once, then one GEMM.
"""

from __future__ import annotations

from engine.conv.base import ConvAlgorithm, gemm_weights
from engine.conv.im2col_gemm import grouped_gemm
from engine.conv.spec import ConvSpec


class Gemm1x1(ConvAlgorithm):
    """(N*OH*OW, C) x (C, K)."""

    name = "gemm_1x1"

    @classmethod
    def applicable(cls, spec: ConvSpec) -> bool:
        return (spec.r, spec.s) == (1, 1) and not spec.has_padding

    @classmethod
    def workspace_elems(cls, spec: ConvSpec) -> int:
        strided = spec.strides != (1, 1)
        return spec.n * spec.out_h * spec.out_w * spec.c if strided else 0

    def __init__(self, spec, weight, bias, backend):
        super().__init__(spec, weight, bias, backend)
        self.weights = self.shared(
            "gemm", weight, lambda: backend.asarray(gemm_weights(spec, weight))
        )

    def __call__(self, x, out, workspace) -> None:
        spec = self.spec
        rows = spec.n * spec.out_h * spec.out_w
        if spec.strides != (1, 1):
            sh, sw = spec.strides
            picked = workspace[: rows * spec.c].reshape(spec.n, spec.out_h, spec.out_w, spec.c)
            picked[...] = x[:, : sh * (spec.out_h - 1) + 1 : sh, : sw * (spec.out_w - 1) + 1 : sw]
            x = picked
        out2d = out.reshape(rows, spec.k)
        grouped_gemm(self.xp, x.reshape(rows, spec.groups, spec.c_per_group), self.weights, out2d)
        self.finish(out2d)
