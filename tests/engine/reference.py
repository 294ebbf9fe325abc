"""Float64 reference implementations written as explicit loops, for checking the engine."""

from __future__ import annotations

import numpy as np


def conv2d_nchw(x, weight, bias=None, pads=(0, 0, 0, 0), strides=(1, 1), dilations=(1, 1), groups=1):
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
