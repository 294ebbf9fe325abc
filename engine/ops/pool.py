"""MaxPool, AveragePool and the global pools on NHWC tensors: one vector op per kernel tap."""

from __future__ import annotations

import numpy as np

from engine.arrays import pad_into
from engine.errors import UnsupportedModelError
from engine.ops.base import NHWC, PLAIN, Op, register
from engine.ops.window import output_size, resolve_pads, spatial_params


class _Pool(Op):
    attributes = {"auto_pad": "NOTSET", "ceil_mode": 0, "dilations": None, "kernel_shape": None,
                  "pads": None, "strides": None}  # fmt: skip
    layout = NHWC
    fill = 0.0

    @classmethod
    def check(cls, node, opset):
        problems = super().check(node, opset)
        if len(node.attrs.get("kernel_shape") or ()) != 2:
            problems.append(f"{node.name} ({node.op}): only 2-D pooling is supported")
        return problems

    def __init__(self, ctx):
        super().__init__(ctx)
        node, shape = ctx.node, ctx.in_shapes[0]
        if len(shape) != 4:
            raise UnsupportedModelError([f"{node.name} ({node.op}): input {shape} is not NCHW"])
        n, c, h, w = shape
        self.kernel = tuple(node.attrs["kernel_shape"])
        self.strides, self.dilations = spatial_params(node, self.kernel)
        ceil = bool(node.attrs.get("ceil_mode", 0))
        self.pads = resolve_pads(node, (h, w), self.kernel, self.strides, self.dilations)
        top, left, bottom, right = self.pads
        self.out_hw = tuple(
            output_size(size, k, st, d, pb, pe, ceil)
            for size, k, st, d, pb, pe in zip(
                (h, w), self.kernel, self.strides, self.dilations, (top, left), (bottom, right)
            )
        )
        # ceil_mode windows may run past the explicit padding: pad further, never read past it
        extra = [
            max(0, (o - 1) * st + (k - 1) * d + 1 - (size + pb + pe))
            for o, st, k, d, size, pb, pe in zip(
                self.out_hw, self.strides, self.kernel, self.dilations, (h, w), (top, left),
                (bottom, right),
            )
        ]  # fmt: skip
        self.full_pads = (top, left, bottom + extra[0], right + extra[1])
        self.padded_shape = None
        self.workspace = None  # bound by the planner: holds the padded input
        # one compiled kernel (float32 only), padding never copied
        self.native = ctx.backend.native_pool and ctx.in_dtypes[0] == np.float32
        if any(self.full_pads) and not self.native:
            self.padded_shape = (n, h + top + bottom + extra[0], w + left + right + extra[1], c)
        self.set_output((n, c, *self.out_hw), ctx.in_dtypes[0], NHWC)

    @property
    def workspace_bytes(self) -> int:
        if self.padded_shape is None:
            return 0
        return int(np.prod(self.padded_shape)) * self.ctx.in_dtypes[0].itemsize

    def taps(self, x):
        """A strided (N, OH, OW, C) view of x for each kernel tap."""
        oh, ow = self.out_hw
        (sh, sw), (dh, dw) = self.strides, self.dilations
        for i in range(self.kernel[0]):
            for j in range(self.kernel[1]):
                yield x[:, i * dh : i * dh + sh * (oh - 1) + 1 : sh,
                        j * dw : j * dw + sw * (ow - 1) + 1 : sw]  # fmt: skip

    def lane_phases(self, ins, outs, lanes):
        """The CPU's compiled kernel, its output rows split across ``lanes`` when large."""
        if not self.native or self.ctx.backend.device != "cpu":
            return None
        from engine.backends.cpu_pool import pool_calls

        return [pool_calls(ins[0], outs[0], self.kind, self.kernel, self.strides,
                           self.dilations, self.pads, self.include_pad, lanes)]  # fmt: skip

    @property
    def include_pad(self) -> bool:
        return bool(self.ctx.node.attrs.get("count_include_pad", 0))

    def pooled(self, x, out, combine) -> None:
        if self.native:
            self.ctx.backend.pool(x, out, self.kind, self.kernel, self.strides, self.dilations,
                                  self.pads, self.include_pad)  # fmt: skip
            return
        if self.padded_shape is not None:
            size = int(np.prod(self.padded_shape))
            padded = self.workspace.view(x.dtype)[:size].reshape(self.padded_shape)
            pad_into(padded, x, self.full_pads, self.fill)
            x = padded
        taps = self.taps(x)
        out[...] = next(taps)
        for tap in taps:
            combine(out, tap, out=out)


