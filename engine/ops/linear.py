"""Gemm, MatMul and Softmax (plain layout)."""

from __future__ import annotations

import math

import numpy as np

from engine.errors import ModelLoadError
from engine.ops.base import Op, normalize_axis, register
from engine.ops.elementwise import broadcast_shapes


@register("Gemm")
class Gemm(Op):
    """Y = alpha * A' B' + beta * C, with B and C prepared once when they are constants."""

    attributes = {"alpha": 1.0, "beta": 1.0, "transA": 0, "transB": 0, "broadcast": 1}

    def __init__(self, ctx):
        super().__init__(ctx)
        a_shape, b_shape = ctx.in_shapes[0], ctx.in_shapes[1]
        self.trans_a, self.trans_b = bool(self.attr("transA")), bool(self.attr("transB"))
        m, k = a_shape[::-1] if self.trans_a else a_shape
        kb, n = b_shape[::-1] if self.trans_b else b_shape
        if len(a_shape) != 2 or k != kb:
            raise ModelLoadError(f"{ctx.node.name} (Gemm): A {a_shape} and B {b_shape}")
        self.alpha, self.beta = float(self.attr("alpha")), float(self.attr("beta"))
        dtype = np.result_type(*ctx.in_dtypes[:2])
        b = ctx.const(1)
        # kept as stored: BLAS reads a transposed operand in place, no copy of a large FC matrix
        self.b = None if b is None else ctx.backend.asarray(b)
        self.c = None
        if ctx.has_input(2) and self.beta != 0:
            if len(ctx.in_shapes[2]) > 2 or (m, n) != broadcast_shapes([ctx.in_shapes[2], (m, n)],
                                                                      ctx.node):  # fmt: skip
                raise ModelLoadError(f"{ctx.node.name} (Gemm): C {ctx.in_shapes[2]} vs {(m, n)}")
            c = ctx.const(2)
            self.c = None if c is None else ctx.backend.asarray((self.beta * c).astype(dtype))
        self.set_output((m, n), dtype)
        # (rows, the compiled 1x1 conv of engine/backends/cpu_linear.py or None), on demand
        self._dense = None

    def lane_phases(self, ins, outs, lanes):
        """On the CPU, float32 with constant weights and a per-feature (or no) C: compiled, the
        output features split across ``lanes`` when the weights are large."""
        a, out = ins[0], outs[0]
        if (self.ctx.backend.device != "cpu" or self.trans_a or self.b is None
                or out.dtype != np.float32 or a.dtype != np.float32 or not a.flags.c_contiguous
                or self.c is not None and self.c.size != out.shape[1]
                or self.c is None and self.ctx.has_input(2) and self.beta != 0):  # fmt: skip
            return None
        from engine.backends.cpu_linear import dense, dense_phases

        rows = a.shape[0]
        if self._dense is None or self._dense[0] != rows:  # made for this many rows
            b = self.b.T if self.trans_b else self.b
            weights = np.asarray(self.alpha * b, np.float32)
            shift = np.zeros(out.shape[1], np.float32) if self.c is None else self.c.reshape(-1)
            self._dense = rows, dense(weights, shift, rows, self.ctx.backend)
        algo = self._dense[1]
        return None if algo is None else dense_phases(algo, a, out, lanes)

    def run(self, ins, outs):
        a = ins[0].T if self.trans_a else ins[0]
        b = self.b if self.b is not None else ins[1]
        b = b.T if self.trans_b else b
        out = outs[0]
        self.xp.matmul(a, b, out=out)
        if self.alpha != 1.0:
            out *= self.alpha
        if self.c is not None:
            out += self.c
        elif self.ctx.has_input(2) and self.beta != 0:
            out += self.beta * ins[2]
        return outs


def matmul_shape(a: tuple, b: tuple, node) -> tuple:
    a2 = (1,) + a if len(a) == 1 else a
    b2 = b + (1,) if len(b) == 1 else b
    if a2[-1] != b2[-2]:
        raise ModelLoadError(f"{node.name} (MatMul): {a} x {b}")
    shape = np.broadcast_shapes(a2[:-2], b2[:-2]) + (a2[-2], b2[-1])
    if len(a) == 1:
        shape = shape[:-2] + shape[-1:]
    if len(b) == 1:
        shape = shape[:-1]
    return tuple(shape)


@register("MatMul")
class MatMul(Op):
    def __init__(self, ctx):
        super().__init__(ctx)
        shape = matmul_shape(ctx.in_shapes[0], ctx.in_shapes[1], ctx.node)
        self.set_output(shape, np.result_type(*ctx.in_dtypes[:2]))

    def run(self, ins, outs):
        self.xp.matmul(ins[0], ins[1], out=outs[0])
        return outs


@register("Softmax")
class Softmax(Op):
    """Softmax along one axis (opset >= 13), or over the flattened trailing axes (older)."""

    attributes = {"axis": None}

    def __init__(self, ctx):
        super().__init__(ctx)
        shape = ctx.in_shapes[0]
        legacy = ctx.opset < 13
        axis = self.attr("axis")
        axis = normalize_axis((1 if legacy else -1) if axis is None else axis, len(shape), ctx.node)
        if legacy:
            self.view = (math.prod(shape[:axis]), math.prod(shape[axis:]))
            self.axis = 1
        else:
            self.view, self.axis = tuple(shape), axis
        reduced = list(self.view)
        reduced[self.axis] = 1
        self.scratch = ctx.backend.empty(tuple(reduced), ctx.in_dtypes[0])
        self.set_output(shape, ctx.in_dtypes[0])

    def run(self, ins, outs):
        xp, x, out, tmp = (
            self.xp,
            ins[0].reshape(self.view),
            outs[0].reshape(self.view),
            self.scratch,
        )
        xp.max(x, axis=self.axis, keepdims=True, out=tmp)
        xp.subtract(x, tmp, out=out)
        xp.exp(out, out=out)
        xp.sum(out, axis=self.axis, keepdims=True, out=tmp)
        out /= tmp
        return outs
