"""1x1 convolutions with stride 1 and no padding are a plain GEMM on the NHWC input: no gather."""

from __future__ import annotations

from engine.conv.base import ConvAlgorithm, gemm_weights
from engine.conv.im2col_gemm import grouped_gemm
from engine.conv.spec import ConvSpec


class Gemm1x1(ConvAlgorithm):
    """(N*H*W, C) x (C, K), the input used in place."""

    name = "gemm_1x1"

    @classmethod
    def applicable(cls, spec: ConvSpec) -> bool:
        return (spec.r, spec.s) == (1, 1) and spec.strides == (1, 1) and not spec.has_padding

    def __init__(self, spec, weight, bias, backend):
        super().__init__(spec, weight, bias, backend)
        self.weights = backend.asarray(gemm_weights(spec, weight))

    def __call__(self, x, out, workspace) -> None:
        spec = self.spec
        rows = spec.n * spec.h * spec.w
        out2d = out.reshape(rows, spec.k)
        grouped_gemm(self.xp, x.reshape(rows, spec.groups, spec.c_per_group), self.weights, out2d)
        self.finish(out2d)
