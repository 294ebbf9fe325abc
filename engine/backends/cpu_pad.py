"""Zero padding of NHWC float32 images, compiled with numba, a share of the rows per call.

``pad_into`` (engine/backends/base.py) is five NumPy calls on one thread; a conv split across
lanes (engine/lanes.py) pads its input first, each lane a band of the padded rows, so that the
copy is split like the conv after it.
"""

from __future__ import annotations

import functools

import numpy as np

from engine import jit
from engine.lanes import shares

#: ``pad_rows``: rows ROW0..ROW1 of the (N * HP, WP, C) padded images ``xp`` from NHWC ``x``
#: (H x W) placed at (TOP, LEFT), zeros around; compiled into its callers (here, and the conv
#: kernels that pad their own images: engine/conv/microkernel.py)
ROWS_SOURCE = """
@numba.njit(inline="always", **JIT)
def pad_rows(x, xp, ROW0, ROW1, H, W, C, HP, WP, TOP, LEFT):
    Z = np.float32(0.0)
    for row in range(ROW0, ROW1):
        n, hp = row // HP, row % HP
        base = row * WP * C
        h = hp - TOP
        if h < 0 or h >= H:
            for i in range(WP * C):
                xp[U(base + i)] = Z
            continue
        for i in range(LEFT * C):
            xp[U(base + i)] = Z
        src = (n * H + h) * W * C
        dst = base + LEFT * C
        for i in range(W * C):
            xp[U(dst + i)] = x[U(src + i)]
        for i in range((LEFT + W) * C, WP * C):
            xp[U(base + i)] = Z
"""

#: int64 parameter vector of a ``pad`` call, in order
PARAMS = ("H", "W", "C", "HP", "WP", "TOP", "LEFT", "ROW0", "ROW1")

SOURCE = (
    jit.MODULE_HEADER
    + ROWS_SOURCE
    + f"""

@numba.njit("void(float32[::1], float32[::1], int64[::1])", **JIT)
def pad(x, xp, geometry):
    {", ".join(PARAMS)} = geometry
    pad_rows(x, xp, ROW0, ROW1, H, W, C, HP, WP, TOP, LEFT)
"""
)


def pad_calls(x, padded, top: int, left: int, lanes: int) -> list[tuple]:
    """(kernel, arguments) per lane writing NHWC ``x`` into ``padded`` (N, HP, WP, C) at
    (top, left), zeros around: near-equal bands of the padded rows."""
    n, h, w, c = x.shape
    _, hp, wp, _ = padded.shape
    kernel, flat_x, flat_p = _kernel(), x.reshape(-1), padded.reshape(-1)
    return [(kernel, (flat_x, flat_p, np.array([h, w, c, hp, wp, top, left, a, b], np.int64)))
            for a, b in shares(n * hp, lanes)]  # fmt: skip


@functools.cache
def _kernel():
    return jit.load_source("pad_nhwc", SOURCE).pad
