"""Source of the compiled Winograd F(m x m, 3 x 3) driver: transforms, batched GEMMs, epilogue.

One compiled call runs a thread's range of tiles in chunks small enough that a chunk's
transformed input (a*a, T, C) and products (a*a, T, K) stay in the core's L2 (a = m + 2): the
input transform of the chunk (B^T d B), the a*a GEMMs with the register-tiled ``conv_rows``
micro-kernel (a 1x1 conv over the chunk's tiles), then the output transform (A^T M A) with bias
and the fused activation applied before each pixel is stored. Both transforms are explicit-vector
intrinsics (``winograd_codegen``), one vector of channels per call, the matrices written in as
constants.
"""

from __future__ import annotations

import numpy as np

from engine.conv.microkernel import FLOAT32_MAX, HEADER, PAD_PARAMS, PAD_SOURCE, rows_source

PARAMS = ("HP", "WP", "C", "OH", "OW", "K", "TH", "TW", "T0", "T1", "CHUNK", "KBLOCKS")

SIGNATURE = (
    "void(float32[::1], float32[::1], float32[::1], float32[::1], float32[::1], float32[::1],"
    " float32[::1], int64[::1], float32, float32, float32)"
)


def _tile_position(m: int) -> list[str]:
    """n and the tile's first row and column, ``m`` pixels a tile."""
    return [
        "g = c0 + t",
        "n = g // tiles_per_image",
        "rem = g - n * tiles_per_image",
        "ti = rem // TW",
        "tj = rem - ti * TW",
        f"row0 = {m} * ti",
        f"col0 = {m} * tj",
    ]


def _input_transform(m: int) -> list[str]:
    """V[i*a + j, t, :] = (B^T d B)[i][j] for each of the chunk's tiles."""
    return [
        "for t in range(T):",
        *["    " + line for line in _tile_position(m)],
        "    base = ((n * HP + row0) * WP + col0) * C",
        "    for c in range(0, C, LANES):",
        "        INPUT_TILE(xp, base, WP * C, C, v, t * C, VS, c, C - c)",
    ]


def _output_transform(m: int, tile: str) -> list[str]:
    """out[tile pixels] = activation((A^T M A) + bias) for each of the chunk's tiles by the
    intrinsic ``tile``, which may max-pool them (``m`` is then the pooled tile's side; OH, OW
    the pooled output's)."""
    return [
        "for t in range(T):",
        *["    " + line for line in _tile_position(m)],
        "    ob = ((n * OH + row0) * OW + col0) * K",
        f"    rows = min({m}, OH - row0)",
        f"    cols = min({m}, OW - col0)",
        "    for k in range(0, K, LANES):",
        f"        {tile}(m, t * K, MS, bias, k, K - k, out, ob, OW * K, K, rows, cols, lo,"
        " hi, slope)",
    ]


def spaced(floats: int) -> int:
    """``floats`` rounded up to an odd number of 64-byte cache lines: the stride between the
    a*a positions of a chunk's scratch (``SPACED`` in the kernel). At an even number of lines
    the positions share few L1 sets (32 tiles of 32 channels lie 4 KiB apart: all 36 in one set
    of 12 ways) and stores alias the loads 4 KiB away: CIFAR's 32-channel F(4x4) conv ran
    10-20% slower."""
    return ((floats + 15) // 16 | 1) * 16


SPACED = "(({} + 15) // 16 | 1) * 16"  # ``spaced`` in the kernel's source


def _constant(matrix: np.ndarray) -> str:
    return repr(tuple(tuple(float(v) for v in row) for row in matrix))


def winograd_source(bt: np.ndarray, at: np.ndarray, pixels: int, vectors: int) -> str:
    """A module with ``winograd(x, xp, u, bias, out, v, m, geometry, lo, hi, slope)``; with
    POOL = 2 (the last entry of ``geometry``, after ``PAD_PARAMS``) a 2 x 2 max-pool at stride
    2 follows the activation in the output transform, and out (N, OH, OW, K) is the pooled map
    (one kernel either way: a second would double the compile time).

    x: the NHWC input (N, H, W, C); xp: x zero-padded to (N, HP, WP, C) with HP = m TH + 2,
    WP = m TW + 2, the rows tiles T0..T1 read written here when PAD, else already; u: transformed
    filters (a*a, KBLOCKS, C, KB); bias (K,); out (N, OH, OW, K); v and m: a*a blocks of
    (CHUNK, C) and of (CHUNK, K) scratch, ``spaced`` apart; tiles T0..T1 of the flattened
    (N, TH, TW) tile grid. The batched GEMMs store their sums as they are (``rows_source``
    without the epilogue)."""
    a, m = bt.shape[0], at.shape[0]
    unpack = [f"    {', '.join(PARAMS + PAD_PARAMS)}, POOL = geometry"]
    gemm = ("conv_rows(v[e * VS :], u[e * ustride :], bias, m[e * MS :], 1, T,"
            " C, 1, T, K, 1, 1, 1, 1, 1, 1, 0, 1, 0, 1, KBLOCKS, K, 0, 1, -BIG, BIG,"
            " Z)")  # fmt: skip
    lines = [
        HEADER,
        PAD_SOURCE,
        rows_source(pixels, vectors, epilogue=False),  # the GEMMs store their sums as they are
        "LANES = simd.vector_shape()[0]",
        f"INPUT_TILE = simd.winograd_input_tile({_constant(bt)})",
        f"OUTPUT_TILE = simd.winograd_output_tile({_constant(at)}, 1)",
        f"POOLED_TILE = simd.winograd_output_tile({_constant(at)}, 2)",
        f"BIG = np.float32({FLOAT32_MAX!r})",
        "",
        f'@numba.njit("{SIGNATURE}", **JIT)',
        "def winograd(x, xp, u, bias, out, v, m, geometry, lo, hi, slope):",
        *unpack,
        "    Z = np.float32(0.0)",
        "    tiles_per_image = TH * TW",
        "    if PAD and T1 > T0:  # the padded rows of tile rows T0 // TW .. (T1 - 1) // TW",
        "        first, last = T0 // TW, (T1 - 1) // TW  # of the (N * TH) tile rows",
        f"        r0 = first // TH * HP + {m} * (first % TH)",
        f"        r1 = last // TH * HP + {m} * (last % TH) + {m + 2}",
        "        pad_images(x, xp, 0, 1, r0, r1, H, W, C, HP, WP, TOP, LEFT)",
        "    ustride = KBLOCKS * C * KB",
        f"    VS, MS = {SPACED.format('CHUNK * C')}, {SPACED.format('CHUNK * K')}",
        "    for c0 in range(T0, T1, CHUNK):",
        "        T = min(CHUNK, T1 - c0)",
        *["        " + line for line in _input_transform(m)],
        f"        for e in range({a * a}):",
        f"            {gemm}",
        "        if POOL > 1:",
        *["            " + line for line in _output_transform(m // 2, "POOLED_TILE")],
        "        else:",
        *["            " + line for line in _output_transform(m, "OUTPUT_TILE")],
        "",
    ]
    return "\n".join(lines)
