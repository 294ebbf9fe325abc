"""Tensors made from shapes: ConstantOfShape (folded at load when shapes are known)."""

from __future__ import annotations

import numpy as np

from engine.errors import UnsupportedModelError
from engine.ops.base import Op, register


@register("ConstantOfShape")
class ConstantOfShape(Op):
    """A tensor of the given shape filled with ``value`` (float32 zero by default)."""

    attributes = {"value": None}
    max_version = 25  # versions 20 to 25 only added element types
    constant_inputs = (0,)

    def __init__(self, ctx):
        super().__init__(ctx)
        shape = ctx.const(0)
        if shape is None:
            raise UnsupportedModelError([f"{ctx.node.name} (ConstantOfShape): shape at run time"])
        value = self.attr("value")
        self.value = np.zeros(1, np.float32) if value is None else np.asarray(value).reshape(-1)
        self.set_output([int(d) for d in np.reshape(shape, -1)], self.value.dtype)

    def run(self, ins, outs):
        outs[0][...] = self.value[0]
        return outs
