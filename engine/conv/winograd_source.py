"""Source of the compiled Winograd F(m x m, 3 x 3) driver: transforms, batched GEMMs, epilogue.

One compiled call runs a thread's range of tiles in chunks small enough that a chunk's
transformed input (a*a, T, C) and products (a*a, T, K) stay in the core's L2 (a = m + 2): the
input transform of the chunk (B^T d B), the a*a GEMMs with the register-tiled ``conv_rows``
micro-kernel (a 1x1 conv over the chunk's tiles), then the output transform (A^T M A) with bias
and the fused activation applied before each pixel is stored.

The transforms are written out from the matrices as sums (zero terms left out, +-1 as plain
adds) over blocks of channels side by side, which the SLP vectoriser packs into vector
registers: a loop over single channels stayed scalar (4.4 ms of a 5.9 ms call on a 32-channel
layer; 0.6 ms written out).
"""

from __future__ import annotations

import numpy as np

from engine.conv.microkernel import FLOAT32_MAX, HEADER, rows_source, store

PARAMS = ("HP", "WP", "C", "OH", "OW", "K", "TH", "TW", "T0", "T1", "CHUNK", "KBLOCKS")

SIGNATURE = (
    "void(float32[::1], float32[::1], float32[::1], float32[::1], float32[::1], float32[::1],"
    " float32[::1], int64[::1], float32, float32, float32)"
)

#: channels per written-out block of the transforms, by tile size a: one 8-float register per
#: value for F(2x2); 4 for F(4x4), whose 36-value blocks took over 4 minutes to compile at 8
#: lanes (2 at 4 lanes, for a 10% slower layer)
LANES = {4: 8, 6: 4}


def lanes(template: list[str], count: int) -> list[str]:
    """Each line of ``template`` once per lane, lanes side by side: ``_L`` becomes the lane's
    name suffix and ``+ O`` its channel offset."""
    if count == 1:
        return [line.replace("_L", "").replace(" + O", "") for line in template]
    return [line.replace("_L", f"_{lane}").replace(" + O", f" + {lane}")
            for line in template for lane in range(count)]  # fmt: skip


def blocked(loop_var: str, limit: str, body: list[str], block: int) -> list[str]:
    """``body`` over ``loop_var`` in 0..limit: ``block`` at a time, then one at a time."""
    return [
        f"{loop_var} = 0",
        f"while {loop_var} + {block} <= {limit}:",
        *["    " + line for line in lanes(body, block)],
        f"    {loop_var} += {block}",
        f"while {loop_var} < {limit}:",
        *["    " + line for line in lanes(body, 1)],
        f"    {loop_var} += 1",
    ]


def linear(coefficients, names: list[str]) -> str:
    """sum(c * name) as source; float32 constants, zero terms dropped, +-1 as adds."""
    terms = []
    for c, name in zip(coefficients, names):
        c = float(c)
        if c == 0:
            continue
        sign = "-" if c < 0 else "+"
        magnitude = "" if abs(c) == 1 else f"np.float32({abs(c)!r}) * "
        terms.append(f"{sign} {magnitude}{name}")
    text = " ".join(terms)
    return text[2:] if text.startswith("+ ") else f"-{text[2:]}"


def _tile_position(m: int) -> list[str]:
    return [
        "g = c0 + t",
        "n = g // tiles_per_image",
        "rem = g - n * tiles_per_image",
        "ti = rem // TW",
        "tj = rem - ti * TW",
        f"row0 = {m} * ti",
        f"col0 = {m} * tj",
    ]


def two_sided(matrix: np.ndarray, value: str, left: str, result: str) -> list[str]:
    """``result = matrix . value . matrix^T`` on named scalars ``value{i}{j}_L``, through
    ``left{i}{j}_L = (matrix . value)[i][j]``."""
    rows, cols = matrix.shape
    lines = [f"{left}{i}{j}_L = " + linear(matrix[i], [f"{value}{k}{j}_L" for k in range(cols)])
             for i in range(rows) for j in range(cols)]  # fmt: skip
    lines += [f"{result}{i}{j}_L = " + linear(matrix[j], [f"{left}{i}{k}_L" for k in range(cols)])
              for i in range(rows) for j in range(rows)]  # fmt: skip
    return lines


