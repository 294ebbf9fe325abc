"""MaxPool and AveragePool on NHWC float32 tensors, compiled with numba (the CPU's ``pool``).

One pass over the output: each output pixel's channels are reduced over the window's taps that
fall inside the image, so the padding is never copied (NumPy's version pads into a workspace and
makes one pass per tap). The channel loop is contiguous and vectorised. Same contract as the
CUDA ``pool_nhwc`` kernel (engine/kernels/pool.cu): pads are (top, left, bottom, right), ceil
mode is already in the output's size, AveragePool divides by the taps inside the image, or
inside the padded image with ``count_include_pad``.
"""

from __future__ import annotations

import functools

import numpy as np

from engine import jit
from engine.lanes import shares

#: int64 parameter vector of a call, in order
PARAMS = ("KH", "KW", "SH", "SW", "DH", "DW", "TOP", "LEFT", "BOTTOM", "RIGHT", "AVERAGE",
          "INCLUDE_PAD")  # fmt: skip

SOURCE = (
    jit.MODULE_HEADER
    + f"""

@numba.njit("void(float32[::1], float32[::1], int64[::1])", **JIT)
def pool(x, out, geometry):
    {", ".join(PARAMS)}, N, H, W, C, OH, OW, ROW0, ROW1 = geometry
    for row in range(ROW0, ROW1):  # output rows of all images: one share's
        n, oh = row // OH, row % OH
        for ow in range(OW):
            ob = ((n * OH + oh) * OW + ow) * C
            taps = 0
            for i in range(KH):
                h = oh * SH + i * DH - TOP
                if h < 0 or h >= H:
                    continue
                for j in range(KW):
                    w = ow * SW + j * DW - LEFT
                    if w < 0 or w >= W:
                        continue
                    xb = ((n * H + h) * W + w) * C
                    if taps == 0:
                        for c in range(C):
                            out[U(ob + c)] = x[U(xb + c)]
                    elif AVERAGE:
                        for c in range(C):
                            out[U(ob + c)] += x[U(xb + c)]
                    else:
                        for c in range(C):
                            out[U(ob + c)] = max(out[U(ob + c)], x[U(xb + c)])
                    taps += 1
            if taps == 0:  # a window wholly in the padding
                for c in range(C):
                    out[U(ob + c)] = 0
            if AVERAGE:
                if INCLUDE_PAD:
                    rows = 0
                    for i in range(KH):
                        rows += oh * SH + i * DH - TOP < H + BOTTOM
                    cols = 0
                    for j in range(KW):
                        cols += ow * SW + j * DW - LEFT < W + RIGHT
                    taps = rows * cols
                scale = np.float32(1.0) / np.float32(max(taps, 1))
                for c in range(C):
                    out[U(ob + c)] *= scale
"""
)


def pool(x, out, kind: str, kernel, strides, dilations, pads, count_include_pad: bool) -> None:
    """``kind`` ("max" or "average") pooling of NHWC ``x`` into ``out`` (N, OH, OW, C)."""
    ((fn, args),) = pool_calls(x, out, kind, kernel, strides, dilations, pads, count_include_pad)
    fn(*args)


def pool_calls(x, out, kind: str, kernel, strides, dilations, pads, count_include_pad: bool,
               lanes: int = 1) -> list[tuple]:  # fmt: skip
    """(compiled kernel, arguments) per share of ``pool`` for engine.chain: near-equal bands
    of the output rows, up to ``lanes`` when the input is large."""
    geometry = [*kernel, *strides, *dilations, *pads, kind != "max", bool(count_include_pad),
                *x.shape, *out.shape[1:3]]  # fmt: skip
    flat = (np.ascontiguousarray(x).reshape(-1), out.reshape(-1))
    return [(_kernel(), (*flat, np.array([*geometry, a, b], np.int64)))
            for a, b in shares(out.shape[0] * out.shape[1], lanes, x.size)]  # fmt: skip


@functools.cache
def _kernel():
    return jit.load_source("pool_nhwc", SOURCE).pool
