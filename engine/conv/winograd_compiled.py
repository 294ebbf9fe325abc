"""Winograd F(2x2, 3x3) and F(4x4, 3x3) compiled with numba: one call per thread runs the
transforms, the batched GEMMs and the fused epilogue chunk by chunk (``winograd_source``)."""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from engine import jit
from engine.activations import apply_activation
from engine.conv.base import ConvAlgorithm
from engine.conv.microkernel import epilogue_bounds
from engine.conv.simd import tile_shape, vector_shape
from engine.conv.spec import ConvSpec, Epilogue
from engine.conv.winograd import Winograd3x3, ceil_div, filter_tiles
from engine.conv.winograd_f2x2_3x3 import WinogradF2x2
from engine.conv.winograd_f4x4_3x3 import WinogradF4x4
from engine.conv.winograd_source import spaced, winograd_source
from engine.threads import run_in_threads


def winograd_kernel(base: type[Winograd3x3], pixels: int, vectors: int):
    """The compiled driver of ``base``'s transforms for one GEMM register tile."""
    source = winograd_source(base.BT, base.AT, pixels, vectors)
    return jit.load_source(f"winograd_f{base.m}_p{pixels}_v{vectors}", source).winograd


class WinogradCompiled(ConvAlgorithm):
    """``base``'s convolutions (3x3, stride 1, one group, any padding) on the CPU, when numba
    is installed; subclasses set ``base``."""

    base: ClassVar[type[Winograd3x3]]
    devices = ("cpu",)
    #: bytes of one chunk's (a*a, T, C) + (a*a, T, K) scratch: about one core's L2
    chunk_bytes: ClassVar[int] = 1 << 19

    @classmethod
    def applicable(cls, spec: ConvSpec) -> bool:
        return cls.base.applicable(spec) and spec.layout == "NHWC" and jit.available()

    @classmethod
    def weight_bytes(cls, spec: ConvSpec) -> int:
        return cls.base.weight_bytes(spec)

    @classmethod
    def positions(cls) -> int:
        return (cls.base.m + 2) ** 2

    @classmethod
    def tiles(cls, spec: ConvSpec) -> tuple[int, int]:
        return cls.base.tiles(spec)

    @classmethod
    def chunk(cls, spec: ConvSpec) -> int:
        """Tiles per chunk: a multiple of the GEMM's pixel tile within chunk_bytes."""
        pixels = tile_shape(spec.k)[0]
        tiles = cls.chunk_bytes // (cls.positions() * 4 * (spec.c + spec.k))
        return max(pixels, min(240, tiles) // pixels * pixels)

    @classmethod
    def parts(cls, spec: ConvSpec) -> list[tuple[int, int]]:
        """[t0, t1) of the flattened (N, TH, TW) tile grid per core, whole images when the
        batch has one per core (each call pads the input rows its tiles read)."""
        th, tw = cls.tiles(spec)
        per_image = th * tw
        cores = spec.cores
        if spec.n >= cores:
            bounds = [spec.n * i // cores * per_image for i in range(cores + 1)]
        else:
            total = spec.n * per_image
            bounds = [total * i // cores for i in range(cores + 1)]
        return [(a, b) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]

    @classmethod
    def padded_shape(cls, spec: ConvSpec) -> tuple[int, int, int, int]:
        th, tw = cls.tiles(spec)
        return spec.n, cls.base.m * th + 2, cls.base.m * tw + 2, spec.c

    @classmethod
    def scratch_elems(cls, spec: ConvSpec) -> int:
        return cls.positions() * (
            spaced(cls.chunk(spec) * spec.c) + spaced(cls.chunk(spec) * spec.k)
        )

    @classmethod
    def workspace_elems(cls, spec: ConvSpec) -> int:
        scratch = cls.scratch_elems(spec)
        return int(np.prod(cls.padded_shape(spec))) + len(cls.parts(spec)) * scratch

    def __init__(self, spec, weight, bias, backend):
        super().__init__(spec, weight, bias, backend)
        self.pixels, vectors = tile_shape(spec.k)
        self.kb = vectors * vector_shape()[0]
        self.pool = 1
        self.kernel = winograd_kernel(self.base, self.pixels, vectors)
        layout = f"winograd_f{self.base.m}_k{self.kb}"
        self.u = self.shared(layout, weight, lambda: self.blocked(weight))
        bounds = epilogue_bounds(spec.epilogue)
        self.after = bounds is None
        self.bounds = tuple(np.float32(v) for v in (bounds or epilogue_bounds(Epilogue())))
        self.geometry = [self._geometry(part) for part in self.parts(spec)]

    def fuse_pool(self, size: int) -> bool:
        """2 x 2 pools (the kernel's POOL), where the activation is fused too (one applied
        afterwards would come after the max)."""
        if self.after or size != 2:
            return False
        self.pool = size
        self.geometry = [self._geometry(part) for part in self.parts(self.spec)]
        return True

    def blocked(self, weight) -> np.ndarray:
        """G g G^T as (a*a, K/kb, C, kb), K zero-padded."""
        u = filter_tiles(self.base.G, weight)  # (a*a, C, K)
        blocks, a2 = ceil_div(self.spec.k, self.kb), self.positions()
        padded = np.zeros((a2, self.spec.c, blocks * self.kb), np.float32)
        padded[:, :, : self.spec.k] = u
        shape = (a2, self.spec.c, blocks, self.kb)
        return np.ascontiguousarray(padded.reshape(shape).transpose(0, 2, 1, 3))

    def _geometry(self, part) -> np.ndarray:
        """The kernel's PARAMS, PAD_PARAMS (PAD: each call pads the rows it reads) and POOL."""
        s = self.spec
        _, hp, wp, _ = self.padded_shape(s)
        th, tw = self.tiles(s)
        oh, ow = s.out_h // self.pool, s.out_w // self.pool
        return np.array([hp, wp, s.c, oh, ow, s.k, th, tw, *part, self.chunk(s),
                         self.u.shape[1], s.h, s.w, s.pads[0], s.pads[1], 1, self.pool],
                        np.int64)  # fmt: skip

    def __call__(self, x, out, workspace) -> None:
        spec = self.spec
        if len(self.geometry) > 1 and self.run_in_lanes(x, out, workspace):
            return
        padded, scratches = self._split(workspace)
        calls = [(x, padded, out, g, scratch) for g, scratch in zip(self.geometry, scratches)]
        run_in_threads(self._part, calls)
        if self.after and spec.n < spec.cores:  # (whole images: each thread did its own)
            self._activate(out)

    def _split(self, workspace):
        """The workspace as the padded input (N, HP, WP, C) and one scratch per part."""
        shape = self.padded_shape(self.spec)
        padded = workspace[: int(np.prod(shape))]
        size, rest = self.scratch_elems(self.spec), workspace[padded.size :]
        scratches = [rest[i * size : (i + 1) * size] for i in range(len(self.geometry))]
        return padded.reshape(shape), scratches

    def _activate(self, out) -> None:
        e = self.spec.epilogue
        apply_activation(np, out, e.kind, e.alpha, e.beta)

    def compiled_call(self, x, out, workspace):
        if len(self.geometry) != 1 or self.after:
            return None
        padded, scratches = self._split(workspace)
        return self.kernel, self._args(x, padded, out, self.geometry[0], scratches[0])

    def lane_phases(self, x, out, workspace, lanes):
        if self.after or len(self.geometry) > lanes:
            return None
        padded, scratches = self._split(workspace)
        return [[(self.kernel, self._args(x, padded, out, g, scratch))
                 for g, scratch in zip(self.geometry, scratches)]]  # fmt: skip

    def _args(self, x, padded, out, geometry, scratch) -> tuple:
        v = scratch[: self.positions() * spaced(self.chunk(self.spec) * self.spec.c)]
        m = scratch[v.size :]
        return (x.reshape(-1), padded.reshape(-1), self.u.reshape(-1), self.bias,
                out.reshape(-1), v, m, geometry, *self.bounds)  # fmt: skip

    def _part(self, x, padded, out, geometry, scratch) -> None:
        spec = self.spec
        th, tw = self.tiles(spec)
        n0, n1 = geometry[8] // (th * tw), geometry[9] // (th * tw)
        self.kernel(*self._args(x, padded, out, geometry, scratch))
        if self.after and spec.n >= spec.cores:
            self._activate(out[n0:n1])


class WinogradF2x2Compiled(WinogradCompiled):
    name = "winograd_f2x2_compiled"
    base = WinogradF2x2


class WinogradF4x4Compiled(WinogradCompiled):
    name = "winograd_f4x4_compiled"
    base = WinogradF4x4
    tolerance = WinogradF4x4.tolerance
