"""Winograd F(4x4, 3x3): 36 tile positions, 4x fewer multiplications than the direct conv.

Interpolation points 0, +-1, +-2 (and infinity), the standard choice of Lavin & Gray. The
transforms' larger entries (up to 8 in A^T, 5 in B^T) cost accuracy: the float32 error grows to
about 1e-5..1e-4 relative, so the tuner holds it to a looser tolerance than the direct methods.
"""

from __future__ import annotations

import numpy as np

from engine.conv.winograd import Winograd3x3


class WinogradF4x4(Winograd3x3):
    name = "winograd_f4x4_3x3"
    m = 4
    tolerance = 1e-3
    BT = np.array(
        [
            [4, 0, -5, 0, 1, 0],
            [0, -4, -4, 1, 1, 0],
            [0, 4, -4, -1, 1, 0],
            [0, -2, -1, 2, 1, 0],
            [0, 2, -1, -2, 1, 0],
            [0, 4, 0, -5, 0, 1],
        ],
        np.float64,
    )
    G = np.array(
        [
            [1 / 4, 0, 0],
            [-1 / 6, -1 / 6, -1 / 6],
            [-1 / 6, 1 / 6, -1 / 6],
            [1 / 24, 1 / 12, 1 / 6],
            [1 / 24, -1 / 12, 1 / 6],
            [0, 0, 1],
        ],
        np.float64,
    )
    AT = np.array(
        [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]],
        np.float64,
    )
