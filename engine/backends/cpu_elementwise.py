"""Element-wise Add on float32 buffers of one shape, compiled with numba: only so that a
residual Add between compiled steps can join their chain (engine/chain.py); NumPy's add is as
fast on its own."""

from __future__ import annotations

import functools

from engine import jit

SOURCE = (
    jit.MODULE_HEADER
    + """

@numba.njit("void(float32[::1], float32[::1], float32[::1])", **JIT)
def add(a, b, out):
    for i in range(out.size):
        out[U(i)] = a[U(i)] + b[U(i)]
"""
)


def add_call(a, b, out):
    """(compiled kernel, arguments) of ``out = a + b`` for same-shape contiguous float32."""
    return _kernel(), (a.reshape(-1), b.reshape(-1), out.reshape(-1))


@functools.cache
def _kernel():
    return jit.load_source("add_f32", SOURCE).add
