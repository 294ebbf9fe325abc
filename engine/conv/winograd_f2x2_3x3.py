"""Winograd F(2x2, 3x3): 16 tile positions, 2.25x fewer multiplications than the direct conv."""

from __future__ import annotations

import numpy as np

from engine.conv.winograd import Winograd3x3


class WinogradF2x2(Winograd3x3):
    """Interpolation points 0, 1, -1 (and infinity): exact in float32 up to rounding."""

    name = "winograd_f2x2_3x3"
    m = 2
    BT = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], np.float64)
    G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], np.float64)
    AT = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], np.float64)
