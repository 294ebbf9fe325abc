"""NCHW <-> NHWC copies of float32 tensors, compiled with numba, a share of the rows per call.

The plan's layout conversions (``LayoutConvert``: the input image into the convs' NHWC, the
last feature map back) were one NumPy transposing copy on the engine's thread, outside the
compiled chain around them (0.1 ms of a 1.4 ms batch-1 pass of a 128x128 MobileNet-style net);
compiled, they join the chain and split across the lanes (engine/lanes.py) by image rows.
"""

from __future__ import annotations

import functools

import numpy as np

from engine import jit
from engine.lanes import shares

SOURCE = (
    jit.MODULE_HEADER
    + """

@numba.njit("void(float32[::1], float32[::1], int64[::1])", **JIT)
def convert(x, y, geometry):
    N, C, H, W, ROW0, ROW1, TO_NHWC = geometry
    for row in range(ROW0, ROW1):
        n, h = row // H, row % H
        nchw, nhwc = (n * C * H + h) * W, row * W * C  # where the row starts in each layout
        if TO_NHWC:
            xb, XC, XW, yb, YC, YW = nchw, H * W, 1, nhwc, 1, C
        else:
            xb, XC, XW, yb, YC, YW = nhwc, 1, C, nchw, H * W, 1
        for c in range(C):
            for w in range(W):
                y[U(yb + c * YC + w * YW)] = x[U(xb + c * XC + w * XW)]
"""
)


def convert_calls(x, y, to_nhwc: bool, lanes: int) -> list[tuple]:
    """(compiled kernel, arguments) per share copying 4-D float32 ``x`` into ``y`` (NCHW into
    NHWC when ``to_nhwc``, else back): near-equal bands of the N * H image rows."""
    n, c, h, w = x.shape if to_nhwc else (x.shape[0], x.shape[3], x.shape[1], x.shape[2])
    kernel, flat_x, flat_y = _kernel(), x.reshape(-1), y.reshape(-1)
    return [(kernel, (flat_x, flat_y, np.array([n, c, h, w, a, b, to_nhwc], np.int64)))
            for a, b in shares(n * h, lanes, x.size)]  # fmt: skip


@functools.cache
def _kernel():
    return jit.load_source("layout_f32", SOURCE).convert
