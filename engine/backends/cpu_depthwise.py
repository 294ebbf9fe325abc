"""Depthwise convolution on NHWC float32 tensors, compiled with numba (the CPU's ``depthwise``).

One pass over the output, the padding never copied. Where a pixel's whole window lies inside
the input (most of them) and each output channel reads its own input channel (multiplier 1),
an explicit-vector tile (``simd.depthwise_tile``) computes 8 pixels x one vector of channels
with the accumulators in registers; the border pixels, and convs with a channel multiplier,
run a plain loop that skips the taps outside the input. Bias and the activation are applied
before the store. Output channel ``c * M + j`` reads input channel ``c`` (ONNX group order, M =
K / C); the taps are (R, S, K). Same contract as the CUDA ``depthwise_nhwc`` kernel
(engine/kernels/depthwise.cu). Activations the kernels cannot apply (``epilogue_bounds`` is
None) run afterwards on the whole output.
"""

from __future__ import annotations

import functools

import numpy as np

from engine import jit
from engine.activations import apply_activation
from engine.conv.microkernel import HEADER, epilogue_bounds
from engine.conv.simd import DEPTHWISE_PIXELS
from engine.conv.spec import Epilogue
from engine.lanes import shares

#: int64 parameter vector of a call, in order
PARAMS = ("SH", "SW", "DH", "DW", "TOP", "LEFT", "M", "N", "H", "W", "C", "OH", "OW", "K", "R",
          "S", "ROW0", "ROW1")  # fmt: skip
#: output elements below which a depthwise conv is one share: a lane barrier (about 1 us) costs
#: more than the other lanes save on less
MIN_SHARE = 1 << 12

PIXEL = """
@numba.njit(inline="always", **JIT)
def pixel(x, taps, bias, out, acc, n, oh, ow, SH, SW, DH, DW, TOP, LEFT, M, H, W, C, OH, OW, K,
          R, S, lo, hi, slope):
    for k in range(K):
        acc[U(k)] = bias[U(k)]
    for i in range(R):
        h = oh * SH + i * DH - TOP
        if h < 0 or h >= H:
            continue
        for j in range(S):
            w = ow * SW + j * DW - LEFT
            if w < 0 or w >= W:
                continue
            xb = ((n * H + h) * W + w) * C
            tb = (i * S + j) * K
            if M == 1:
                for k in range(K):
                    acc[U(k)] += x[U(xb + k)] * taps[U(tb + k)]
            else:
                for k in range(K):
                    acc[U(k)] += x[U(xb + k // M)] * taps[U(tb + k)]
    ob = ((n * OH + oh) * OW + ow) * K
    for k in range(K):
        y = acc[U(k)]
        out[U(ob + k)] = min(max(y, lo), hi) + slope * min(y, np.float32(0.0))
"""


def _tile_call(pixels: int) -> str:
    return (f"TILE_{pixels}(x, ((n * H + h0) * W + ow * SW - LEFT) * C, SW * C, DH * W * C,"
            " DW * C, R, S, taps, K, bias, k, K - k, out, ((n * OH + oh) * OW + ow) * K, K, lo,"
            " hi, slope)")  # fmt: skip


def _source(pixels: int) -> str:
    args = (
        "x, taps, bias, out, acc, n, oh, ow, "
        + ", ".join(PARAMS[:6] + PARAMS[6:7])
        + (", H, W, C, OH, OW, K, R, S, lo, hi, slope")
    )
    tail = [f"            if rest == {p}:\n                {_tile_call(p)}"
            for p in range(1, pixels)]  # fmt: skip
    lines = [
        HEADER,
        *[f"TILE_{p} = simd.depthwise_tile({p})" for p in range(1, pixels + 1)],
        "LANES = simd.vector_shape()[0]",
        PIXEL,
        '@numba.njit("void(float32[::1], float32[::1], float32[::1], float32[::1], int64[::1],'
        ' float32, float32, float32)", **JIT)',
        "def depthwise(x, taps, bias, out, geometry, lo, hi, slope):",
        f"    {', '.join(PARAMS)} = geometry",
        "    acc = np.empty(K, np.float32)",
        "    # columns whose every tap is inside the input",
        "    OW0 = min(OW, (LEFT + SW - 1) // SW)",
        "    OW1 = max(OW0, min(OW, (W - 1 - (S - 1) * DW + LEFT) // SW + 1))",
        "    for row in range(ROW0, ROW1):  # output rows of all images: one share's",
        "        n, oh = row // OH, row % OH",
        "        h0 = oh * SH - TOP",
        "        if M != 1 or h0 < 0 or h0 + (R - 1) * DH >= H:",
        "            for ow in range(OW):",
        f"                pixel({args})",
        "            continue",
        "        for ow in range(OW0):",
        f"            pixel({args})",
        "        for ow in range(OW1, OW):",
        f"            pixel({args})",
        "        for k in range(0, K, LANES):",
        "            ow = OW0",
        f"            while ow + {pixels} <= OW1:",
        f"                {_tile_call(pixels)}",
        f"                ow += {pixels}",
        "            rest = OW1 - ow",
        *tail,
        "",
    ]
    return "\n".join(lines)


def depthwise(x, taps, bias, out, spec) -> None:
    """Depthwise conv of NHWC ``x`` into ``out`` with ``spec``'s bias and epilogue."""
    ((kernel, args),) = _calls(x, taps, bias, out, spec, 1)
    kernel(*args)
    if epilogue_bounds(spec.epilogue) is None:
        e = spec.epilogue
        apply_activation(np, out, e.kind, e.alpha, e.beta)


def depthwise_calls(x, taps, bias, out, spec, lanes: int):
    """(compiled kernel, arguments) per share of ``depthwise`` for engine.chain (near-equal
    bands of the output rows, up to ``lanes``), or None when the activation runs afterwards."""
    return _calls(x, taps, bias, out, spec, lanes) if epilogue_bounds(spec.epilogue) else None


def _calls(x, taps, bias, out, spec, lanes: int) -> list[tuple]:
    bounds = epilogue_bounds(spec.epilogue) or epilogue_bounds(Epilogue())
    lo, hi, slope = (np.float32(v) for v in bounds)
    bias = np.zeros(spec.k, np.float32) if bias is None else np.asarray(bias, np.float32)
    geometry = [*spec.strides, *spec.dilations, spec.pads[0], spec.pads[1], spec.k // spec.c,
                *x.shape, spec.out_h, spec.out_w, spec.k, spec.r, spec.s]  # fmt: skip
    flat = (np.ascontiguousarray(x).reshape(-1), taps.reshape(-1), bias, out.reshape(-1))
    return [(_kernel(), (*flat, np.array([*geometry, a, b], np.int64), lo, hi, slope))
            for a, b in shares(x.shape[0] * spec.out_h, lanes, out.size, MIN_SHARE)]  # fmt: skip


@functools.cache
def _kernel():
    return jit.load_source(f"depthwise_p{DEPTHWISE_PIXELS}", _source(DEPTHWISE_PIXELS)).depthwise
