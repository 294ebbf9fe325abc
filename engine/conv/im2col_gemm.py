"""The reference lowering: gather every window into a column matrix, then one GEMM per group."""

from __future__ import annotations

from engine.conv.base import ConvAlgorithm, gemm_weights
from engine.conv.spec import ConvSpec


def cols_elems(spec: ConvSpec) -> int:
    return spec.n * spec.out_h * spec.out_w * spec.r * spec.s * spec.c


def padded_elems(spec: ConvSpec) -> int:
    ph, pw = spec.padded_hw
    return spec.n * ph * pw * spec.c if spec.has_padding else 0


class Im2colGemm(ConvAlgorithm):
    """im2col + GEMM with the batch folded into M: (N*OH*OW, R*S*C/G) x (R*S*C/G, K/G)."""

    name = "im2col_gemm"

    @classmethod
    def applicable(cls, spec: ConvSpec) -> bool:
        return True

    @classmethod
    def workspace_elems(cls, spec: ConvSpec) -> int:
        return cols_elems(spec) + padded_elems(spec)

    def __init__(self, spec, weight, bias, backend):
        super().__init__(spec, weight, bias, backend)
        self.weights = self.shared(
            "gemm", weight, lambda: backend.asarray(gemm_weights(spec, weight))
        )

    def __call__(self, x, out, workspace) -> None:
        out2d = out.reshape(-1, self.spec.k)
        im2col_then_gemm(self.backend, self.spec, x, out2d, self.weights, workspace)
        self.finish(out2d)


def im2col_then_gemm(backend, spec: ConvSpec, x, out2d, weights, workspace) -> None:
    """Gather ``x`` (laid out as ``spec`` says) into columns inside ``workspace``, then GEMM
    into ``out2d`` (rows, K). No epilogue: callers that split a conv apply it once at the end."""
    rows = spec.n * spec.out_h * spec.out_w
    n_cols = cols_elems(spec)
    cols = workspace[:n_cols]
    padded = None
    if spec.has_padding:
        ph, pw = spec.padded_hw
        padded = workspace[n_cols : n_cols + padded_elems(spec)].reshape(spec.n, ph, pw, spec.c)
    windows = (spec.n, spec.out_h, spec.out_w, spec.groups, spec.r, spec.s, spec.c_per_group)
    backend.im2col(x, cols.reshape(windows), spec, padded)
    grouped_gemm(backend.xp, cols.reshape(rows, spec.groups, -1), weights, out2d)


def grouped_gemm(xp, cols, weights, out2d) -> None:
    """out[:, group g] = cols[:, g, :] @ weights[g] for every group."""
    groups, _, kg = weights.shape
    if groups == 1:
        xp.matmul(cols[:, 0, :], weights[0], out=out2d)
        return
    for g in range(groups):
        xp.matmul(cols[:, g, :], weights[g], out=out2d[:, g * kg : (g + 1) * kg])
