"""Winograd F(4x4, 3x3): 36 tile positions, 4x fewer multiplications than the direct conv.

Interpolation points 0, +-1, +-2 (and infinity), the standard choice of Lavin & Gray. The
transforms' larger entries (up to 8 in A^T, 5 in B^T) cost accuracy: on random data the float32
error is about ten times the direct method's (1.4e-6 relative at 64 channels, 2.5e-6 at 512,
against 3e-7 for im2col_gemm). The tuner holds it to 1e-4 all the same, the engine's bar for a
whole model against onnxruntime: a layer that strays further is rejected, not accepted with a
looser tolerance.
"""

from __future__ import annotations

import numpy as np

from engine.conv.winograd import Winograd3x3


class WinogradF4x4(Winograd3x3):
    name = "winograd_f4x4_3x3"
    m = 4
    tolerance = 1e-4
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
