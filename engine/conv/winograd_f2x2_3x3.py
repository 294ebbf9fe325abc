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

    def __call__(self, x, out, workspace) -> None:
        if not self.backend.native_winograd_f2x2:
            super().__call__(x, out, workspace)
            return
        for n0 in range(0, self.spec.n, self.chunk):
            n1 = min(self.spec.n, n0 + self.chunk)
            self._run_native(x[n0:n1], out[n0:n1], workspace)

    def _run_native(self, x, out, workspace) -> None:
        """Both transforms as device kernels (no padded copy, bias and activation fused into the
        output transform) around the 16 batched GEMMs."""
        spec = self.spec
        th, tw = self.tiles(spec)
        tiles = x.shape[0] * th * tw
        v = workspace[: 16 * tiles * spec.c].reshape(16, tiles, spec.c)
        prod = workspace[self.region : self.region + 16 * tiles * spec.k]
        prod = prod.reshape(16, tiles, spec.k)
        self.backend.winograd_f2x2_input(x, v, spec)
        self.xp.matmul(v, self.u, out=prod)
        self.backend.winograd_f2x2_output(prod, self.bias, out, spec)
