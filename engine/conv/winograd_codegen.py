"""LLVM IR of the compiled Winograd transforms, one vector of channels at a time (intrinsics).

``input_tile(bt, lanes)``: V = B^T d B for one input tile and one vector of channels;
``output_tile(at, lanes)``: Y = A^T M A + bias, activated, for one output tile and one vector of
output channels. The transform matrices are compile-time constants: each sum is written out
(zero terms dropped, +-1 as plain adds), on whole vectors. Loads and stores are masked by the
channels left (``count``), so a channel remainder needs no second code path; on AVX-512 a masked
load or store costs what a plain one does.

Written as scalar Python for numba's SLP vectoriser, the same transforms compiled for minutes
(F(4x4)'s 36-value blocks) and stayed partly scalar.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from engine.conv.simd_codegen import I64, Masked, array_pointers


class _Transform(Masked):
    """Masked vectors plus written-out linear transforms with constant coefficients."""

    def combine(self, coefficients, values):
        """sum(c * v) with constant coefficients: zeros dropped, +-1 as adds/subtracts, a
        positive term first, a factor common to every term applied once."""
        b = self.builder
        terms = [(float(c), v) for c, v in zip(coefficients, values) if c]
        if not terms:
            return self.zero
        scale = abs(terms[0][0])
        if len(terms) > 1 and scale != 1 and all(abs(c) == scale for c, _ in terms):
            inner = self.combine([c / scale for c, _ in terms], [v for _, v in terms])
            return b.fmul(inner, self._constant(scale))
        terms.sort(key=lambda term: term[0] < 0)  # positives first (a stable sort)
        total = None
        for c, value in terms:
            term = value if abs(c) == 1 else b.fmul(value, self._constant(abs(c)))
            if total is None:
                total = term if c > 0 else b.fneg(term)
            else:
                total = b.fadd(total, term) if c > 0 else b.fsub(total, term)
        return total

    def _constant(self, value: float):
        return ir.Constant(self.type, [value] * self.lanes)

    def apply(self, matrix: np.ndarray, values: list) -> list:
        """matrix . values (a vector of vectors), with the sums sharing work where the matrix
        lets them: two columns that every row weighs alike or oppositely (A^T's pairs of
        points +-p) are added and subtracted once, and two rows that are one part plus and
        minus another (B^T's even and odd parts) compute each part once. F(4x4)'s input
        transform: 19 vector operations per row of the tile instead of 28 (before LLVM fuses
        multiplies into adds), its output transform 13 instead of 20."""
        b, matrix, values = self.builder, np.array(matrix, np.float64), list(values)
        rows, cols = matrix.shape
        paired: set[int] = set()
        for p in range(cols):
            for q in range(p + 1, cols):
                cp, cq = matrix[:, p].copy(), matrix[:, q].copy()
                shared = np.count_nonzero(cp)  # rows that would each save an operation
                if p in paired or q in paired or shared < 3 or (np.abs(cp) != np.abs(cq)).any():
                    continue
                values[p], values[q] = b.fadd(values[p], values[q]), b.fsub(values[p], values[q])
                matrix[:, p], matrix[:, q] = (cp + cq) / 2, (cp - cq) / 2
                paired |= {p, q}
        out: list = [None] * rows
        for i in range(rows):
            for j in range(i + 1, rows):
                even, odd = (matrix[i] + matrix[j]) / 2, (matrix[i] - matrix[j]) / 2
                ne, no = np.count_nonzero(even), np.count_nonzero(odd)
                if (
                    out[i] is None
                    and out[j] is None
                    and ne
                    and no
                    and ne + no > 2
                    and not (even * odd).any()
                ):  # disjoint parts: computed once each, then added and subtracted
                    e, o = self.combine(even, values), self.combine(odd, values)
                    out[i], out[j] = b.fadd(e, o), b.fsub(e, o)
        return [self.combine(matrix[i], values) if v is None else v for i, v in enumerate(out)]

    def two_sided(self, matrix: np.ndarray, d: list[list]) -> list[list]:
        """matrix . d . matrix^T on a square grid of vectors."""
        rows, cols = matrix.shape
        columns = [self.apply(matrix, [d[k][j] for k in range(cols)]) for j in range(cols)]
        return [self.apply(matrix, [columns[j][i] for j in range(cols)]) for i in range(rows)]


def input_tile(bt: np.ndarray, lanes: int):
    """Intrinsic ``(xp, base, row, C, v, vbase, vstride, c, count)``: tile value (i, j) of
    channels c.. is ``xp[base + i*row + j*C + c ...]``; (B^T d B)[i][j] goes to
    ``v[vbase + (i*a + j)*vstride + c ...]``."""
    a = bt.shape[0]

    def codegen(context, builder, signature, args):
        xp, base, row, C, v, vbase, vstride, c, count = array_pointers(
            context, builder, signature, args, (0, 4)
        )
        vec = _Transform(builder, lanes, count)
        start = builder.add(base, c)
        d = [[vec.mload(xp, builder.add(start, builder.add(builder.mul(ir.Constant(I64, i), row),
                                                           builder.mul(ir.Constant(I64, j), C))))
              for j in range(a)] for i in range(a)]  # fmt: skip
        e = vec.two_sided(bt, d)
        out = builder.add(vbase, c)
        for i in range(a):
            for j in range(a):
                index = builder.add(out, builder.mul(ir.Constant(I64, i * a + j), vstride))
                vec.mstore(e[i][j], v, index)
        return context.get_dummy_value()

    def typer(typingctx, xp, base, row, C, v, vbase, vstride, c, count):
        return types.void(xp, base, row, C, v, vbase, vstride, c, count), codegen

    typer.__name__ = f"winograd_input_tile_a{a}"
    return intrinsic(typer)


def output_tile(at: np.ndarray, lanes: int, pool: int = 1):
    """Intrinsic ``(m, mbase, mstride, bias, k, count, out, obase, row, K, rows, cols, lo, hi,
    slope)``: product (i, j) of channels k.. is ``m[mbase + (i*a + j)*mstride + k ...]``; output
    pixel (i, j) < (rows, cols) of the tile goes to ``out[obase + i*row + j*K + k ...]`` as
    ``min(max(y, lo), hi) + slope * min(y, 0)`` with y = (A^T M A)[i][j] + bias[k ...].

    With ``pool`` > 1 (a divisor of the tile's m), a max-pool of ``pool`` x ``pool`` windows
    at stride ``pool`` follows the activation: pixel (i, j) < (rows, cols) of the pooled tile
    is the largest of its window, and nothing of the full-size tile is stored."""
    mm, a = at.shape
    if mm % pool:
        raise ValueError(f"a {pool}x{pool} pool does not tile {mm}x{mm} outputs")
    side = mm // pool

    def codegen(context, builder, signature, args):
        values = array_pointers(context, builder, signature, args, (0, 3, 6))
        m, mbase, mstride, bias, k, count, out, obase, row, K, rows, cols, lo, hi, slope = values
        vec = _Transform(builder, lanes, count)
        start = builder.add(mbase, k)
        p = [[vec.mload(m, builder.add(start, builder.mul(ir.Constant(I64, i * a + j), mstride)))
              for j in range(a)] for i in range(a)]  # fmt: skip
        q = vec.two_sided(at, p)
        b = vec.mload(bias, k)
        low, high, slopes = vec.splat(lo), vec.splat(hi), vec.splat(slope)

        def activated(y):
            y = builder.fadd(y, b)
            clamped = vec.call("llvm.minnum", vec.call("llvm.maxnum", y, low), high)
            return builder.fadd(clamped, builder.fmul(slopes, vec.call("llvm.minnum", y, vec.zero)))

        for i in range(side):
            inside_row = builder.icmp_signed("<", ir.Constant(I64, i), rows)
            for j in range(side):
                inside = builder.and_(
                    inside_row, builder.icmp_signed("<", ir.Constant(I64, j), cols)
                )
                with builder.if_then(inside):
                    window = [activated(q[i * pool + u][j * pool + v])
                              for u in range(pool) for v in range(pool)]  # fmt: skip
                    result = window[0]
                    for value in window[1:]:
                        result = vec.call("llvm.maxnum", result, value)
                    offset = builder.add(
                        builder.mul(ir.Constant(I64, i), row), builder.mul(ir.Constant(I64, j), K)
                    )
                    vec.mstore(result, out, builder.add(builder.add(obase, offset), k))
        return context.get_dummy_value()

    def typer(typingctx, m, mbase, mstride, bias, k, count, out, obase, row, K, rows, cols, lo,
              hi, slope):  # fmt: skip
        args = (m, mbase, mstride, bias, k, count, out, obase, row, K, rows, cols, lo, hi, slope)
        return types.void(*args), codegen

    typer.__name__ = f"winograd_output_tile_m{mm}_pool{pool}"
    return intrinsic(typer)
