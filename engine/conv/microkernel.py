"""Source of the compiled direct (implicit-GEMM) convolution kernel, generated per register tile.

The kernel walks the output rows in tiles of ``P`` output pixels x ``KB`` output channels; each
tile is the explicit-vector register tile of ``engine.conv.simd`` (``P * KB / LANES`` vector
accumulators, fused multiply-adds from registers), with a narrower tile for the end of a row. The
im2col rows are read in place from the (zero-padded) NHWC input: one contiguous run of C floats
per pixel and kernel tap, never copied. Bias and the activations ``epilogue_bounds`` knows are
applied before the tile is stored, branch-free as ``min(max(y, lo), hi) + slope * min(y, 0)``, so
one compiled kernel serves them all.

The generated source names a hash of the tile's code generator, so that numba's disk cache
(keyed on the generated file) never serves a kernel built by an older generator.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from engine.jit import MODULE_HEADER

#: the register tile's code generator, by content (see the module docstring)
GENERATOR = hashlib.sha256(
    b"".join(
        Path(__file__).with_name(name).read_bytes()
        for name in ("simd.py", "simd_codegen.py", "winograd_codegen.py")
    )
).hexdigest()[:16]

#: int64 parameter vector of a call (``geometry``): names in order; outputs have K channels
#: per pixel (the row stride), of which the first KEND (relative to ``out`` and ``bias`` as
#: passed) are stored: a share of the channels passes them from its first channel on; rows
#: VTOP..VTOP+VH of the (padded) input hold data, the others zeros (taps there are skipped)
PARAMS = (
    "HP", "WP", "C", "OH", "OW", "K", "R", "S", "SH", "SW", "DH", "DW",
    "N0", "N1", "OH0", "OH1", "KBLOCKS", "KEND", "VTOP", "VH",
)  # fmt: skip

#: after PARAMS in ``geometry``: the unpadded input's size and where it sits in the padded one,
#: and whether the kernel pads it itself (PAD = 1: into ``xp``, the rows its share reads)
PAD_PARAMS = ("H", "W", "TOP", "LEFT", "PAD")

SIGNATURE = (
    "void(float32[::1], float32[::1], float32[::1], float32[::1], float32[::1], int64[::1],"
    " float32, float32, float32)"
)

#: ``pad_rows``: rows ROW0..ROW1 of the (N * HP, WP, C) padded images ``xp`` from NHWC ``x``
#: (H x W) placed at (TOP, LEFT), zeros around; compiled into its callers
ROWS_SOURCE = """
@numba.njit(inline="always", **JIT)
def pad_rows(x, xp, ROW0, ROW1, H, W, C, HP, WP, TOP, LEFT):
    Z = np.float32(0.0)
    for row in range(ROW0, ROW1):
        n, hp = row // HP, row % HP
        base = row * WP * C
        h = hp - TOP
        if h < 0 or h >= H:
            for i in range(WP * C):
                xp[U(base + i)] = Z
            continue
        for i in range(LEFT * C):
            xp[U(base + i)] = Z
        src = (n * H + h) * W * C
        dst = base + LEFT * C
        for i in range(W * C):
            xp[U(dst + i)] = x[U(src + i)]
        for i in range((LEFT + W) * C, WP * C):
            xp[U(base + i)] = Z
"""

#: ``pad_images``: rows R0..R1 of the padded images N0..N1 (HP x WP) from NHWC ``x`` (H x W),
#: zeros around; one pass, inside the kernel's GIL-free call (NumPy's pad is five calls, each a
#: GIL hand-off when two batch slices run at once). Each share of a conv pads the rows it reads
#: before it reads them, so no share waits for another: rows two shares both read are written
#: by both, with the same values.
PAD_SOURCE = (
    ROWS_SOURCE
    + """
@numba.njit(inline="always", **JIT)
def pad_images(x, xp, N0, N1, R0, R1, H, W, C, HP, WP, TOP, LEFT):
    for n in range(N0, N1):
        pad_rows(x, xp, n * HP + R0, n * HP + R1, H, W, C, HP, WP, TOP, LEFT)
