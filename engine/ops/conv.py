"""The Conv operator: a planned call into the conv algorithm the autotuner chose."""

from __future__ import annotations

import numpy as np

from engine import chain
from engine.conv import ConvSpec, Epilogue
from engine.errors import UnsupportedModelError
from engine.ops.base import EPILOGUE_ATTR, NHWC, Op, register
from engine.ops.window import resolve_pads, spatial_params


@register("Conv")
class Conv(Op):
    attributes = {"auto_pad": "NOTSET", "dilations": None, "group": 1, "kernel_shape": None,
                  "pads": None, "strides": None}  # fmt: skip
    layout = NHWC
    constant_inputs = (1, 2)

    @classmethod
    def check(cls, node, opset):
        problems = super().check(node, opset)
        kernel = node.attrs.get("kernel_shape")
        if kernel is not None and len(kernel) != 2:
            problems.append(f"{node.name} (Conv): {len(kernel)}-D convolution (only 2-D)")
        return problems

    def __init__(self, ctx):
        super().__init__(ctx)
        self.spec = conv_spec(ctx)
        weight, bias = ctx.const(1), ctx.const(2) if ctx.has_input(2) else None
        self.choice = ctx.tuner.choose(self.spec, weight, bias)
        self.algorithm = self.choice.algorithm
        s = self.spec
        self.set_output((s.n, s.k, s.out_h, s.out_w), ctx.in_dtypes[0], NHWC)
        self.workspace = None  # bound by the planner

    @property
    def workspace_bytes(self) -> int:
        return 4 * type(self.algorithm).workspace_elems(self.spec)

    def run(self, ins, outs):
        try:
            self.algorithm(ins[0], outs[0], self.workspace.view(np.float32))
        except Exception as error:
            if not self._fall_back(error):
                raise
            self.algorithm(ins[0], outs[0], self.workspace.view(np.float32))
        return outs

    @property
    def algorithm(self):
        return self._algorithm

    @algorithm.setter
    def algorithm(self, value) -> None:
        self._algorithm = value
        chain.changed()  # a chain that calls the old kernel must be rebuilt

    def compiled_call(self, ins, outs):
        call = getattr(self.algorithm, "compiled_call", None)  # (a wrapper may not have one)
        return None if call is None else call(ins[0], outs[0], self.workspace.view(np.float32))

    def lane_phases(self, ins, outs, lanes):
        phases = getattr(self.algorithm, "lane_phases", None)  # (a wrapper may not have one)
        workspace = self.workspace.view(np.float32)
        return None if phases is None else phases(ins[0], outs[0], workspace, lanes)

    def _fall_back(self, error) -> bool:
        """After an out-of-memory failure, switch for good to the tuner's runner-up that fits
        the planned workspace (no re-tuning); False when it was another error or none fits."""
        if not self.ctx.backend.is_out_of_memory(error):
            return False
        fallback = self.ctx.tuner.runner_up(self.choice, self.workspace.nbytes // 4)
        if fallback is None:
            return False
        self.choice, self.algorithm = fallback, fallback.algorithm
        return True


def conv_spec(ctx) -> ConvSpec:
    node = ctx.node
    x_shape, w = ctx.in_shapes[0], ctx.const(1)
    if w is None or (ctx.has_input(2) and ctx.const(2) is None):
        raise UnsupportedModelError([f"{node.name} (Conv): weights and bias must be constants"])
    if len(x_shape) != 4 or w.ndim != 4:
        problem = f"{node.name} (Conv): input {x_shape} and weights {w.shape} are not 2-D NCHW"
        raise UnsupportedModelError([problem])
    n, c, h, width = x_shape
    k, cg, r, s = w.shape
    groups = int(node.attrs.get("group", 1))
    if cg * groups != c or k % groups:
        problem = f"{node.name} (Conv): weights {w.shape} do not fit {x_shape}, group={groups}"
        raise UnsupportedModelError([problem])
    strides, dilations = spatial_params(node, (r, s))
    pads = resolve_pads(node, (h, width), (r, s), strides, dilations)
    epilogue = node.attrs.get(EPILOGUE_ATTR) or Epilogue()
    return ConvSpec(n, c, h, width, k, r, s, pads, strides, dilations, groups, epilogue=epilogue,
                    threads=ctx.threads)  # fmt: skip
