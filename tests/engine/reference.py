"""Float64 reference implementations written as explicit loops, for checking the engine."""

from __future__ import annotations

import numpy as np


def conv2d_nchw(
    x, weight, bias=None, pads=(0, 0, 0, 0), strides=(1, 1), dilations=(1, 1), groups=1
):
    """Direct convolution in float64: a loop over output channels and kernel taps."""
    x = np.asarray(x, np.float64)
    weight = np.asarray(weight, np.float64)
    n, c, h, w = x.shape
    k, cg, r, s = weight.shape
    top, left, bottom, right = pads
    xp = np.zeros((n, c, h + top + bottom, w + left + right))
    xp[:, :, top : top + h, left : left + w] = x
    oh = (h + top + bottom - dilations[0] * (r - 1) - 1) // strides[0] + 1
    ow = (w + left + right - dilations[1] * (s - 1) - 1) // strides[1] + 1
    y = np.zeros((n, k, oh, ow))
    kg = k // groups
    for ko in range(k):
        g = ko // kg
        for i in range(r):
            for j in range(s):
                hs, ws = i * dilations[0], j * dilations[1]
                patch = xp[:, g * cg : (g + 1) * cg,
                           hs : hs + strides[0] * (oh - 1) + 1 : strides[0],
                           ws : ws + strides[1] * (ow - 1) + 1 : strides[1]]  # fmt: skip
                y[:, ko] += np.einsum("nchw,c->nhw", patch, weight[ko, :, i, j])
    if bias is not None:
        y += np.asarray(bias, np.float64)[None, :, None, None]
    return y


def rel_error(y, ref) -> float:
    """||y - ref|| / ||ref||."""
    ref = np.asarray(ref, np.float64)
    return float(np.linalg.norm(np.asarray(y, np.float64) - ref) / max(np.linalg.norm(ref), 1e-30))


# -- window arithmetic (ONNX's rules, written out independently of engine/ops/window.py) --------