"""
)
#: the largest float32: "unbounded" without infinities (the kernels assume none: ``ninf``)
FLOAT32_MAX = 3.4028234e38

HEADER = f"""\
# register tile generator {GENERATOR}
{MODULE_HEADER}
from engine.conv import simd
"""


def epilogue_bounds(epilogue) -> tuple[float, float, float] | None:
    """(lo, hi, slope) of a fused activation, or None when the kernel cannot apply it."""
    kind, alpha, beta = epilogue.kind, epilogue.alpha, epilogue.beta
    return {
        "none": (-FLOAT32_MAX, FLOAT32_MAX, 0.0),
        "relu": (0.0, FLOAT32_MAX, 0.0),
        "leaky_relu": (0.0, FLOAT32_MAX, alpha),
        "clip": (alpha, beta, 0.0),
    }.get(kind)


def tile_call(pixels: int, pixel: str) -> str:
    """A call of the ``pixels``-wide register tile at output pixel ``pixel`` of row ``oh``."""
    return (
        f"TILE_{pixels}(x, (hrow * WP + {pixel} * SW) * C, SW * C, DH * WP * C, DW * C,"
        f" r1 - r0, S, C, w, wbase + r0 * S * C * KB, bias, k0, KEND - k0, out,"
        f" obase + {pixel} * K, K, lo, hi, slope, 0, 0)"
    )


def rows_source(pixels: int, vectors: int, epilogue: bool = True) -> str:
    """``conv_rows(x, w, bias, out, <PARAMS>, lo, hi, slope)``: the kernel on scalar geometry,
    compiled into its callers (the ``conv`` entry point and Winograd's batched GEMMs). Rows are
    covered by ``pixels``-wide tiles, the rest of a row by one narrower tile.

    Where the share has more output channels than output pixels (deep layers on small maps,
    batch 1) the loop over channel blocks is the outer one, so that each block's weights are
    read from memory once and stay in cache across the rows (ResNet-18's 512-channel 3x3 convs
    stream 1.2 MB of weights per block; row by row, a 7x7 output read all 9.4 MB seven times);
    elsewhere the rows are outer, each row's input staying in cache across the blocks.

    Kernel rows that fall on zero padding rows (the first and last output rows of a padded
    conv) are skipped: a 4x4 output of a 3x3 conv does 5/6 of the multiply-adds."""

    def tiles(indent: str) -> list[str]:
        tail = [f"if rest == {p}:\n    {tile_call(p, 'ow')}" for p in range(1, pixels)]
        body = ["ow = 0", f"while ow + {pixels} <= OW:", f"    {tile_call(pixels, 'ow')}",
                f"    ow += {pixels}", "rest = OW - ow", *tail]  # fmt: skip
        return [indent + line.replace("\n", "\n" + indent) for line in body]

    lines = [
        f"KB = {vectors} * simd.vector_shape()[0]",
        *[
            f"TILE_{p} = simd.conv_tile({p}, {vectors}, None, {epilogue})"
            for p in range(1, pixels + 1)
        ],
        "",
        "",
        "@numba.njit(inline='always', **JIT)",
        f"def conv_rows(x, w, bias, out, {', '.join(PARAMS)}, lo, hi, slope):",
        "    ROWS = OH1 - OH0",
        "    KOUTER = KBLOCKS * KB > (N1 - N0) * ROWS * OW  # channel blocks the outer loop",
        "    A, B = (KBLOCKS, (N1 - N0) * ROWS) if KOUTER else ((N1 - N0) * ROWS, KBLOCKS)",
        "    for a in range(A):",
        "        for b in range(B):",
        "            kblock, row = (a, b) if KOUTER else (b, a)",
        "            n, oh = N0 + row // ROWS, OH0 + row % ROWS",
        "            obase = ((n * OH + oh) * OW) * K",
        "            k0 = kblock * KB",
        "            wbase = kblock * R * S * C * KB",
        "            hp = oh * SH  # the padded row kernel row 0 reads",
        "            r0, r1 = 0, R",
        "            while r0 < R and hp + r0 * DH < VTOP:",
        "                r0 += 1",
        "            while r1 > r0 and hp + (r1 - 1) * DH >= VTOP + VH:",
        "                r1 -= 1",
        "            hrow = n * HP + hp + r0 * DH",
        *tiles("            "),
        "",
    ]
    return "\n".join(lines)


def conv_source(pixels: int, vectors: int) -> str:
    """A module with ``conv(x, xp, w, bias, out, geometry, lo, hi, slope)``.

    x: NHWC input (N, H, W, C); xp: the padded input (N, HP, WP, C), the rows this call reads
    written here when PAD (else x itself: there is no padding); w: (KBLOCKS, R, S, C, KB)
    with K zero-padded to KBLOCKS * KB; bias: (KBLOCKS * KB,); out: (N, OH, OW, K); geometry:
    ``PARAMS + PAD_PARAMS``. Runs images N0..N1 and output rows OH0..OH1 (a thread's share)."""
    lines = [
        HEADER,
        PAD_SOURCE,
        rows_source(pixels, vectors),
        "",
        f'@numba.njit("{SIGNATURE}", **JIT)',
        "def conv(x, xp, w, bias, out, geometry, lo, hi, slope):",
        f"    {', '.join(PARAMS + PAD_PARAMS)} = geometry",
        "    if PAD and OH1 > OH0:  # the padded rows output rows OH0..OH1 read",
        "        last = min(HP, (OH1 - 1) * SH + DH * (R - 1) + 1)",
        "        pad_images(x, xp, N0, N1, OH0 * SH, last, H, W, C, HP, WP, TOP, LEFT)",
        f"    conv_rows(xp, w, bias, out, {', '.join(PARAMS)}, lo, hi, slope)",
        "",
    ]
    return "\n".join(lines)


def map_source(rows: int, cols: int, vectors: int) -> str:
    """A module with ``conv`` as in ``conv_source``, for outputs of exactly ``rows`` x ``cols``
    pixels (OH0 = 0, OH1 = OH): each image's whole output map is one register tile, so that
    each block of weights is read once per image, from memory once, instead of once per row.
    For the deep layers of a net on a small map (ResNet-18's 512-channel 3x3 convs on 2x2
    outputs at 64x64 input), which stream their weights and do little else."""
    lines = [
        HEADER,
        PAD_SOURCE,
        f"KB = {vectors} * simd.vector_shape()[0]",
        f"TILE = simd.conv_tile({rows * cols}, {vectors}, {cols})",
        "",
        "",
        f'@numba.njit("{SIGNATURE}", **JIT)',
        "def conv(x, xp, w, bias, out, geometry, lo, hi, slope):",
        f"    {', '.join(PARAMS + PAD_PARAMS)} = geometry",
        "    if PAD:",
        "        pad_images(x, xp, N0, N1, 0, HP, H, W, C, HP, WP, TOP, LEFT)",
        "        x = xp",
        "    for kblock in range(KBLOCKS):",
        "        k0 = kblock * KB",
        "        for n in range(N0, N1):",
        "            TILE(x, n * HP * WP * C, SW * C, DH * WP * C, DW * C, R, S, C, w,"
        " kblock * R * S * C * KB, bias, k0, KEND - k0, out, n * OH * OW * K, K, lo, hi, slope,"
        " SH * WP * C, OW * K)",
        "",
    ]
    return "\n".join(lines)
