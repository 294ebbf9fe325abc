"""Element-wise operators: activations, broadcasting arithmetic, PRelu, standalone BatchNorm."""

from __future__ import annotations

import numpy as np

from engine.activations import apply_activation
from engine.errors import ModelLoadError, UnsupportedModelError
from engine.ops.base import EPILOGUE_ATTR, NHWC, PLAIN, Op, as_nhwc_view, register

ACTIVATION_ATTRS = {
    "Relu": ("relu", {}),
    "Sigmoid": ("sigmoid", {}),
    "Tanh": ("tanh", {}),
    "HardSwish": ("hard_swish", {}),
    "LeakyRelu": ("leaky_relu", {"alpha": 0.01}),
    "HardSigmoid": ("hard_sigmoid", {"alpha": 0.2, "beta": 0.5}),
    "Clip": (
        "clip",
        {"min": float(np.finfo(np.float32).min), "max": float(np.finfo(np.float32).max)},
    ),
}


def activation_params(node, constants) -> tuple[str, float, float] | None:
    """(kind, alpha, beta) of an activation node, or None when it cannot be fused
    (Clip whose bounds are computed at run time)."""
    kind, defaults = ACTIVATION_ATTRS[node.op]
    attrs = {**defaults, **node.attrs}
    if node.op == "LeakyRelu":
        return kind, float(attrs["alpha"]), 0.0
    if node.op == "HardSigmoid":
        return kind, float(attrs["alpha"]), float(attrs["beta"])
    if node.op == "Clip":
        bounds = [float(attrs["min"]), float(attrs["max"])]
        for slot, name in ((0, 1), (1, 2)):
            if len(node.inputs) > name and node.inputs[name]:
                if node.inputs[name] not in constants:
                    return None
                bounds[slot] = float(constants[node.inputs[name]])
        return kind, bounds[0], bounds[1]
    return kind, 0.0, 0.0


class _Elementwise(Op):
    layout = "follow"

    def output_layout(self) -> str:
        return NHWC if NHWC in self.ctx.in_layouts else PLAIN

    @staticmethod
    def clamp_bounds(kind: str, alpha: float, beta: float):
        """(lo, hi, slope) of the compiled kernels' clamp for this activation, or None where
        they cannot apply it (engine/backends/cpu_elementwise.py)."""
        from engine.conv.microkernel import epilogue_bounds
        from engine.conv.spec import Epilogue

        return epilogue_bounds(Epilogue(kind, alpha, beta))

    def compiled_ok(self, ins, outs) -> bool:
        """Float32 on the CPU, every input the output's shape, layout and a contiguous buffer:
        what the compiled element-wise kernels take."""
        out, layouts = outs[0], self.ctx.in_layouts[: len(ins)]
        return (self.ctx.backend.device == "cpu" and out.dtype == np.float32
                and all(layout == self.output_layout() for layout in layouts)
                and all(x is not None and x.shape == out.shape and x.dtype == np.float32
                        and x.flags.c_contiguous for x in ins))  # fmt: skip

    def lane_phases(self, ins, outs, lanes):
        return None  # compiled only where a subclass says so

    def compiled_call(self, ins, outs):
        phases = self.lane_phases(ins, outs, 1)
        return None if phases is None else phases[0][0]

    def operand(self, index: int, ins):
        """Input ``index`` as an array broadcastable in the output's storage layout."""
        value = ins[index]
        if self.output_layout() == NHWC:
            return as_nhwc_view(self.xp, value, self.ctx.in_layouts[index])
        return value