@register("MaxPool")
class MaxPool(_Pool):
    kind = "max"
    attributes = {**_Pool.attributes, "storage_order": 0}
    fill = -np.inf

    @classmethod
    def check(cls, node, opset):
        problems = super().check(node, opset)
        if len(node.outputs) > 1 and node.outputs[1]:
            problems.append(f"{node.name} (MaxPool): the Indices output")
        return problems

    def __init__(self, ctx):
        super().__init__(ctx)
        dtype = ctx.in_dtypes[0]
        self.fill = -np.inf if dtype.kind == "f" else np.iinfo(dtype).min  # padding never wins

    def run(self, ins, outs):
        self.pooled(ins[0], outs[0], self.xp.maximum)
        return outs


@register("AveragePool")
class AveragePool(_Pool):
    kind = "average"
    attributes = {**_Pool.attributes, "count_include_pad": 0}

    def __init__(self, ctx):
        super().__init__(ctx)
        shape = ctx.in_shapes[0]
        include_pad = bool(ctx.node.attrs.get("count_include_pad", 0))
        counts = [
            window_counts(size, o, k, st, d, pb, pe, include_pad)
            for size, o, k, st, d, pb, pe in zip(
                shape[2:], self.out_hw, self.kernel, self.strides, self.dilations,
                self.pads[:2], self.pads[2:],
            )
        ]  # fmt: skip
        divisor = np.outer(counts[0], counts[1]).reshape(1, *self.out_hw, 1)
        self.reciprocal = ctx.backend.asarray((1.0 / divisor).astype(ctx.in_dtypes[0]))

    def run(self, ins, outs):
        self.pooled(ins[0], outs[0], self.xp.add)
        if not self.native:  # the kernel divides by the window counts itself
            outs[0] *= self.reciprocal
        return outs


def window_counts(size, out, k, stride, dilation, pad_begin, pad_end, include_pad) -> np.ndarray:
    """How many taps of each output window fall inside the counted region (per axis)."""
    low, high = (-pad_begin, size + pad_end) if include_pad else (0, size)
    starts = np.arange(out) * stride - pad_begin
    taps = starts[:, None] + np.arange(k)[None, :] * dilation
    return np.maximum(((taps >= low) & (taps < high)).sum(axis=1), 1).astype(np.float64)


@register("GlobalAveragePool", "GlobalMaxPool")
class GlobalPool(Op):
    layout = "follow"

    def __init__(self, ctx):
        super().__init__(ctx)
        shape = ctx.in_shapes[0]
        if len(shape) < 3:
            raise UnsupportedModelError([f"{ctx.node.name}: input {shape} has no spatial axes"])
        self.layout_out = NHWC if ctx.in_layouts[0] == NHWC else PLAIN
        self.axes = (1, 2) if self.layout_out == NHWC else tuple(range(2, len(shape)))
        self.reduce = self.xp.mean if ctx.node.op == "GlobalAveragePool" else self.xp.max
        self.set_output(shape[:2] + (1,) * (len(shape) - 2), ctx.in_dtypes[0], self.layout_out)
        # NHWC float32 on the CPU: the compiled pool with one window over the whole image
        # (NumPy's mean over two axes took 30-50 us of a 0.4 ms batch-1 pass here)
        native = ctx.backend.device == "cpu" and ctx.backend.native_pool
        self.native = native and self.layout_out == NHWC and ctx.in_dtypes[0] == np.float32

    def run(self, ins, outs):
        if self.native:
            kernel, args = self.compiled_call(ins, outs)
            kernel(*args)
        else:
            self.reduce(ins[0], axis=self.axes, keepdims=True, out=outs[0])
        return outs

    def compiled_call(self, ins, outs):
        if not self.native:
            return None
        from engine.backends.cpu_pool import pool_calls

        ctx = self.ctx
        kind = "average" if ctx.node.op == "GlobalAveragePool" else "max"
        return pool_calls(ins[0], outs[0], kind, ins[0].shape[1:3], (1, 1), (1, 1), (0, 0, 0, 0),
                          False)[0]  # fmt: skip
