"""Depthwise convolution on NHWC float32 tensors, compiled with numba (the CPU's ``depthwise``).

One pass over the output: each output pixel's channels accumulate the window's taps that fall
inside the image (the padding is never copied), then bias and the activation are applied
before the store. Output channel ``c * M + j`` reads input channel ``c`` (ONNX group order, M =
K / C); the taps are (R, S, K), channel-contiguous, so the channel loop vectorises. Same
contract as the CUDA ``depthwise_nhwc`` kernel (engine/kernels/depthwise.cu). Activations the
kernel cannot apply (``epilogue_bounds`` is None) run afterwards on the whole output.
"""

from __future__ import annotations

import numpy as np

from engine import jit
from engine.activations import apply_activation
from engine.conv.microkernel import epilogue_bounds
from engine.conv.spec import Epilogue

#: int64 parameter vector of a call, in order
PARAMS = ("SH", "SW", "DH", "DW", "TOP", "LEFT", "M")

SOURCE = (
    jit.MODULE_HEADER
    + f"""

@numba.njit("void(float32[:, :, :, ::1], float32[:, :, ::1], float32[::1],"
            " float32[:, :, :, ::1], int64[::1], float32, float32, float32)", **JIT)
def depthwise(x, taps, bias, out, geometry, lo, hi, slope):
    {", ".join(PARAMS)} = geometry
    N, H, W, C = x.shape
    OH, OW, K = out.shape[1], out.shape[2], out.shape[3]
    R, S = taps.shape[0], taps.shape[1]
    acc = np.empty(K, np.float32)
    Z = np.float32(0.0)
    for n in range(N):
        for oh in range(OH):
            for ow in range(OW):
                acc[:] = bias
                for i in range(R):
                    h = oh * SH + i * DH - TOP
                    if h < 0 or h >= H:
                        continue
                    for j in range(S):
                        w = ow * SW + j * DW - LEFT
                        if w < 0 or w >= W:
                            continue
                        row = x[n, h, w]
                        tap = taps[i, j]
                        if M == 1:
                            for k in range(K):
                                acc[k] += row[k] * tap[k]
                        else:
                            for k in range(K):
                                acc[k] += row[k // M] * tap[k]
                o = out[n, oh, ow]
                for k in range(K):
                    y = acc[k]
                    o[k] = min(max(y, lo), hi) + slope * min(y, Z)
"""
)


def depthwise(x, taps, bias, out, spec) -> None:
    """Depthwise conv of NHWC ``x`` into ``out`` with ``spec``'s bias and epilogue."""
    bounds = epilogue_bounds(spec.epilogue)
    lo, hi, slope = (np.float32(v) for v in (bounds or epilogue_bounds(Epilogue())))
    bias = np.zeros(spec.k, np.float32) if bias is None else np.asarray(bias, np.float32)
    geometry = np.array([*spec.strides, *spec.dilations, spec.pads[0], spec.pads[1],
                         spec.k // spec.c], np.int64)  # fmt: skip
    kernel = jit.load_source("depthwise_nhwc", SOURCE).depthwise
    kernel(np.ascontiguousarray(x), taps.reshape(spec.r, spec.s, spec.k), bias, out, geometry,
           lo, hi, slope)  # fmt: skip
    if bounds is None:
        e = spec.epilogue
        apply_activation(np, out, e.kind, e.alpha, e.beta)
