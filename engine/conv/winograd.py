"""Winograd minimal filtering F(m x m, 3 x 3) (Lavin & Gray, 2015), shared by the F(2x2) and
F(4x4) algorithms.

Each (m+2)^2 input tile d becomes V = B^T d B, each filter g becomes U = G g G^T, and each output
tile is Y = A^T [U . V] A. The element-wise product summed over channels is, for every one of
the (m+2)^2 tile positions, a GEMM (tiles x C) x (C x K); the batch is folded into the tiles.
Both transforms are applied as one GEMM each with the Kronecker product of the 1-D transform
(kron(B^T, B^T) on the flattened tile): the BLAS runs them on every core, which NumPy's
element-wise ops would not.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from engine.arrays import pad_into
from engine.conv.base import ConvAlgorithm
from engine.conv.spec import ConvSpec

#: activations applied while the output tiles are copied into place (others run afterwards)
FUSED = ("none", "relu")


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


class Winograd3x3(ConvAlgorithm):
    """F(m x m, 3 x 3) for 3x3 stride-1 dilation-1 single-group convolutions, any padding."""

    m: ClassVar[int]
    BT: ClassVar[np.ndarray]  # (m+2, m+2) input transform
    G: ClassVar[np.ndarray]  # (m+2, 3) filter transform
    AT: ClassVar[np.ndarray]  # (m, m+2) output transform
    #: float32 elements per scratch region; images are processed in chunks that fit it.
    #: 1 MiB, about one core's L2: each phase then reads the previous one's output from cache
    #: (10-25% faster than 16 MiB chunks on the CIFAR-style layers, measured on a 2-core EPYC)
    region_limit_elems: ClassVar[int] = 1 << 18
    #: ... but at least this many tiles per chunk, or the batched GEMMs get too short
    min_tiles_per_chunk: ClassVar[int] = 128

    @classmethod
    def weight_bytes(cls, spec: ConvSpec) -> int:
        return 4 * spec.k * spec.c * (cls.m + 2) ** 2  # U: one (m+2)^2 tile per filter

    @classmethod
    def applicable(cls, spec: ConvSpec) -> bool:
        return (
            (spec.r, spec.s) == (3, 3)
            and spec.strides == (1, 1)
            and spec.dilations == (1, 1)
            and spec.groups == 1
        )

    @classmethod
    def tiles(cls, spec: ConvSpec) -> tuple[int, int]:
        return ceil_div(spec.out_h, cls.m), ceil_div(spec.out_w, cls.m)

    @classmethod
    def region_elems(cls, spec: ConvSpec, images: int) -> int:
        """Scratch for ``images`` images: the largest of the buffers that take turns in it."""
        m, a = cls.m, cls.m + 2
        th, tw = cls.tiles(spec)
        tiles = images * th * tw
        padded = images * (th * m + 2) * (tw * m + 2) * spec.c
        return max(padded, a * a * tiles * max(spec.c, spec.k))

    @classmethod
    def images_per_chunk(cls, spec: ConvSpec) -> int:
        th, tw = cls.tiles(spec)
        by_size = cls.region_limit_elems // cls.region_elems(spec, 1)
        by_tiles = ceil_div(cls.min_tiles_per_chunk, th * tw)
        return max(1, min(spec.n, max(by_size, by_tiles)))

    @classmethod
    def workspace_elems(cls, spec: ConvSpec) -> int:
        return 2 * cls.region_elems(spec, cls.images_per_chunk(spec))

    def __init__(self, spec, weight, bias, backend):
        super().__init__(spec, weight, bias, backend)
        layout = f"winograd_f{self.m}"
        self.u = self.shared(layout, weight, lambda: backend.asarray(self.transform(weight)))
        self.bb = backend.asarray(np.kron(self.BT, self.BT).astype(np.float32))
        aa = np.kron(self.AT, self.AT)
        self.aa = backend.asarray(aa.astype(np.float32))
        # a tile position that A^T . A spreads with weight 1 onto every output: the bias added
        # there (one (tiles, K) slab) reaches every output pixel through the output transform
        self.bias_position = int(np.flatnonzero((aa == 1).all(axis=0))[0])
        self.chunk = self.images_per_chunk(spec)
        self.region = self.region_elems(spec, self.chunk)

    def transform(self, weight: np.ndarray) -> np.ndarray:
        return filter_tiles(self.G, weight)

    def __call__(self, x, out, workspace) -> None:
        for n0 in range(0, self.spec.n, self.chunk):
            n1 = min(self.spec.n, n0 + self.chunk)
            self._run(x[n0:n1], out[n0:n1], workspace)
        if self.spec.epilogue.kind not in FUSED:
            self.backend.epilogue(out.reshape(-1, self.spec.k), None, self.spec.epilogue)

    def _run(self, x, out, workspace) -> None:
        """One chunk of images; two workspace regions take turns as source and destination."""
        xp, spec, m, a = self.xp, self.spec, self.m, self.m + 2
        one, two = workspace[: self.region], workspace[self.region : 2 * self.region]
        images = x.shape[0]
        th, tw = self.tiles(spec)
        tiles, c, k = images * th * tw, spec.c, spec.k
        padded = one[: images * (th * m + 2) * (tw * m + 2) * c]
        padded = padded.reshape(images, th * m + 2, tw * m + 2, c)
        top, left = spec.pads[0], spec.pads[1]
        pad_into(padded, x, (top, left, th * m + 2 - spec.h - top, tw * m + 2 - spec.w - left))
        sn, sh, sw, sc = padded.strides
        windows = xp.lib.stride_tricks.as_strided(
            padded, (a, a, images, th, tw, c), (sh, sw, sn, sh * m, sw * m, sc)
        )
        d = two[: a * a * tiles * c].reshape(a, a, images, th, tw, c)
        d[...] = windows
        v = one[: a * a * tiles * c].reshape(a * a, tiles * c)
        xp.matmul(self.bb, d.reshape(a * a, tiles * c), out=v)
        prod = two[: a * a * tiles * k].reshape(a * a, tiles, k)
        xp.matmul(v.reshape(a * a, tiles, c), self.u, out=prod)
        prod[self.bias_position] += self.bias
        y = one[: m * m * tiles * k].reshape(m * m, tiles * k)
        xp.matmul(self.aa, prod.reshape(a * a, tiles * k), out=y)
        y = y.reshape(m, m, images, th, tw, k).transpose(2, 3, 0, 4, 1, 5)
        if (th * m, tw * m) == (spec.out_h, spec.out_w):
            self._untile(y, out.reshape(images, th, m, tw, m, k))
            return
        full = two[: images * th * m * tw * m * k].reshape(images, th, m, tw, m, k)
        self._untile(y, full)
        out[...] = full.reshape(images, th * m, tw * m, k)[:, : spec.out_h, : spec.out_w]

    def _untile(self, y, target) -> None:
        """Copy the output tiles into place, applying a ReLU on the way (one pass, not two)."""
        if self.spec.epilogue.kind == "relu":
            self.xp.maximum(y, 0, out=target)
        else:
            target[...] = y


def filter_tiles(g: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """G w G^T for every (k, c): the (a*a, C, K) filter tiles, computed in float64."""
    g = np.asarray(g, np.float64)
    a, (k, c) = g.shape[0], weight.shape[:2]
    u = np.einsum("ir,kcrs,js->ijck", g, np.asarray(weight, np.float64), g)
    return u.reshape(a * a, c, k).astype(np.float32)
