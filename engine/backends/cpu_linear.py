"""A fully connected layer (Gemm with constant weights) on float32, compiled: a 1x1 convolution
of the M input rows as one row of M pixels, by the compiled implicit GEMM
(engine/conv/implicit_gemm.py).

The classifier head of a CNN is one small matrix product; as a BLAS call it is one more Python
step after the compiled chain (engine/chain.py), and one core reads its weights (2 MB for
ResNet-18's 512 -> 1000). Compiled, it joins the chain, each lane reads the weights of its
share of the output features, and the register tile keeps the sums in registers (a loop
accumulating into the output row took 67-114 us for ResNet-18's head on two lanes).
"""

from __future__ import annotations

import numpy as np

from engine.conv.implicit_gemm import ImplicitGemm
from engine.conv.spec import ConvSpec

#: the 1x1 conv reads its input in place: no padding, so no workspace
NO_WORKSPACE = np.empty(0, np.float32)


def dense(weights: np.ndarray, shift: np.ndarray, m: int, backend) -> ImplicitGemm | None:
    """``out = a @ weights + shift`` for float32 ``a`` (m, K), ``weights`` (K, N), ``shift``
    (N,) as a compiled 1x1 conv, or None where the compiled kernels are not available."""
    k, n = weights.shape
    spec = ConvSpec(1, k, 1, m, n, 1, 1, (0, 0, 0, 0), (1, 1), (1, 1), 1)
    if not ImplicitGemm.applicable(spec):
        return None
    return ImplicitGemm(spec, weights.T.reshape(n, k, 1, 1), shift, backend)


def dense_phases(algo: ImplicitGemm, a, out, lanes: int) -> list[list[tuple]] | None:
    """Lane phases (``Op.lane_phases``) of ``algo`` on contiguous ``a`` (m, K) into ``out``
    (m, N): the output features split across ``lanes`` where the weights outweigh the input."""
    spec = algo.spec
    x = a.reshape(1, 1, spec.w, spec.c)
    return algo.lane_phases(x, out.reshape(1, 1, spec.w, spec.k), NO_WORKSPACE, lanes)
