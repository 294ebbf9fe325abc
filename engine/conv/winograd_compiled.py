"""Winograd F(2x2, 3x3) compiled with numba: one call per thread runs transforms, the 16
batched GEMMs and the fused epilogue chunk by chunk (``winograd_source``)."""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from engine import jit
from engine.activations import apply_activation
from engine.backends.base import pad_into
from engine.conv.base import ConvAlgorithm
from engine.conv.implicit_gemm import tile_for
from engine.conv.microkernel import epilogue_bounds
from engine.conv.spec import ConvSpec, Epilogue
from engine.conv.winograd import ceil_div, filter_tiles
from engine.conv.winograd_f2x2_3x3 import WinogradF2x2
from engine.conv.winograd_source import winograd_source
from engine.threads import cpu_cores, run_in_threads


def winograd_kernel(pixels: int, kb: int):
    """The compiled driver for one GEMM register tile."""
    return jit.load_source(f"winograd_f2_p{pixels}_k{kb}", winograd_source(pixels, kb)).winograd


class WinogradF2x2Compiled(ConvAlgorithm):
    """3x3 stride-1 single-group convolutions, any padding, on the CPU when numba is installed."""

    name = "winograd_f2x2_compiled"
    devices = ("cpu",)
    #: bytes of one chunk's (16, T, C) + (16, T, K) scratch: about one core's L2
    chunk_bytes: ClassVar[int] = 1 << 19

    @classmethod
    def applicable(cls, spec: ConvSpec) -> bool:
        return WinogradF2x2.applicable(spec) and spec.layout == "NHWC" and jit.available()

    @classmethod
    def tiles(cls, spec: ConvSpec) -> tuple[int, int]:
        return ceil_div(spec.out_h, 2), ceil_div(spec.out_w, 2)

    @classmethod
    def chunk(cls, spec: ConvSpec) -> int:
        """Tiles per chunk: a multiple of 4 (the GEMM's pixel tile) within chunk_bytes."""
        tiles = cls.chunk_bytes // (16 * 4 * (spec.c + spec.k))
        return max(4, min(256, tiles // 4 * 4))

    @classmethod
    def parts(cls, spec: ConvSpec) -> list[tuple[int, int]]:
        """[t0, t1) of the flattened (N, TH, TW) tile grid per core, whole images when the
        batch has one per core (each thread then pads its own images)."""
        th, tw = cls.tiles(spec)
        per_image = th * tw
        cores = cpu_cores()
        if spec.n >= cores:
            bounds = [spec.n * i // cores * per_image for i in range(cores + 1)]
        else:
            total = spec.n * per_image
            bounds = [total * i // cores for i in range(cores + 1)]
        return [(a, b) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]

    @classmethod
    def padded_shape(cls, spec: ConvSpec) -> tuple[int, int, int, int]:
        th, tw = cls.tiles(spec)
        return spec.n, 2 * th + 2, 2 * tw + 2, spec.c

    @classmethod
    def workspace_elems(cls, spec: ConvSpec) -> int:
        scratch = 16 * cls.chunk(spec) * (spec.c + spec.k)
        return int(np.prod(cls.padded_shape(spec))) + len(cls.parts(spec)) * scratch

    def __init__(self, spec, weight, bias, backend):
        super().__init__(spec, weight, bias, backend)
        self.pixels, self.kb = tile_for(spec.k)
        self.kernel = winograd_kernel(self.pixels, self.kb)
        self.u = self.shared(f"winograd_f2_k{self.kb}", weight, lambda: self.blocked(weight))
        self.zero_bias = np.zeros(self.u.shape[1] * self.kb, np.float32)
        bounds = epilogue_bounds(spec.epilogue)
        self.after = bounds is None
        self.bounds = tuple(np.float32(v) for v in (bounds or epilogue_bounds(Epilogue())))
        self.geometry = [self._geometry(part) for part in self.parts(spec)]

    def blocked(self, weight) -> np.ndarray:
        """G g G^T as (16, K/kb, C, kb), K zero-padded."""
        u = filter_tiles(WinogradF2x2.G, weight)  # (16, C, K)
        blocks = ceil_div(self.spec.k, self.kb)
        padded = np.zeros((16, self.spec.c, blocks * self.kb), np.float32)
        padded[:, :, : self.spec.k] = u
        shape = (16, self.spec.c, blocks, self.kb)
        return np.ascontiguousarray(padded.reshape(shape).transpose(0, 2, 1, 3))

    def _geometry(self, part) -> np.ndarray:
        s = self.spec
        _, hp, wp, _ = self.padded_shape(s)
        th, tw = self.tiles(s)
        return np.array([hp, wp, s.c, s.out_h, s.out_w, s.k, th, tw, *part, self.chunk(s),
                         self.u.shape[1]], np.int64)  # fmt: skip

    def __call__(self, x, out, workspace) -> None:
        spec = self.spec
        shape = self.padded_shape(spec)
        padded = workspace[: int(np.prod(shape))].reshape(shape)
        scratch = 16 * self.chunk(spec) * (spec.c + spec.k)
        rest = workspace[padded.size :]
        if spec.n < cpu_cores():  # threads share images: pad them all first
            pad_into(padded, x, self._pads())
        calls = [(x, padded, out, g, rest[i * scratch : (i + 1) * scratch])
                 for i, g in enumerate(self.geometry)]  # fmt: skip
        run_in_threads(self._part, calls)
        if self.after and spec.n < cpu_cores():  # (whole images: each thread did its own)
            self._activate(out)

    def _activate(self, out) -> None:
        e = self.spec.epilogue
        apply_activation(np, out, e.kind, e.alpha, e.beta)

    def _pads(self) -> tuple[int, int, int, int]:
        spec = self.spec
        _, hp, wp, _ = self.padded_shape(spec)
        top, left = spec.pads[0], spec.pads[1]
        return top, left, hp - spec.h - top, wp - spec.w - left

    def _part(self, x, padded, out, geometry, scratch) -> None:
        spec = self.spec
        th, tw = self.tiles(spec)
        n0, n1 = geometry[8] // (th * tw), geometry[9] // (th * tw)
        whole_images = spec.n >= cpu_cores()
        if whole_images:
            pad_into(padded[n0:n1], x[n0:n1], self._pads())
        v = scratch[: 16 * self.chunk(spec) * spec.c]
        m = scratch[v.size :]
        self.kernel(padded.reshape(-1), self.u.reshape(-1), np.asarray(self.bias),
                    self.zero_bias, out.reshape(-1), v, m, geometry, *self.bounds)  # fmt: skip
        if self.after and whole_images:
            self._activate(out[n0:n1])
