"""Operators that move data without arithmetic: reshapes (views), Transpose, Concat, Identity."""

from __future__ import annotations

import math

import numpy as np

from engine.errors import ModelLoadError, UnsupportedModelError
from engine.ops.base import NHWC, PLAIN, TO_NHWC, Op, as_nhwc_view, normalize_axis, register


class _View(Op):
    """Output 0 is a view of input 0 in a new logical shape (plain layout only)."""

    allocates = False
    reshapes_input = True
    max_version = 25  # versions 23 to 25 only added element types
    constant_inputs = (1,)  # shape or axes

    def run(self, ins, outs):
        return [ins[0].reshape(self.out_shapes[0])]


def _axes_from(ctx, attr_name="axes", input_index=1) -> tuple | None:
    """Axes given as an attribute (older opsets) or a constant input (newer)."""
    if attr_name in ctx.node.attrs:
        return tuple(ctx.node.attrs[attr_name])
    if ctx.has_input(input_index):
        value = ctx.const(input_index)
        if value is None:
            raise UnsupportedModelError([f"{ctx.node.name} ({ctx.node.op}): axes must be constant"])
        return tuple(int(a) for a in value.reshape(-1))
    return None


@register("Flatten")
class Flatten(_View):
    attributes = {"axis": 1}

    def __init__(self, ctx):
        super().__init__(ctx)
        shape, axis = ctx.in_shapes[0], int(self.attr("axis"))
        # axis lies in [-rank, rank]: rank itself means "everything in the first dimension"
        axis = axis if axis == len(shape) else normalize_axis(axis, len(shape), ctx.node)
        self.set_output((math.prod(shape[:axis]), math.prod(shape[axis:])), ctx.in_dtypes[0])


@register("Reshape")
class Reshape(_View):
    attributes = {"allowzero": 0, "shape": None}

    def __init__(self, ctx):
        super().__init__(ctx)
        target = ctx.node.attrs.get("shape") if len(ctx.node.inputs) < 2 else ctx.const(1)
        if target is None:
            raise UnsupportedModelError([f"{ctx.node.name} (Reshape): shape must be constant"])
        shape = reshape_target(ctx.in_shapes[0], [int(d) for d in np.reshape(target, -1)],
                               bool(self.attr("allowzero")), ctx.node)  # fmt: skip
        self.set_output(shape, ctx.in_dtypes[0])


def reshape_target(shape, target, allowzero, node) -> tuple:
    out = [shape[i] if d == 0 and not allowzero else d for i, d in enumerate(target)]
    if out.count(-1) > 1:
        raise ModelLoadError(f"{node.name} (Reshape): more than one -1 in {target}")
    known = math.prod(d for d in out if d != -1)
    if -1 in out:
        out[out.index(-1)] = math.prod(shape) // known if known else 0
    if math.prod(out) != math.prod(shape):
        raise ModelLoadError(f"{node.name} (Reshape): cannot reshape {shape} to {target}")
    return tuple(out)


@register("Squeeze")
class Squeeze(_View):
    attributes = {"axes": None}

    def __init__(self, ctx):
        super().__init__(ctx)
        shape = ctx.in_shapes[0]
        axes = _axes_from(ctx)
        if axes is None:
            axes = tuple(i for i, d in enumerate(shape) if d == 1)
        axes = {normalize_axis(a, len(shape), ctx.node) for a in axes}
        if any(shape[a] != 1 for a in axes):
            raise ModelLoadError(f"{ctx.node.name} (Squeeze): axes {sorted(axes)} of {shape}")
        out = tuple(d for i, d in enumerate(shape) if i not in axes)
        self.set_output(out, ctx.in_dtypes[0])


