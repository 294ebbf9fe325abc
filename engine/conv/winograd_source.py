"""Source of the compiled Winograd F(2x2, 3x3) driver: transforms, batched GEMMs, epilogue.

One compiled call runs a thread's range of tiles in chunks small enough that a chunk's
transformed input (16, T, C) and products (16, T, K) stay in the core's L2: the input transform
of the chunk (B^T d B written out as adds, vectorised over the channels), the 16 GEMMs with the
register-tiled ``conv_rows`` micro-kernel (a 1x1 conv over the chunk's tiles), then the output
transform (A^T m A) with bias and the fused activation applied before each pixel is stored.
"""

from __future__ import annotations

from engine.conv.microkernel import FLOAT32_MAX, HEADER, rows_source, store

PARAMS = ("HP", "WP", "C", "OH", "OW", "K", "TH", "TW", "T0", "T1", "CHUNK", "KBLOCKS")

SIGNATURE = (
    "void(float32[::1], float32[::1], float32[::1], float32[::1], float32[::1], float32[::1],"
    " float32[::1], int64[::1], float32, float32, float32)"
)


def _tile_position() -> list[str]:
    return [
        "g = c0 + t",
        "n = g // tiles_per_image",
        "rem = g - n * tiles_per_image",
        "ti = rem // TW",
        "tj = rem - ti * TW",
    ]


def _input_transform() -> list[str]:
    """V[e, t, :] = (B^T d B)[e] for the chunk's tiles, B^T = [[1,0,-1,0],[0,1,1,0],
    [0,-1,1,0],[0,1,0,-1]]; rows of d combined first, then columns."""
    body = [f"d{i}{j} = xp[U(base + ({i} * WP + {j}) * C + c)]"
            for i in range(4) for j in range(4)]  # fmt: skip
    for j in range(4):
        body += [f"r0{j} = d0{j} - d2{j}", f"r1{j} = d1{j} + d2{j}",
                 f"r2{j} = d2{j} - d1{j}", f"r3{j} = d1{j} - d3{j}"]  # fmt: skip
    for i in range(4):
        values = [f"r{i}0 - r{i}2", f"r{i}1 + r{i}2", f"r{i}2 - r{i}1", f"r{i}1 - r{i}3"]
        body += [f"v[U(({i * 4 + j} * T + t) * C + c)] = {values[j]}" for j in range(4)]
    return [
        "for t in range(T):",
        *["    " + line for line in _tile_position()],
        "    base = ((n * HP + 2 * ti) * WP + 2 * tj) * C",
        "    for c in range(C):",
        *["        " + line for line in body],
    ]


def _output_values() -> list[str]:
    """y_ij = (A^T m A)_ij + bias, A^T = [[1,1,1,0],[0,1,-1,-1]]."""
    lines = [f"m{e // 4}{e % 4} = m[U(({e} * T + t) * K + k)]" for e in range(16)]
    for j in range(4):
        lines += [f"s0{j} = m0{j} + m1{j} + m2{j}", f"s1{j} = m1{j} - m2{j} - m3{j}"]
    for i in range(2):
        lines += [f"y{i}0 = s{i}0 + s{i}1 + s{i}2 + bias[U(k)]",
                  f"y{i}1 = s{i}1 - s{i}2 - s{i}3 + bias[U(k)]"]  # fmt: skip
    return lines


def _output_transform() -> list[str]:
    def stores(checked: bool) -> list[str]:
        lines = []
        for i in range(2):
            for j in range(2):
                target = f"out[U(ob + ({i} * OW + {j}) * K + k)]"
                if checked:
                    lines += [f"if 2 * ti + {i} < OH and 2 * tj + {j} < OW:",
                              "    " + store(target, f"y{i}{j}")]  # fmt: skip
                else:
                    lines.append(store(target, f"y{i}{j}"))
        return lines

    values = _output_values()
    return [
        "for t in range(T):",
        *["    " + line for line in _tile_position()],
        "    ob = ((n * OH + 2 * ti) * OW + 2 * tj) * K",
        "    if 2 * ti + 1 < OH and 2 * tj + 1 < OW:",
        "        for k in range(K):",
        *["            " + line for line in values + stores(False)],
        "    else:",
        "        for k in range(K):",
        *["            " + line for line in values + stores(True)],
    ]


def winograd_source(pixels: int, kb: int) -> str:
    """A module with ``winograd(xp, u, bias, zero_bias, out, v, m, geometry, lo, hi, slope)``.

    xp: input zero-padded to (N, HP, WP, C) with HP = 2 TH + 2, WP = 2 TW + 2; u: transformed
    filters (16, KBLOCKS, C, KB); bias (K,); zero_bias (KBLOCKS * KB,) zeros; out (N, OH, OW,
    K); v and m: (16, CHUNK, C) and (16, CHUNK, K) scratch; tiles T0..T1 of the flattened
    (N, TH, TW) tile grid."""
    unpack = [f"    {name} = geometry[{i}]" for i, name in enumerate(PARAMS)]
    gemm = ("conv_rows(v[e * T * C :], u[e * ustride :], zero_bias, m[e * T * K :],"
            " 1, T, C, 1, T, K, 1, 1, 1, 1, 1, 1, 0, 1, 0, 1, KBLOCKS, -BIG, BIG, Z)")  # fmt: skip
    lines = [
        HEADER,
        rows_source(pixels, kb),
        "",
        f"BIG = np.float32({FLOAT32_MAX!r})",
        "",
        f'@numba.njit("{SIGNATURE}", **JIT)',
        "def winograd(xp, u, bias, zero_bias, out, v, m, geometry, lo, hi, slope):",
        *unpack,
        "    Z = np.float32(0.0)",
        "    tiles_per_image = TH * TW",
        "    ustride = KBLOCKS * C * KB",
        "    for c0 in range(T0, T1, CHUNK):",
        "        T = min(CHUNK, T1 - c0)",
        *["        " + line for line in _input_transform()],
        "        for e in range(16):",
        f"            {gemm}",
        *["        " + line for line in _output_transform()],
        "",
    ]
    return "\n".join(lines)