def _input_transform(bt: np.ndarray) -> list[str]:
    """V[i*a + j, t, :] = (B^T d B)[i][j] for each of the chunk's tiles."""
    a = bt.shape[0]
    body = [f"d{i}{j}_L = xp[U(base + ({i} * WP + {j}) * C + c + O)]"
            for i in range(a) for j in range(a)]  # fmt: skip
    body += two_sided(bt, "d", "r", "e")
    body += [f"v[U(({i * a + j} * T + t) * C + c + O)] = e{i}{j}_L"
             for i in range(a) for j in range(a)]  # fmt: skip
    return [
        "for t in range(T):",
        *["    " + line for line in _tile_position(a - 2)],
        "    base = ((n * HP + row0) * WP + col0) * C",
        *["    " + line for line in blocked("c", "C", body, LANES[a])],
    ]


def _output_transform(at: np.ndarray) -> list[str]:
    """out[tile pixels] = activation((A^T M A) + bias) for each of the chunk's tiles."""
    m, a = at.shape
    values = [f"p{i}{j}_L = m[U(({i * a + j} * T + t) * K + k + O)]"
              for i in range(a) for j in range(a)]  # fmt: skip
    values += two_sided(at, "p", "s", "q")
    values.append("b_L = bias[U(k + O)]")

    def stores(checked: bool) -> list[str]:
        lines = []
        for i in range(m):
            for j in range(m):
                line = store(f"out[U(ob + ({i} * OW + {j}) * K + k + O)]", f"(q{i}{j}_L + b_L)")
                if checked:
                    lines += [f"if row0 + {i} < OH and col0 + {j} < OW:", "    " + line]
                else:
                    lines.append(line)
        return lines

    return [
        "for t in range(T):",
        *["    " + line for line in _tile_position(m)],
        "    ob = ((n * OH + row0) * OW + col0) * K",
        f"    if row0 + {m - 1} < OH and col0 + {m - 1} < OW:",
        *["        " + line for line in blocked("k", "K", values + stores(False), LANES[a])],
        "    else:  # a tile over the bottom or right edge of the output",
        "        for k in range(K):",
        *["            " + line for line in lanes(values + stores(True), 1)],
    ]


def winograd_source(bt: np.ndarray, at: np.ndarray, pixels: int, vectors: int) -> str:
    """A module with ``winograd(xp, u, bias, zero_bias, out, v, m, geometry, lo, hi, slope)``.

    xp: input zero-padded to (N, HP, WP, C) with HP = m TH + 2, WP = m TW + 2; u: transformed
    filters (a*a, KBLOCKS, C, KB); bias (K,); zero_bias (KBLOCKS * KB,) zeros; out (N, OH, OW,
    K); v and m: (a*a, CHUNK, C) and (a*a, CHUNK, K) scratch; tiles T0..T1 of the flattened
    (N, TH, TW) tile grid."""
    a = bt.shape[0]
    unpack = [f"    {name} = geometry[{i}]" for i, name in enumerate(PARAMS)]
    gemm = ("conv_rows(v[e * T * C :], u[e * ustride :], zero_bias, m[e * T * K :],"
            " 1, T, C, 1, T, K, 1, 1, 1, 1, 1, 1, 0, 1, 0, 1, KBLOCKS, -BIG, BIG, Z)")  # fmt: skip
    lines = [
        HEADER,
        rows_source(pixels, vectors),
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
        *["        " + line for line in _input_transform(bt)],
        f"        for e in range({a * a}):",
        f"            {gemm}",
        *["        " + line for line in _output_transform(at)],
        "",
    ]
    return "\n".join(lines)
