"""Element-wise Add and clamp-style activations on float32 buffers, compiled with numba: so that
a residual Add and a ReLU (Clip, LeakyRelu) between compiled steps join their chain
(engine/chain.py) instead of breaking it into two Python calls, and so that a large one is
split across the lanes (engine/lanes.py). NumPy's add is as fast on its own.

Each call covers a span [start, stop) of the flat buffers: one span per lane's share. The
activation is the conv kernels' clamp (engine/conv/microkernel.py, ``epilogue_bounds``):
``min(max(y, lo), hi) + slope * min(y, 0)``.
"""

from __future__ import annotations

import functools

import numpy as np

from engine import jit
from engine.lanes import shares

SOURCE = (
    jit.MODULE_HEADER
    + """

@numba.njit("void(float32[::1], float32[::1], float32[::1], int64[::1])", **JIT)
def add(a, b, out, span):
    for i in range(span[0], span[1]):
        out[U(i)] = a[U(i)] + b[U(i)]


@numba.njit("void(float32[::1], float32[::1], float32[::1], int64[::1], float32, float32,"
            " float32)", **JIT)
def add_clamped(a, b, out, span, lo, hi, slope):
    Z = np.float32(0.0)
    for i in range(span[0], span[1]):
        y = a[U(i)] + b[U(i)]
        out[U(i)] = min(max(y, lo), hi) + slope * min(y, Z)


@numba.njit("void(float32[::1], float32[::1], int64[::1], float32, float32, float32)", **JIT)
def clamp(x, out, span, lo, hi, slope):
    Z = np.float32(0.0)
    for i in range(span[0], span[1]):
        y = x[U(i)]
        out[U(i)] = min(max(y, lo), hi) + slope * min(y, Z)
"""
)

#: share boundaries fall on whole cache lines (16 float32), so that no two lanes write one
ALIGN = 16


def spans(size: int, lanes: int) -> list[np.ndarray]:
    """Near-equal [start, stop) spans covering ``size`` elements, one per share."""
    return [np.array(span, np.int64) for span in shares(size, lanes, size, align=ALIGN)]


def add_calls(a, b, out, bounds, lanes: int) -> list[tuple]:
    """(compiled kernel, arguments) per share of ``out = clamp(a + b)`` for same-shape
    contiguous float32 buffers; ``bounds`` (lo, hi, slope) or None for a plain add."""
    flat = (a.reshape(-1), b.reshape(-1), out.reshape(-1))
    kernels = _kernels()
    if bounds is None:
        return [(kernels.add, (*flat, span)) for span in spans(out.size, lanes)]
    clamp = tuple(np.float32(v) for v in bounds)
    return [(kernels.add_clamped, (*flat, span, *clamp)) for span in spans(out.size, lanes)]


def clamp_calls(x, out, bounds, lanes: int) -> list[tuple]:
    """(compiled kernel, arguments) per share of ``out = clamp(x)`` (``bounds``: lo, hi,
    slope) for same-shape contiguous float32 buffers."""
    flat, clamp = (x.reshape(-1), out.reshape(-1)), tuple(np.float32(v) for v in bounds)
    return [(_kernels().clamp, (*flat, span, *clamp)) for span in spans(out.size, lanes)]


@functools.cache
def _kernels():
    return jit.load_source("elementwise_f32", SOURCE)
