"""The Conv operator: a planned call into the conv algorithm the autotuner chose.

A Conv may carry a max-pool a graph pass fused into it (``POOL_ATTR``: window = stride, no
padding). An algorithm that can pools in its output stage and never stores the full-size map;
with any other, the op runs the conv into its workspace and pools from there."""

from __future__ import annotations

import numpy as np

from engine import chain
from engine.conv import ConvSpec, Epilogue
from engine.errors import UnsupportedModelError
from engine.ops.base import EPILOGUE_ATTR, NHWC, POOL_ATTR, Op, register
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
        self.pool = ctx.node.attrs.get(POOL_ATTR, 1)
        self.choice = ctx.tuner.choose(self.spec, weight, bias)
        self.algorithm = self.choice.algorithm
        s = self.spec
        self.set_output((s.n, s.k, s.out_h // self.pool, s.out_w // self.pool), ctx.in_dtypes[0],
                        NHWC)  # fmt: skip
        self.workspace = None  # bound by the planner

    @property
    def full_elems(self) -> int:
        """Elements of the full-size output kept at the workspace's start when a pool is
        fused (whether or not the algorithm needs it: a fallback algorithm may)."""
        s = self.spec
        return 0 if self.pool == 1 else -(-s.n * s.out_h * s.out_w * s.k // 16) * 16

    @property
    def workspace_bytes(self) -> int:
        elems = max(type(self.algorithm).workspace_elems(self.spec), self.choice.spare_elems)
        return 4 * (self.full_elems + elems)

    def _buffers(self, out):
        """(where the conv writes, the algorithm's workspace): the output itself, or the
        full-size map in the workspace when the algorithm does not pool."""
        workspace = self.workspace.view(np.float32)
        if self.pool == 1 or self.pooled:
            return out, workspace[self.full_elems :]
        s = self.spec
        full = workspace[: s.n * s.out_h * s.out_w * s.k].reshape(s.n, s.out_h, s.out_w, s.k)
        return full, workspace[self.full_elems :]

    def run(self, ins, outs):
        target, workspace = self._buffers(outs[0])
        try:
            self.algorithm(ins[0], target, workspace)
        except Exception as error:
            if not self._fall_back(error):
                raise
            target, workspace = self._buffers(outs[0])
            self.algorithm(ins[0], target, workspace)
        if target is not outs[0]:
            self._pool(target, outs[0])
        return outs

    @property
    def pool_window(self) -> tuple:
        """The fused pool as the pool kernels' (kind, kernel, strides, dilations, pads,
        count_include_pad)."""
        p = self.pool
        return "max", (p, p), (p, p), (1, 1), (0, 0, 0, 0), False

    def _pool(self, full, out) -> None:
        """out = the max over each p x p window of ``full`` (one kernel where the backend has
        one, e.g. inside a captured CUDA graph; NumPy's reduction otherwise)."""
        p, backend = self.pool, self.ctx.backend
        if backend.native_pool:
            backend.pool(full, out, *self.pool_window)
            return
        n, ph, pw, k = out.shape
        self.xp.max(full[:, : ph * p, : pw * p].reshape(n, ph, p, pw, p, k), axis=(2, 4), out=out)

    @property
    def algorithm(self):
        return self._algorithm

    @algorithm.setter
    def algorithm(self, value) -> None:
        self._algorithm = value
        fuse = getattr(value, "fuse_pool", None)  # (a wrapper may not have one)
        self.pooled = self.pool > 1 and fuse is not None and fuse(self.pool)
        chain.changed()  # a chain that calls the old kernel must be rebuilt

    def compiled_call(self, ins, outs):
        call = getattr(self.algorithm, "compiled_call", None)  # (a wrapper may not have one)
        if call is None or (self.pool > 1 and not self.pooled):
            return None
        return call(ins[0], *self._buffers(outs[0]))

    def lane_phases(self, ins, outs, lanes):
        phases = getattr(self.algorithm, "lane_phases", None)  # (a wrapper may not have one)
        target, workspace = self._buffers(outs[0])
        phases = None if phases is None else phases(ins[0], target, workspace, lanes)
        if phases is None or target is outs[0]:
            return phases
        if self.ctx.backend.device != "cpu":
            return None
        from engine.backends.cpu_pool import pool_calls

        return [*phases, pool_calls(target, outs[0], *self.pool_window, lanes)]

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