@register("Unsqueeze")
class Unsqueeze(_View):
    attributes = {"axes": None}

    def __init__(self, ctx):
        super().__init__(ctx)
        shape = list(ctx.in_shapes[0])
        axes = _axes_from(ctx)
        if axes is None:
            raise UnsupportedModelError([f"{ctx.node.name} (Unsqueeze): no axes"])
        rank = len(shape) + len(axes)
        for axis in sorted(normalize_axis(a, rank, ctx.node) for a in axes):
            shape.insert(axis, 1)
        self.set_output(shape, ctx.in_dtypes[0])


@register("Identity")
class Identity(Op):
    layout = "follow"
    allocates = False
    reshapes_input = True
    max_version = 25  # versions 23 to 25 only added element types

    def __init__(self, ctx):
        super().__init__(ctx)
        self.set_output(ctx.in_shapes[0], ctx.in_dtypes[0], ctx.in_layouts[0])

    def run(self, ins, outs):
        return [ins[0]]


@register("Dropout")
class Dropout(Op):
    """Inference Dropout: a copy of the input and, when asked for, an all-true mask.

    The load-time passes remove it where its output is not a graph output."""

    attributes = {"ratio": 0.5, "seed": None, "is_test": 1}
    layout = "follow"
    constant_inputs = (2,)  # training_mode

    @classmethod
    def check(cls, node, opset):
        problems = super().check(node, opset)
        if not node.attrs.get("is_test", 1):
            problems.append(f"{node.name} (Dropout): training mode (is_test=0)")
        return problems

    def __init__(self, ctx):
        super().__init__(ctx)
        if ctx.has_input(2):
            training = ctx.const(2)
            if training is None or bool(training):
                raise UnsupportedModelError([f"{ctx.node.name} (Dropout): training mode"])
        shape, layout = ctx.in_shapes[0], ctx.in_layouts[0]
        self.set_output(shape, ctx.in_dtypes[0], layout)
        self.mask = len(ctx.node.outputs) > 1 and bool(ctx.node.outputs[1])
        if self.mask:
            self.set_output(shape, np.bool_, layout)

    def run(self, ins, outs):
        outs[0][...] = ins[0]
        if self.mask:
            outs[1][...] = True
        return outs


@register("Transpose")
class Transpose(Op):
    attributes = {"perm": None}
    max_version = 25  # versions 23 to 25 only added element types

    def __init__(self, ctx):
        super().__init__(ctx)
        shape = ctx.in_shapes[0]
        self.perm = tuple(self.attr("perm") or reversed(range(len(shape))))
        if sorted(self.perm) != list(range(len(shape))):
            raise ModelLoadError(f"{ctx.node.name} (Transpose): perm {self.perm} for {shape}")
        self.set_output(tuple(shape[p] for p in self.perm), ctx.in_dtypes[0])

    def run(self, ins, outs):
        outs[0][...] = ins[0].transpose(self.perm)
        return outs


@register("Concat")
class Concat(Op):
    attributes = {"axis": None}
    layout = "follow"

    @classmethod
    def nhwc_ok(cls, ctx):
        return all(len(s) == 4 for s in ctx.in_shapes)

    def __init__(self, ctx):
        super().__init__(ctx)
        shapes = ctx.in_shapes
        axis = normalize_axis(self.attr("axis") if "axis" in ctx.node.attrs else 1,
                              len(shapes[0]), ctx.node)  # fmt: skip
        rest = {s[:axis] + s[axis + 1 :] for s in shapes}
        if len(rest) != 1:
            raise ModelLoadError(f"{ctx.node.name} (Concat): shapes {shapes} on axis {axis}")
        shape = list(shapes[0])
        shape[axis] = sum(s[axis] for s in shapes)
        self.nhwc = NHWC in ctx.in_layouts
        self.axis = TO_NHWC.index(axis) if self.nhwc else axis
        self.set_output(shape, np.result_type(*ctx.in_dtypes), NHWC if self.nhwc else PLAIN)

    def run(self, ins, outs):
        if self.nhwc:
            ins = [as_nhwc_view(self.xp, x, lay) for x, lay in zip(ins, self.ctx.in_layouts)]
        self.xp.concatenate(ins, axis=self.axis, out=outs[0])
        return outs