def same_pads(in_hw, kernel, strides, dilations, upper=True) -> tuple[int, int, int, int]:
    """auto_pad SAME_UPPER/SAME_LOWER as (top, left, bottom, right): output = ceil(in / stride),
    the odd padding element at the end (UPPER) or the beginning (LOWER)."""
    begin, end = [], []
    for size, k, s, d in zip(in_hw, kernel, strides, dilations):
        out = -(-size // s)
        total = max(0, (out - 1) * s + (k - 1) * d + 1 - size)
        begin.append(total // 2 if upper else total - total // 2)
        end.append(total - begin[-1])
    return begin[0], begin[1], end[0], end[1]


def pool_out_size(size, k, s, d, pad_begin, pad_end, ceil_mode) -> int:
    span = (k - 1) * d + 1
    exact = (size + pad_begin + pad_end - span) / s
    out = int(np.ceil(exact) if ceil_mode else np.floor(exact)) + 1
    if ceil_mode and (out - 1) * s >= size + pad_begin:  # a window may not start in the end pad
        out -= 1
    return out


def pool2d_nchw(x, mode, kernel, pads=(0, 0, 0, 0), strides=(1, 1), dilations=(1, 1),
                ceil_mode=False, count_include_pad=False):  # fmt: skip
    """Max or average pooling in float64: a loop over output positions and kernel taps.

    Average: the divisor counts the taps inside the input, or inside the padded input when
    ``count_include_pad`` (never the taps past the end padding that ceil_mode adds)."""
    x = np.asarray(x, np.float64)
    n, c, h, w = x.shape
    top, left, bottom, right = pads
    oh = pool_out_size(h, kernel[0], strides[0], dilations[0], top, bottom, ceil_mode)
    ow = pool_out_size(w, kernel[1], strides[1], dilations[1], left, right, ceil_mode)
    y = np.zeros((n, c, oh, ow))
    for i in range(oh):
        for j in range(ow):
            values, counted = [], 0
            for a in range(kernel[0]):
                for b in range(kernel[1]):
                    row = i * strides[0] - top + a * dilations[0]
                    col = j * strides[1] - left + b * dilations[1]
                    if 0 <= row < h and 0 <= col < w:
                        values.append(x[:, :, row, col])
                        counted += 1
                    elif count_include_pad:  # inside the padded input still counts
                        counted += -top <= row < h + bottom and -left <= col < w + right
            if mode == "max":
                y[:, :, i, j] = np.max(values, axis=0)
            else:
                y[:, :, i, j] = np.sum(values, axis=0) / counted
    return y


# -- element-wise and per-channel --------------------------------------------------------------

ACTIVATIONS = {
    "Relu": lambda x, a: np.maximum(x, 0),
    "LeakyRelu": lambda x, a: np.where(x < 0, x * a.get("alpha", 0.01), x),
    "Sigmoid": lambda x, a: 1 / (1 + np.exp(-x)),
    "HardSigmoid": lambda x, a: np.clip(x * a.get("alpha", 0.2) + a.get("beta", 0.5), 0, 1),
    "HardSwish": lambda x, a: x * np.clip(x / 6 + 0.5, 0, 1),
    "Tanh": lambda x, a: np.tanh(x),
    "Clip": lambda x, a: np.minimum(np.maximum(x, a.get("min", -np.inf)), a.get("max", np.inf)),
}


def activation(op: str, x, **attrs):
    """The ONNX activation ``op`` in float64 (attrs: alpha, beta, min, max)."""
    return ACTIVATIONS[op](np.asarray(x, np.float64), attrs)


def prelu(x, slope):
    x = np.asarray(x, np.float64)
    return np.where(x < 0, x * np.asarray(slope, np.float64), x)


def batchnorm_nchw(x, gamma, beta, mean, var, epsilon=1e-5):
    """(x - mean) / sqrt(var + eps) * gamma + beta, per channel (axis 1)."""
    x = np.asarray(x, np.float64)
    shape = (1, -1) + (1,) * (x.ndim - 2)
    p = [np.asarray(v, np.float64).reshape(shape) for v in (gamma, beta, mean, var)]
    return (x - p[2]) / np.sqrt(p[3] + epsilon) * p[0] + p[1]


def lrn_nchw(x, size, alpha=1e-4, beta=0.75, bias=1.0):
    """Local response normalisation: a loop over channels and the window around each."""
    x = np.asarray(x, np.float64)
    c = x.shape[1]
    y = np.empty_like(x)
    for ch in range(c):
        low, high = max(0, ch - (size - 1) // 2), min(c - 1, ch + size // 2)
        square_sum = np.sum(x[:, low : high + 1] ** 2, axis=1)
        y[:, ch] = x[:, ch] / (bias + alpha / size * square_sum) ** beta
    return y


# -- linear algebra ----------------------------------------------------------------------------


def gemm(a, b, c=None, alpha=1.0, beta=1.0, trans_a=False, trans_b=False):
    """alpha * A' B' + beta * C with explicit sums over the inner dimension."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    a, b = (a.T if trans_a else a), (b.T if trans_b else b)
    y = np.zeros((a.shape[0], b.shape[1]))
    for k in range(a.shape[1]):
        y += np.outer(a[:, k], b[k, :])
    y *= alpha
    if c is not None:
        y += beta * np.asarray(c, np.float64)
    return y


def softmax(x, axis):
    """exp(x - max) / sum along ``axis`` (one axis: opset 13; legacy callers flatten first)."""
    x = np.asarray(x, np.float64)
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def softmax_legacy(x, axis=1):
    """Opset < 13: the input seen as 2-D (prod(shape[:axis]), prod(shape[axis:]))."""
    x = np.asarray(x, np.float64)
    rows = int(np.prod(x.shape[:axis]))
    return softmax(x.reshape(rows, -1), axis=1).reshape(x.shape)
