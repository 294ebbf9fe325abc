"""The compiled kernels' register tile, written as explicit LLVM vector code (a numba intrinsic).

``conv_tile(pixels, vectors)`` is an intrinsic that computes ``pixels`` output pixels x
``vectors * LANES`` output channels of a direct convolution: ``pixels * vectors`` vector
accumulators, and per input channel one broadcast per pixel, ``vectors`` weight loads and
``pixels * vectors`` fused multiply-adds, all in registers. Bias and the activation
(``min(max(y, lo), hi) + slope * min(y, 0)``, see ``microkernel.epilogue_bounds``) are applied
before the tile is stored; a block of channels past K is stored with a masked store.

Why not scalar Python code for numba to vectorise: LLVM's SLP vectoriser packed the same tile
into 256-bit registers at best and unpredictably (37-93 GFLOP/s on one AVX-512 core, minutes of
compilation for the larger tiles); written as vectors, the tile runs at 140-230 GFLOP/s and
compiles in under a second.

LANES is 16 floats (512-bit registers, 32 of them) on CPUs with AVX-512F, else 8 (AVX2, 16
registers); ``tile_shape`` sizes the tile to the register file.
"""

from __future__ import annotations

import functools

import numpy as np

from engine import jit

#: the tile's widest block of output channels, in vectors
MAX_VECTORS = 4
#: the most pixels in one tile (beyond this the broadcasts stop paying for themselves)
MAX_PIXELS = 14


@functools.cache
def vector_shape() -> tuple[int, int]:
    """(floats per vector register, vector registers) of the host CPU."""
    features = jit.compiler().settings["cpu_features"]
    return (16, 32) if "+avx512f" in features.split(",") else (8, 16)


def tile_shape(k: int) -> tuple[int, int]:
    """(pixels, vectors) of the register tile for a layer with ``k`` output channels: as many
    channels as the layer has, up to MAX_VECTORS, then as many pixels as the registers hold
    (one more for the weights of each vector, one for the broadcast)."""
    lanes, registers = vector_shape()
    vectors = max(1, min(-(-k // lanes), MAX_VECTORS if lanes == 16 else 2))
    pixels = min(MAX_PIXELS, (registers - vectors - 1) // vectors)
    return pixels, vectors


@functools.cache
def conv_tile(pixels: int, vectors: int, width: int | None = None, epilogue: bool = True):
    """The intrinsic ``tile(x, xb, xstep, rstride, sstride, R, S, C, w, wb, bias, k0, nk, out,
    ob, ostep, lo, hi, slope, xrow, orow)``.

    The tile's pixels lie in rows of ``width`` (default: one row of ``pixels``); pixel p = i *
    width + j's input channel c at kernel tap (r, s) is ``x[xb + i*xrow + j*xstep + r*rstride +
    s*sstride + c]``; the weights of that tap and channel are ``w[wb + ((r*S + s)*C + c)*KB
    ...]`` (KB = vectors * LANES consecutive output channels); pixel p's outputs go to ``out[ob
    + i*orow + j*ostep + k0 ...]``, only the first ``nk`` of them when ``nk < KB``; ``bias[k0
    ...]`` must hold KB values. Without ``epilogue`` the sums are stored as they are (bias,
    lo, hi and slope unread): Winograd's batched GEMMs."""
    from engine.conv.simd_codegen import make_conv_tile

    lanes, _ = vector_shape()
    return make_conv_tile(pixels, vectors, lanes, width or pixels, epilogue)


def _matrix(rows: tuple) -> np.ndarray:
    return np.array(rows, dtype=np.float64)


@functools.cache
def winograd_input_tile(bt: tuple):
    """The intrinsic applying the input transform ``bt`` (rows of B^T) to one tile and one
    vector of channels (``engine.conv.winograd_codegen.input_tile``)."""
    from engine.conv.winograd_codegen import input_tile

    return input_tile(_matrix(bt), vector_shape()[0])


@functools.cache
def winograd_output_tile(at: tuple, pool: int = 1):
    """The intrinsic applying the output transform ``at`` (rows of A^T), bias, activation and
    a ``pool`` x ``pool`` max-pool (1: none) to one tile and one vector of channels
    (``winograd_codegen.output_tile``)."""
    from engine.conv.winograd_codegen import output_tile

    return output_tile(_matrix(at), vector_shape()[0], pool)


#: output pixels per depthwise tile (one vector of channels each)
DEPTHWISE_PIXELS = 8


@functools.cache
def depthwise_tile(pixels: int):
    """The intrinsic computing ``pixels`` output pixels x one vector of channels of a depthwise
    conv (``engine.conv.simd_codegen.make_depthwise_tile``)."""
    from engine.conv.simd_codegen import make_depthwise_tile

    return make_depthwise_tile(pixels, vector_shape()[0])
