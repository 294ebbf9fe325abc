"""LLVM IR of the register tile (``engine.conv.simd``); imports numba, so only the compiled
kernels' modules import it, after ``engine.jit`` has configured numba."""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

F32 = ir.FloatType()
I32 = ir.IntType(32)
I64 = ir.IntType(64)
#: argument positions of the arrays: x, w, bias, out
ARRAYS = (0, 8, 10, 13)


class _Vectors:
    """Helpers for one lane count: splats, loads, stores and the LLVM intrinsics used."""

    def __init__(self, builder: ir.IRBuilder, lanes: int):
        self.builder, self.lanes = builder, lanes
        self.type = ir.VectorType(F32, lanes)
        self.zero = ir.Constant(self.type, [0.0] * lanes)

    def splat(self, scalar):
        vtype = ir.VectorType(scalar.type, self.lanes)
        undef = ir.Constant(vtype, ir.Undefined)
        first = self.builder.insert_element(undef, scalar, ir.Constant(I32, 0))
        zeros = ir.Constant(ir.VectorType(I32, self.lanes), [0] * self.lanes)
        return self.builder.shuffle_vector(first, undef, zeros)

    def pointer(self, base, index):
        return self.builder.bitcast(self.builder.gep(base, [index]), self.type.as_pointer())

    def load(self, base, index):
        return self.builder.load(self.pointer(base, index), align=4)

    def call(self, name: str, *args):
        fnty = ir.FunctionType(self.type, [self.type] * len(args))
        fn = cgutils.get_or_insert_function(self.builder.module, fnty, f"{name}.v{self.lanes}f32")
        return self.builder.call(fn, list(args))

    def store(self, value, base, index, count):
        """Store the first ``count`` lanes (all of them when count >= lanes)."""
        b = self.builder
        ptr = self.pointer(base, index)
        with b.if_else(b.icmp_signed(">=", count, ir.Constant(I64, self.lanes))) as (full, part):
            with full:
                b.store(value, ptr, align=4)
            with part:
                lane = ir.Constant(ir.VectorType(I64, self.lanes), list(range(self.lanes)))
                mask = b.icmp_signed("<", lane, self.splat(count))
                name = f"llvm.masked.store.v{self.lanes}f32.p0v{self.lanes}f32"
                fnty = ir.FunctionType(ir.VoidType(), [self.type, self.type.as_pointer(), I32,
                                                       mask.type])  # fmt: skip
                fn = cgutils.get_or_insert_function(b.module, fnty, name)
                b.call(fn, [value, ptr, ir.Constant(I32, 4), mask])


class Masked(_Vectors):
    """Vector loads and stores of the first ``count`` lanes."""

    def __init__(self, builder, lanes: int, count):
        super().__init__(builder, lanes)
        lane = ir.Constant(ir.VectorType(I64, lanes), list(range(lanes)))
        self.mask = builder.icmp_signed("<", lane, self.splat(count))

    def _fn(self, name: str, ret, args):
        suffix = f"v{self.lanes}f32.p0v{self.lanes}f32"
        fnty = ir.FunctionType(ret, args)
        return cgutils.get_or_insert_function(self.builder.module, fnty, f"{name}.{suffix}")

    def mload(self, base, index):
        ptr = self.pointer(base, index)
        fn = self._fn("llvm.masked.load", self.type, [ptr.type, I32, self.mask.type, self.type])
        return self.builder.call(fn, [ptr, ir.Constant(I32, 4), self.mask, self.zero])

    def mstore(self, value, base, index):
        ptr = self.pointer(base, index)
        args = [self.type, ptr.type, I32, self.mask.type]
        fn = self._fn("llvm.masked.store", ir.VoidType(), args)
        self.builder.call(fn, [value, ptr, ir.Constant(I32, 4), self.mask])


def array_pointers(context, builder, signature, args, positions) -> list:
    """``args`` with each array argument at ``positions`` replaced by its data pointer."""
    values = list(args)
    for index in positions:
        values[index] = context.make_array(signature.args[index])(
            context, builder, args[index]
        ).data
    return values