@register("Relu", "Sigmoid", "Tanh", "HardSwish", "LeakyRelu", "HardSigmoid", "Clip")
class Activation(_Elementwise):
    attributes = {"alpha": None, "beta": None, "min": None, "max": None}

    @classmethod
    def check(cls, node, opset):
        allowed = set(ACTIVATION_ATTRS[node.op][1])
        unknown = sorted(set(node.attrs) - allowed)
        problems = [f"{node.name} ({node.op}): unsupported attribute {a!r}" for a in unknown]
        return problems + cls.version_problems(node, opset)

    def __init__(self, ctx):
        super().__init__(ctx)
        constants = {n: c for n, c in zip(ctx.node.inputs, ctx.constants) if c is not None}
        self.params = activation_params(ctx.node, constants)
        if ctx.node.op == "Clip" and ctx.in_dtypes[0].kind != "f":
            self.params = None  # integer Clip: bounds of the input's own type, never floats
        self.set_output(ctx.in_shapes[0], ctx.in_dtypes[0], ctx.in_layouts[0])

    def run(self, ins, outs):
        out = outs[0]
        out[...] = ins[0]
        if self.params is None:  # Clip with run-time (or integer) bounds given as inputs
            low, high = (ins[i] if len(ins) > i else None for i in (1, 2))
            if low is not None or high is not None:
                self.xp.clip(out, low, high, out=out)
        else:
            apply_activation(self.xp, out, *self.params)
        return outs

    def lane_phases(self, ins, outs, lanes):
        """ReLU, LeakyRelu and constant-bound Clip compiled, split across ``lanes`` when large."""
        bounds = None if self.params is None else self.clamp_bounds(*self.params)
        if bounds is None or not self.compiled_ok(ins[:1], outs):
            return None
        from engine.backends.cpu_elementwise import clamp_calls

        return [clamp_calls(ins[0], outs[0], bounds, lanes)]


BINARY = {"Add": "add", "Sub": "subtract", "Mul": "multiply", "Div": "divide", "Sum": "add",
          "Max": "maximum", "Min": "minimum", "Pow": "power"}  # fmt: skip


def broadcast_shapes(shapes, node) -> tuple:
    try:
        return tuple(np.broadcast_shapes(*shapes))
    except ValueError as error:
        raise ModelLoadError(f"{node.name} ({node.op}): cannot broadcast {shapes}") from error


@register(*BINARY)
class Binary(_Elementwise):
    """Add/Sub/Mul/Div/Max/Min/Pow and n-ary Sum with NumPy broadcasting."""

    @classmethod
    def check(cls, node, opset):
        problems = super().check(node, opset)
        if node.op in ("Add", "Sub", "Mul", "Div") and node.attrs.get("broadcast"):
            problems = [f"{node.name} ({node.op}): legacy 'broadcast' attribute"]
        return problems

    @classmethod
    def nhwc_ok(cls, ctx):
        return len(broadcast_shapes(ctx.in_shapes, ctx.node)) == 4 and all(
            len(s) <= 4 for s in ctx.in_shapes
        )

    def __init__(self, ctx):
        super().__init__(ctx)
        op = ctx.node.op
        shape = broadcast_shapes(ctx.in_shapes, ctx.node)
        # Pow's result has the base's type; the others promote like NumPy
        dtype = ctx.in_dtypes[0] if op == "Pow" else np.result_type(*ctx.in_dtypes)
        self.ufunc = binary_function(self.xp, op, dtype)
        #: a following activation fused in (engine/passes.py), or None
        self.epilogue = ctx.node.attrs.get(EPILOGUE_ATTR)
        self.set_output(shape, dtype, self.output_layout())

    def run(self, ins, outs):
        out = outs[0]
        if len(ins) == 1:  # Sum, Max or Min of one input
            out[...] = self.operand(0, ins)
            return outs
        self.ufunc(self.operand(0, ins), self.operand(1, ins), out=out)
        for index in range(2, len(ins)):
            self.ufunc(out, self.operand(index, ins), out=out)
        if self.epilogue is not None:
            e = self.epilogue
            apply_activation(self.xp, out, e.kind, e.alpha, e.beta)
        return outs

    def lane_phases(self, ins, outs, lanes):
        """A float32 Add of two inputs on the CPU, with its fused ReLU or LeakyRelu, compiled
        so that a residual Add joins the compiled steps around it (engine.chain); split across
        ``lanes`` when large."""
        if self.ctx.node.op != "Add" or len(ins) != 2 or not self.compiled_ok(ins, outs):
            return None
        bounds = None
        if self.epilogue is not None:
            e = self.epilogue
            if (bounds := self.clamp_bounds(e.kind, e.alpha, e.beta)) is None:
                return None
        from engine.backends.cpu_elementwise import add_calls

        return [add_calls(ins[0], ins[1], outs[0], bounds, lanes)]


