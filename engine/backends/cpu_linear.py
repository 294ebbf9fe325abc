"""A fully connected layer (Gemm with constant weights) on float32, compiled with numba, a
share of the output features per call.

The classifier head of a CNN is one small matrix product; as a BLAS call it is one more Python
step after the compiled chain (engine/chain.py), and one core reads its weights (2 MB for
ResNet-18's 512 -> 1000). Compiled, it joins the chain and each lane reads its own columns.
"""

from __future__ import annotations

import functools

import numpy as np

from engine import jit
from engine.backends.cpu_elementwise import ALIGN
from engine.lanes import shares

SOURCE = (
    jit.MODULE_HEADER
    + """

@numba.njit("void(float32[::1], float32[::1], float32[::1], float32[::1], int64[::1])", **JIT)
def dense(a, w, c, out, geometry):
    M, K, N, J0, J1 = geometry
    for m in range(M):
        row = m * N
        for j in range(J0, J1):
            out[U(row + j)] = c[U(j)]
        for k in range(K):
            v = a[U(m * K + k)]
            base = k * N
            for j in range(J0, J1):
                out[U(row + j)] += v * w[U(base + j)]
"""
)


def dense_calls(a, weights, shift, out, lanes: int) -> list[tuple]:
    """(compiled kernel, arguments) per share of ``out = a @ weights + shift`` for contiguous
    float32 ``a`` (M, K), ``weights`` (K, N) and ``shift`` (N,): bands of the N output
    features (whole cache lines), one share unless the weights are large."""
    (m, k), n = a.shape, weights.shape[1]
    flat = (a.reshape(-1), weights.reshape(-1), shift, out.reshape(-1))
    return [(_kernel(), (*flat, np.array([m, k, n, j0, j1], np.int64)))
            for j0, j1 in shares(n, lanes, weights.size, align=ALIGN)]  # fmt: skip


@functools.cache
def _kernel():
    return jit.load_source("dense_f32", SOURCE).dense
