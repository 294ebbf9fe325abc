"""Local response normalisation across channels (AlexNet, GoogLeNet, ZFNet)."""

from __future__ import annotations

from engine.errors import UnsupportedModelError
from engine.ops.base import NHWC, PLAIN, Op, register


@register("LRN")
class LRN(Op):
    """y = x / (bias + alpha / size * sum of x^2 over ``size`` neighbouring channels) ^ beta."""

    attributes = {"alpha": 1e-4, "beta": 0.75, "bias": 1.0, "size": None}
    layout = "follow"

    @classmethod
    def nhwc_ok(cls, ctx):
        return len(ctx.in_shapes[0]) == 4

    def __init__(self, ctx):
        super().__init__(ctx)
        shape, dtype = ctx.in_shapes[0], ctx.in_dtypes[0]
        if len(shape) < 3 or self.attr("size") is None:
            raise UnsupportedModelError([f"{ctx.node.name} (LRN): input {shape} or no size"])
        self.size = int(self.attr("size"))
        self.alpha, self.beta = float(self.attr("alpha")), float(self.attr("beta"))
        self.bias = float(self.attr("bias"))
        layout = NHWC if ctx.in_layouts[0] == NHWC else PLAIN
        self.axis = len(shape) - 1 if layout == NHWC else 1
        self.before = (self.size - 1) // 2  # channels below c in c's window; the rest above
        padded = list(shape if layout == PLAIN else (shape[0], *shape[2:], shape[1]))
        padded[self.axis] += self.size - 1
        # scratch owned by this op: the zero-padded squares and the window sums
        self.squares = ctx.backend.zeros(tuple(padded), dtype)
        self.sums = ctx.backend.empty(tuple(padded[: self.axis] + [shape[1]]
                                            + padded[self.axis + 1 :]), dtype)  # fmt: skip
        self.set_output(shape, dtype, layout)

    def _channels(self, array, start, stop):
        index = [slice(None)] * array.ndim
        index[self.axis] = slice(start, stop)
        return array[tuple(index)]

    def run(self, ins, outs):
        xp, x, out = self.xp, ins[0], outs[0]
        channels = x.shape[self.axis]
        inner = self._channels(self.squares, self.before, self.before + channels)
        xp.multiply(x, x, out=inner)
        self.sums[...] = self._channels(self.squares, 0, channels)
        for offset in range(1, self.size):
            self.sums += self._channels(self.squares, offset, offset + channels)
        self.sums *= self.alpha / self.size
        self.sums += self.bias
        xp.power(self.sums, -self.beta, out=self.sums)
        xp.multiply(x, self.sums, out=out)
        return outs