def binary_function(xp, op: str, dtype: np.dtype):
    """The NumPy-style function computing ``op`` into an output of ``dtype``."""
    if op == "Pow":
        # an integer base with a float exponent: computed in floating point, cast back
        return lambda a, b, out: xp.power(a, b, out=out, casting="unsafe")
    if op == "Div" and dtype.kind in "iu":
        return lambda a, b, out: truncated_divide(xp, a, b, out)
    return getattr(xp, BINARY[op])


def truncated_divide(xp, a, b, out) -> None:
    """Integer division rounding toward zero, as ONNX (and C) define it."""
    xp.floor_divide(a, b, out=out)
    if out.dtype.kind == "i":  # floor_divide rounds toward -inf: step back up where signs differ
        out += (xp.remainder(a, b) != 0) & ((a < 0) != (b < 0))


@register("PRelu")
class PRelu(_Elementwise):
    @classmethod
    def nhwc_ok(cls, ctx):
        return len(ctx.in_shapes[1]) <= 4

    def __init__(self, ctx):
        super().__init__(ctx)
        shape = broadcast_shapes(ctx.in_shapes, ctx.node)
        if shape != ctx.in_shapes[0]:
            raise ModelLoadError(f"{ctx.node.name} (PRelu): slope {ctx.in_shapes[1]} too large")
        self.set_output(shape, ctx.in_dtypes[0], self.output_layout())

    def run(self, ins, outs):
        x, slope, out = ins[0], self.operand(1, ins), outs[0]
        self.xp.multiply(x, slope, out=out)
        self.xp.copyto(out, x, where=x >= 0)
        return outs


@register("BatchNormalization")
class BatchNorm(_Elementwise):
    """Inference BatchNorm as a per-channel scale and shift (when no conv absorbed it)."""

    attributes = {"epsilon": 1e-5, "momentum": 0.9, "spatial": 1, "training_mode": 0,
                  "is_test": 1}  # fmt: skip
    constant_inputs = (1, 2, 3, 4)

    @classmethod
    def check(cls, node, opset):
        problems = super().check(node, opset)
        if node.attrs.get("training_mode", 0) or not node.attrs.get("spatial", 1):
            problems.append(f"{node.name} (BatchNormalization): training_mode or spatial=0")
        if any(node.outputs[1:]):
            problems.append(f"{node.name} (BatchNormalization): running-statistics outputs")
        return problems

    def __init__(self, ctx):
        super().__init__(ctx)
        params = [ctx.const(i) for i in range(1, 5)]
        if any(p is None for p in params):
            raise UnsupportedModelError([f"{ctx.node.name}: BatchNorm parameters must be constant"])
        scale, shift = bn_scale_shift(*params, float(self.attr("epsilon")))
        rank = len(ctx.in_shapes[0])
        shape = (-1,) if self.output_layout() == NHWC else (-1,) + (1,) * (rank - 2)
        self.scale = ctx.backend.asarray(scale.reshape(shape))
        self.shift = ctx.backend.asarray(shift.reshape(shape))
        self.set_output(ctx.in_shapes[0], ctx.in_dtypes[0], self.output_layout())

    def run(self, ins, outs):
        self.xp.multiply(ins[0], self.scale, out=outs[0])
        outs[0] += self.shift
        return outs


def bn_scale_shift(gamma, beta, mean, var, epsilon) -> tuple[np.ndarray, np.ndarray]:
    """y = x * scale + shift, computed in float64 then rounded once."""
    scale = np.asarray(gamma, np.float64) / np.sqrt(np.asarray(var, np.float64) + epsilon)
    shift = np.asarray(beta, np.float64) - np.asarray(mean, np.float64) * scale
    return scale.astype(np.float32), shift.astype(np.float32)
