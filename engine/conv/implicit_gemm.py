"""Direct NHWC convolution as an implicit GEMM (cuDNN's IMPLICIT_GEMM), compiled with numba.

The GEMM of im2col + GEMM, with the im2col rows read in place from the input inside the inner
loop: no gather pass and no separate bias/activation pass. The register tile (output pixels x
output channels, ``simd.tile_shape``) is chosen by the layer's channel count and the CPU's
vector registers. Any kernel size,
stride, dilation and padding; single-group convolutions only (grouped ones stay on the GEMM
algorithms). The batch (or, below one image per core, the output rows) is split across the
engine's worker threads; the kernel releases the GIL.
"""

from __future__ import annotations

import numpy as np

from engine import jit
from engine.activations import apply_activation
from engine.conv.base import ConvAlgorithm
from engine.conv.microkernel import conv_source, epilogue_bounds, map_source
from engine.conv.simd import MAX_PIXELS, tile_shape, vector_shape
from engine.conv.spec import ConvSpec, Epilogue
from engine.lanes import shares
from engine.threads import run_in_threads


def conv_kernel(pixels: int, vectors: int):
    """The compiled kernel for one register tile (compiled once, then from the disk cache)."""
    return jit.load_source(f"conv_p{pixels}_v{vectors}", conv_source(pixels, vectors)).conv