def _offset(b, a, p: int, width: int, row: str, step: str):
    """Where pixel ``p`` of a tile ``width`` pixels wide sits: (p // width) * a[row] +
    (p % width) * a[step]."""
    offset = b.mul(ir.Constant(I64, p % width), a[step])
    return b.add(b.mul(ir.Constant(I64, p // width), a[row]), offset) if p >= width else offset


def _accumulate(vec: _Vectors, pixels: int, vectors: int, a, accs, width: int) -> None:
    """The R x S x C loop: accs[p][v] += x(p, r, s, c) * w(r, s, c, v)."""
    b = vec.builder
    kb = ir.Constant(I64, vec.lanes * vectors)
    tap = b.mul(a["C"], kb)  # weights of one kernel tap
    with cgutils.for_range(b, a["R"]) as rows:
        xr = b.add(a["xb"], b.mul(rows.index, a["rstride"]))
        wr = b.add(a["wb"], b.mul(b.mul(rows.index, a["S"]), tap))
        with cgutils.for_range(b, a["S"]) as cols:
            xs = b.add(xr, b.mul(cols.index, a["sstride"]))
            ws = b.add(wr, b.mul(cols.index, tap))
            with cgutils.for_range(b, a["C"]) as channels:
                c = channels.index
                wq = b.add(ws, b.mul(c, kb))
                weights = [vec.load(a["w"], b.add(wq, ir.Constant(I64, v * vec.lanes)))
                           for v in range(vectors)]  # fmt: skip
                for p in range(pixels):
                    xi = b.add(b.add(xs, _offset(b, a, p, width, "xrow", "xstep")), c)
                    value = vec.splat(b.load(b.gep(a["x"], [xi])))
                    for v in range(vectors):
                        acc = b.load(accs[p][v])
                        b.store(vec.call("llvm.fma", value, weights[v], acc), accs[p][v])


def _store(vec: _Vectors, pixels: int, vectors: int, a, accs, width: int, epilogue: bool) -> None:
    """Bias, activation (unless not ``epilogue``: the sums as they are) and the (masked)
    stores of the tile."""
    b = vec.builder
    bias = [vec.load(a["bias"], b.add(a["k0"], ir.Constant(I64, v * vec.lanes)))
            for v in range(vectors)] if epilogue else []  # fmt: skip
    lo, hi, slope = (vec.splat(a[name]) for name in ("lo", "hi", "slope"))
    for p in range(pixels):
        base = b.add(b.add(a["ob"], _offset(b, a, p, width, "orow", "ostep")), a["k0"])
        for v in range(vectors):
            result = b.load(accs[p][v])
            if epilogue:
                y = b.fadd(result, bias[v])
                clamped = vec.call("llvm.minnum", vec.call("llvm.maxnum", y, lo), hi)
                result = b.fadd(clamped, b.fmul(slope, vec.call("llvm.minnum", y, vec.zero)))
            count = b.sub(a["nk"], ir.Constant(I64, v * vec.lanes))
            vec.store(result, a["out"], b.add(base, ir.Constant(I64, v * vec.lanes)), count)


NAMES = ("x", "xb", "xstep", "rstride", "sstride", "R", "S", "C", "w", "wb", "bias", "k0", "nk",
         "out", "ob", "ostep", "lo", "hi", "slope", "xrow", "orow")  # fmt: skip


def make_conv_tile(pixels: int, vectors: int, lanes: int, width: int, epilogue: bool = True):
    """The intrinsic documented at ``engine.conv.simd.conv_tile``."""

    def codegen(context, builder, signature, args):
        values = dict(zip(NAMES, array_pointers(context, builder, signature, args, ARRAYS)))
        vec = _Vectors(builder, lanes)
        accs = [[cgutils.alloca_once_value(builder, vec.zero) for _ in range(vectors)]
                for _ in range(pixels)]  # fmt: skip
        _accumulate(vec, pixels, vectors, values, accs, width)
        _store(vec, pixels, vectors, values, accs, width, epilogue)
        return context.get_dummy_value()

    def typer(typingctx, x, xb, xstep, rstride, sstride, R, S, C, w, wb, bias, k0, nk, out, ob,
              ostep, lo, hi, slope, xrow, orow):  # fmt: skip
        # numba passes each argument's type by name (NAMES); a *args signature is not accepted
        args = (x, xb, xstep, rstride, sstride, R, S, C, w, wb, bias, k0, nk, out, ob, ostep,
                lo, hi, slope, xrow, orow)  # fmt: skip
        return types.void(*args), codegen

    typer.__name__ = (
        f"conv_tile_p{pixels}_v{vectors}"
        + (f"_w{width}" if width < pixels else "")
        + ("" if epilogue else "_plain")
    )
    return intrinsic(typer)


DEPTHWISE_NAMES = ("x", "xb", "xstep", "rstride", "sstride", "R", "S", "taps", "tstride", "bias",
                   "k", "count", "out", "ob", "ostep", "lo", "hi", "slope")  # fmt: skip


def make_depthwise_tile(pixels: int, lanes: int):
    """Intrinsic ``(x, xb, xstep, rstride, sstride, R, S, taps, tstride, bias, k, count, out,
    ob, ostep, lo, hi, slope)``: ``pixels`` output pixels x one vector of channels k.. of a
    depthwise conv (multiplier 1) whose windows lie inside the input. Pixel p's input at tap
    (r, s) is ``x[xb + p*xstep + r*rstride + s*sstride + k ...]``, the tap's weights
    ``taps[(r*S + s)*tstride + k ...]``; outputs go to ``out[ob + p*ostep + k ...]`` with bias
    and activation, only the first ``count`` channels."""

    def codegen(context, builder, signature, args):
        arrays = [DEPTHWISE_NAMES.index(name) for name in ("x", "taps", "bias", "out")]
        a = dict(zip(DEPTHWISE_NAMES, array_pointers(context, builder, signature, args, arrays)))
        b = builder
        vec = Masked(b, lanes, a["count"])
        accs = [cgutils.alloca_once_value(b, vec.mload(a["bias"], a["k"])) for _ in range(pixels)]
        with cgutils.for_range(b, a["R"]) as rows:
            xr = b.add(b.add(a["xb"], a["k"]), b.mul(rows.index, a["rstride"]))
            tr = b.mul(rows.index, a["S"])
            with cgutils.for_range(b, a["S"]) as cols:
                xs = b.add(xr, b.mul(cols.index, a["sstride"]))
                tap = vec.mload(
                    a["taps"], b.add(b.mul(b.add(tr, cols.index), a["tstride"]), a["k"])
                )
                for p in range(pixels):
                    value = vec.mload(a["x"], b.add(xs, b.mul(ir.Constant(I64, p), a["xstep"])))
                    b.store(vec.call("llvm.fma", value, tap, b.load(accs[p])), accs[p])
        lo, hi, slope = (vec.splat(a[name]) for name in ("lo", "hi", "slope"))
        for p in range(pixels):
            y = b.load(accs[p])
            clamped = vec.call("llvm.minnum", vec.call("llvm.maxnum", y, lo), hi)
            result = b.fadd(clamped, b.fmul(slope, vec.call("llvm.minnum", y, vec.zero)))
            index = b.add(b.add(a["ob"], b.mul(ir.Constant(I64, p), a["ostep"])), a["k"])
            vec.mstore(result, a["out"], index)
        return context.get_dummy_value()

    def typer(typingctx, x, xb, xstep, rstride, sstride, R, S, taps, tstride, bias, k, count,
              out, ob, ostep, lo, hi, slope):  # fmt: skip
        args = (x, xb, xstep, rstride, sstride, R, S, taps, tstride, bias, k, count, out, ob,
                ostep, lo, hi, slope)  # fmt: skip
        return types.void(*args), codegen

    typer.__name__ = f"depthwise_tile_p{pixels}"
    return intrinsic(typer)
