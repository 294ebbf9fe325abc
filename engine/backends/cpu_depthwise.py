"""Depthwise convolution on NHWC float32 tensors, compiled with numba (the CPU's ``depthwise``).

One pass over the output: each output pixel's channels accumulate the window's taps that fall
inside the image (the padding is never copied), then bias and the activation are applied
before the store. Output channel ``c * M + j`` reads input channel ``c`` (ONNX group order, M =
K / C); the taps are (R, S, K), channel-contiguous, so the channel loop vectorises. Same
contract as the CUDA ``depthwise_nhwc`` kernel (engine/kernels/depthwise.cu). Activations the
kernel cannot apply (``epilogue_bounds`` is None) run afterwards on the whole output.
"""

from __future__ import annotations

import functools

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

@numba.njit("void(float32[::1], float32[::1], float32[::1], float32[::1], int64[::1], float32,"
            " float32, float32)", **JIT)
def depthwise(x, taps, bias, out, geometry, lo, hi, slope):
    {", ".join(PARAMS)}, N, H, W, C, OH, OW, K, R, S = geometry
    acc = np.empty(K, np.float32)
    Z = np.float32(0.0)
    for n in range(N):
        for oh in range(OH):
            for ow in range(OW):
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
                    out[U(ob + k)] = min(max(y, lo), hi) + slope * min(y, Z)
"""
)


def depthwise(x, taps, bias, out, spec) -> None:
    """Depthwise conv of NHWC ``x`` into ``out`` with ``spec``'s bias and epilogue."""
    bounds = epilogue_bounds(spec.epilogue)
    lo, hi, slope = (np.float32(v) for v in (bounds or epilogue_bounds(Epilogue())))
    bias = np.zeros(spec.k, np.float32) if bias is None else np.asarray(bias, np.float32)
    geometry = np.array([*spec.strides, *spec.dilations, spec.pads[0], spec.pads[1],
                         spec.k // spec.c, *x.shape, spec.out_h, spec.out_w, spec.k, spec.r,
                         spec.s], np.int64)  # fmt: skip
    flat = np.ascontiguousarray(x).reshape(-1)
    _kernel()(flat, taps.reshape(-1), bias, out.reshape(-1), geometry, lo, hi, slope)
    if bounds is None:
        e = spec.epilogue
        apply_activation(np, out, e.kind, e.alpha, e.beta)


@functools.cache
def _kernel():
    return jit.load_source("depthwise_nhwc", SOURCE).depthwise
