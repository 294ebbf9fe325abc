"""Source of the compiled direct (implicit-GEMM) convolution kernel, generated per register tile.

The kernel computes a tile of ``P`` output pixels x ``KB`` output channels with ``P * KB`` scalar
accumulators: LLVM's SLP vectoriser packs each pixel's ``KB`` accumulators into AVX registers
(``KB = 8`` or ``16``: one or two 8-float registers), so the inner loop over input channels is
``P`` broadcasts, ``KB / 8`` vector loads of the weights and ``P * KB / 8`` fused multiply-adds,
all from registers. The im2col rows are read in place from the (zero-padded) NHWC input: one
contiguous run of C floats per pixel and kernel tap, never copied.

Arrays are passed flat and every index is cast to unsigned: numba then drops its negative-index
wrap-around, which otherwise hides that the weight loads are consecutive and stops the packing.
Bias and the activations in ``FUSED`` are applied before the tile is stored, branch-free as
``min(max(y, lo), hi) + slope * min(y, 0)`` (``epilogue_bounds``), so one compiled kernel serves
them all and the stores stay vectorised.
"""

from __future__ import annotations

from engine.jit import FASTMATH

#: int64 parameter vector of a call (``geometry``): names in order
PARAMS = (
    "HP", "WP", "C", "OH", "OW", "K", "R", "S", "SH", "SW", "DH", "DW",
    "N0", "N1", "OH0", "OH1", "KBLOCKS",
)  # fmt: skip

SIGNATURE = (
    "void(float32[::1], float32[::1], float32[::1], float32[::1], int64[::1],"
    " float32, float32, float32)"
)
#: the largest float32: "unbounded" without infinities (the kernels assume none: ``ninf``)
FLOAT32_MAX = 3.4028234e38

HEADER = f"""\
import numba
import numpy as np

U = np.uint64
FASTMATH = set({sorted(FASTMATH)!r})
JIT = dict(nogil=True, fastmath=FASTMATH, cache=True, error_model="numpy", boundscheck=False)
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


def store(target: str, value: str) -> str:
    """The statement storing ``value`` with the fused activation."""
    return f"{target} = min(max({value}, lo), hi) + slope * min({value}, Z)"


def _tile(pixels: int, kb: int, indent: str) -> list[str]:
    """Accumulate and store one tile of ``pixels`` x ``kb`` at output pixel ``ow``."""
    lines = [f"a{p}_{j} = Z" for p in range(pixels) for j in range(kb)]
    lines += [
        "for r in range(R):",
        "    xrow = ((n * HP + oh * SH + r * DH) * WP + ow * SW) * C",
        "    for s in range(S):",
        "        xb = xrow + s * DW * C",
        "        wb = wbase + (r * S + s) * C * KB",
        "        for c in range(C):",
    ]
    body = [f"v{p} = x[U(xb + {p} * step + c)]" for p in range(pixels)]
    body += ["wq = wb + c * KB"] + [f"w{j} = w[U(wq + {j})]" for j in range(kb)]
    body += [f"a{p}_{j} += v{p} * w{j}" for p in range(pixels) for j in range(kb)]
    lines += [" " * 12 + line for line in body]
    lines.append("if k0 + KB <= K:")
    for p in range(pixels):
        lines.append(f"    ob = obase + (ow + {p}) * K + k0")
        for j in range(kb):
            lines.append("    " + store(f"out[U(ob + {j})]", f"(a{p}_{j} + b{j})"))
    lines.append("else:")
    for p in range(pixels):
        lines.append(f"    ob = obase + (ow + {p}) * K + k0")
        for j in range(kb):
            lines.append(f"    if k0 + {j} < K:")
            lines.append("        " + store(f"out[U(ob + {j})]", f"(a{p}_{j} + b{j})"))
    return [indent + line for line in lines]


def rows_source(pixels: int, kb: int) -> str:
    """``conv_rows(x, w, bias, out, <PARAMS>, lo, hi, slope)``: the kernel on scalar geometry,
    compiled into its callers (the ``conv`` entry point and Winograd's batched GEMMs)."""
    lines = [
        f"KB = {kb}",
        "",
        "",
        "@numba.njit(inline='always', **JIT)",
        f"def conv_rows(x, w, bias, out, {', '.join(PARAMS)}, lo, hi, slope):",
        "    Z = np.float32(0.0)",
        "    step = SW * C",
        "    for n in range(N0, N1):",
        "        for oh in range(OH0, OH1):",
        "            obase = ((n * OH + oh) * OW) * K",
        "            for kblock in range(KBLOCKS):",
        "                k0 = kblock * KB",
        "                wbase = kblock * R * S * C * KB",
        *[f"                b{j} = bias[U(k0 + {j})]" for j in range(kb)],
        "                ow = 0",
        f"                while ow + {pixels} <= OW:",
        *_tile(pixels, kb, " " * 20),
        f"                    ow += {pixels}",
        "                while ow < OW:",
        *_tile(1, kb, " " * 20),
        "                    ow += 1",
        "",
    ]
    return "\n".join(lines)


def conv_source(pixels: int, kb: int) -> str:
    """A module with ``conv(x, w, bias, out, geometry, lo, hi, slope)``.

    x: padded NHWC input (N, HP, WP, C); w: (KBLOCKS, R, S, C, KB) with K zero-padded to
    KBLOCKS * KB; bias: (KBLOCKS * KB,); out: (N, OH, OW, K); geometry: ``PARAMS``. Runs
    images N0..N1 and output rows OH0..OH1 (a thread's share)."""
    unpack = ", ".join(f"geometry[{i}]" for i in range(len(PARAMS)))
    lines = [
        HEADER,
        rows_source(pixels, kb),
        "",
        f'@numba.njit("{SIGNATURE}", **JIT)',
        "def conv(x, w, bias, out, geometry, lo, hi, slope):",
        f"    conv_rows(x, w, bias, out, {unpack}, lo, hi, slope)",
        "",
    ]
    return "\n".join(lines)