def blocked_weights(weight: np.ndarray, kb: int) -> np.ndarray:
    """(K, C, R, S) -> flat (K/kb, R, S, C, kb), K zero-padded to a multiple of kb."""
    k, c, r, s = weight.shape
    blocks = -(-k // kb)
    padded = np.zeros((blocks * kb, c, r, s), np.float32)
    padded[:k] = weight
    return np.ascontiguousarray(padded.reshape(blocks, kb, c, r, s).transpose(0, 3, 4, 2, 1))


def split_work(spec: ConvSpec) -> list[tuple[int, int, int, int]]:
    """(n0, n1, oh0, oh1) per core: images when there are enough, else bands of rows."""
    if spec.n >= spec.cores:
        return [(a, b, 0, spec.out_h) for a, b in shares(spec.n, spec.cores)]
    return [(0, spec.n, a, b) for a, b in shares(spec.out_h, spec.cores)]


class ImplicitGemm(ConvAlgorithm):
    """Single-group convolutions of any shape on the CPU, when numba is installed."""

    name = "implicit_gemm"
    devices = ("cpu",)

    @classmethod
    def applicable(cls, spec: ConvSpec) -> bool:
        return spec.groups == 1 and spec.layout == "NHWC" and jit.available()

    @classmethod
    def workspace_elems(cls, spec: ConvSpec) -> int:
        ph, pw = spec.padded_hw
        return spec.n * ph * pw * spec.c if spec.has_padding else 0

    @classmethod
    def tile(cls, spec: ConvSpec) -> tuple[int, int]:
        """(pixels, vectors of output channels) of the register tile."""
        return tile_shape(spec.k)

    def __init__(self, spec, weight, bias, backend):
        super().__init__(spec, weight, bias, backend)
        self.pixels, vectors = self.tile(spec)
        self.kb = vectors * vector_shape()[0]
        self.kernel = self._kernel(vectors)
        layout = f"implicit_gemm_k{self.kb}"
        self.weights = self.shared(layout, weight, lambda: blocked_weights(weight, self.kb))
        blocks = self.weights.shape[0]
        self.bias_padded = np.zeros(blocks * self.kb, np.float32)
        self.bias_padded[: spec.k] = np.asarray(self.bias)
        bounds = epilogue_bounds(spec.epilogue)
        self.after = bounds is None  # an activation the kernel does not fuse runs afterwards
        self.bounds = tuple(np.float32(v) for v in (bounds or epilogue_bounds(Epilogue())))
        ph, pw = spec.padded_hw
        self.parts = self._split(spec)
        self.geometry = [self._geometry(ph, pw, blocks, part) for part in self.parts]

    def _kernel(self, vectors: int):
        return conv_kernel(self.pixels, vectors)

    def _split(self, spec: ConvSpec) -> list[tuple[int, int, int, int]]:
        return split_work(spec)

    def _geometry(self, ph, pw, blocks, part, k0: int = 0) -> np.ndarray:
        """The kernel's PARAMS and PAD_PARAMS; ``k0``: the first channel of a share."""
        s = self.spec
        n0, n1, oh0, oh1 = part
        return np.array([ph, pw, s.c, s.out_h, s.out_w, s.k, s.r, s.s, *s.strides,
                         *s.dilations, n0, n1, oh0, oh1, blocks, s.k - k0, s.pads[0], s.h,
                         s.h, s.w, s.pads[0], s.pads[1], s.has_padding], np.int64)  # fmt: skip

    def __call__(self, x, out, workspace) -> None:
        splits = len(self.parts) > 1 or self._channel_shares(2) is not None
        if splits and self.run_in_lanes(x, out, workspace):
            return
        source = self._source(x, workspace)  # (each call pads the rows it reads)
        calls = [(x, source, out, part, g) for part, g in zip(self.parts, self.geometry)]
        run_in_threads(self._part, calls)

    def _source(self, x, workspace):
        if not self.spec.has_padding:
            return x
        ph, pw = self.spec.padded_hw
        return workspace[: self.spec.n * ph * pw * self.spec.c]

    def compiled_call(self, x, out, workspace):
        if len(self.parts) != 1 or self.after:
            return None
        return self.kernel, self._args(x, self._source(x, workspace), out, self.geometry[0])

    def lane_phases(self, x, out, workspace, lanes):
        if self.after or len(self.parts) > lanes:
            return None
        source = self._source(x, workspace)
        blocks = self._channel_shares(lanes)
        if blocks is not None:
            convs = [self._channel_call(x, source, out, b0, b1) for b0, b1 in blocks]
        elif len(self.parts) == 1:
            return super().lane_phases(x, out, workspace, lanes)
        else:
            convs = [(self.kernel, self._args(x, source, out, g)) for g in self.geometry]
        return [convs]  # (each call pads the rows it reads)

    def _channel_shares(self, lanes: int) -> list[tuple[int, int]] | None:
        """Blocks of output channels per lane where the layer's weights outweigh its input
        (the deep layers of a net on a small map, batch 1: ResNet-18's 512-channel 3x3 convs
        hold 9.4 MB of weights for a 2x2 or 7x7 output), so that each lane reads only its
        channels' weights instead of all of them for its rows; None to split rows."""
        spec, blocks = self.spec, self.weights.shape[0]
        if blocks < lanes or spec.k * spec.r * spec.s <= spec.n * spec.h * spec.w:
            return None
        return shares(blocks, lanes)

    def _channel_call(self, x, source, out, b0: int, b1: int) -> tuple:
        """(kernel, arguments) for output channel blocks b0..b1 of every row: the weights,
        bias and output passed from the share's first channel on (the output's row stride
        stays K)."""
        spec = self.spec
        part = (0, spec.n, 0, spec.out_h)
        geometry = self._geometry(*spec.padded_hw, b1 - b0, part, b0 * self.kb)
        per_block = spec.r * spec.s * spec.c * self.kb
        return self.kernel, (x.reshape(-1), source.reshape(-1),
                             self.weights.reshape(-1)[b0 * per_block :],
                             self.bias_padded[b0 * self.kb :], out.reshape(-1)[b0 * self.kb :],
                             geometry, *self.bounds)  # fmt: skip

    def _args(self, x, source, out, geometry) -> tuple:
        return (x.reshape(-1), source.reshape(-1), self.weights.reshape(-1), self.bias_padded,
                out.reshape(-1), geometry, *self.bounds)  # fmt: skip

    def _part(self, x, source, out, part, geometry) -> None:
        n0, n1, oh0, oh1 = part
        spec = self.spec
        self.kernel(*self._args(x, source, out, geometry))
        if self.after:
            e = spec.epilogue
            apply_activation(np, out[n0:n1, oh0:oh1], e.kind, e.alpha, e.beta)


class ImplicitGemmNarrow(ImplicitGemm):
    """``implicit_gemm`` with a register tile of two vectors of output channels (32 with
    AVX-512) and up to 14 pixels, offered where the default tile is wider. Its weight blocks are
    half the size; on 7-wide outputs a row is one tile (the default's 6 pixels leave a
    1-pixel tail). Measured on a 2-core Emerald Rapids VM, batch 1, L2 evicted: ResNet-18's
    512x7x7 3x3 conv 1.72 -> 1.33 ms, its 256->512 stride-2 conv 0.83 -> 0.55 ms; 4x4 and
    2x2 outputs equal or 4% slower: the tuner decides."""

    name = "implicit_gemm_narrow"
    VECTORS = 2

    @classmethod
    def applicable(cls, spec: ConvSpec) -> bool:
        return super().applicable(spec) and tile_shape(spec.k)[1] > cls.VECTORS

    @classmethod
    def tile(cls, spec: ConvSpec) -> tuple[int, int]:
        # 7 or 14 pixels: two kernels cover every row width (fewer compiles); 7 for rows
        # narrower than 14, so that a 7-wide row is one tile
        return (7 if spec.out_w < 14 else 14), cls.VECTORS


class ImplicitGemmMap(ImplicitGemm):
    """``implicit_gemm`` with each image's whole output map as one register tile (maps of at
    most MAX_PIXELS pixels over more than one row): a block of weights is read once per image,
    not once per output row. Work is split by images, or (one image) by output channels."""

    name = "implicit_gemm_map"

    @classmethod
    def applicable(cls, spec: ConvSpec) -> bool:
        pixels = spec.out_h * spec.out_w
        return super().applicable(spec) and spec.out_h > 1 and pixels <= MAX_PIXELS

    @classmethod
    def tile(cls, spec: ConvSpec) -> tuple[int, int]:
        pixels = spec.out_h * spec.out_w
        _, registers = vector_shape()
        vectors = tile_shape(spec.k)[1]
        while vectors > 1 and pixels * vectors + vectors + 1 > registers:
            vectors //= 2
        return pixels, vectors

    def _kernel(self, vectors: int):
        s = self.spec
        name = f"conv_map{s.out_h}x{s.out_w}_v{vectors}"
        return jit.load_source(name, map_source(s.out_h, s.out_w, vectors)).conv

    def _split(self, spec: ConvSpec) -> list[tuple[int, int, int, int]]:
        return [(a, b, 0, spec.out_h) for a, b in shares(spec.n, min(spec.n, spec.cores))]
