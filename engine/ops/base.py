"""The operator interface, the registry, and the NHWC layout helpers every op shares.

Inside the engine a 4-D activation is stored NHWC (``layout == "nhwc"``); every other value is
stored in its logical ONNX shape (``"plain"``). Shapes an op sees are always logical (NCHW).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import onnx.defs

from engine.graph import Node

NHWC, PLAIN = "nhwc", "plain"
TO_NHWC, TO_NCHW = (0, 2, 3, 1), (0, 3, 1, 2)
#: node attribute holding the activation (engine.conv.Epilogue) a graph pass fused into a Conv
#: or an Add (engine/passes.py)
EPILOGUE_ATTR = "_epilogue"
#: node attribute holding the window (= stride) of a max-pool a graph pass fused into a Conv
POOL_ATTR = "_pool"

REGISTRY: dict[str, type[Op]] = {}


def register(*names: str):
    """Class decorator: the op implements these ONNX operator names."""

    def wrap(cls):
        for name in names:
            REGISTRY[name] = cls
        return cls

    return wrap


def physical_shape(shape: tuple, layout: str) -> tuple:
    return tuple(shape[i] for i in TO_NHWC) if layout == NHWC else tuple(shape)


def as_nhwc_view(xp, array, layout: str):
    """A view of a value with rank <= 4, broadcastable against an NHWC tensor."""
    if layout == NHWC:
        return array
    array = xp.asarray(array)
    array = array.reshape((1,) * (4 - array.ndim) + array.shape)
    return array.transpose(TO_NHWC)


@dataclass
class OpContext:
    """What an op may know when it is planned: input shapes, dtypes, layouts and constants."""

    node: Node
    opset: int
    backend: object
    in_shapes: list[tuple]
    in_dtypes: list[np.dtype]
    in_layouts: list[str]
    constants: list[np.ndarray | None]  # host value of each input that is a constant
    tuner: object = None
    threads: int = 0  # CPU threads an op may use (ConvSpec.threads)

    @property
    def xp(self):
        return self.backend.xp

    def attr(self, name, default=None):
        return self.node.attrs.get(name, default)

    def const(self, index: int) -> np.ndarray | None:
        """The constant value of input ``index``; None when absent or computed at run time."""
        return self.constants[index] if index < len(self.constants) else None

    def has_input(self, index: int) -> bool:
        return index < len(self.node.inputs) and bool(self.node.inputs[index])


class Op:
    """One planned operator. Built per input shapes; ``run`` writes into preallocated outputs."""

    #: attribute name -> default; anything else on a node is refused at load.
    attributes: ClassVar[dict] = {}
    #: output 0 is always a view of input 0 (a reshape): a compiled chain (engine/chain.py)
    #: runs on across it, its output being the same memory on every call
    reshapes_input: ClassVar[bool] = False
    #: "nhwc": 4-D inputs must be NHWC; "follow": NHWC when an input is; "plain": logical layout.
    layout: ClassVar[str] = PLAIN
    #: False when outputs are views of inputs (no buffer is planned for them).
    allocates: ClassVar[bool] = True
    #: the newest ONNX version of the operator whose semantics this class implements; versions
    #: after it are refused until someone checks what they changed.
    max_version: ClassVar[int] = 22
    #: indices of inputs whose values the op needs when it is planned (weights, shapes, axes).
    constant_inputs: ClassVar[tuple[int, ...]] = ()

    @classmethod
    def check(cls, node: Node, opset: int) -> list[str]:
        """Problems that make this node unsupported: unknown attributes, too new a version."""
        # attributes starting with "_" are the engine's own, set by graph passes
        unknown = sorted(a for a in set(node.attrs) - set(cls.attributes) if a[0] != "_")
        problems = [f"{node.name} ({node.op}): unsupported attribute {a!r}" for a in unknown]
        return problems + cls.version_problems(node, opset)

    @classmethod
    def version_problems(cls, node: Node, opset: int) -> list[str]:
        try:
            version = onnx.defs.get_schema(node.op, opset).since_version
        except onnx.defs.SchemaError:
            return [f"{node.name} ({node.op}): not an operator of opset {opset}"]
        if version > cls.max_version:
            return [f"{node.name} ({node.op}): version {version} (opset {opset}) is newer than "
                    f"the implemented version {cls.max_version}"]  # fmt: skip
        return []

    @classmethod
    def wants_nhwc(cls, ctx: OpContext) -> bool:
        """Whether this node runs on NHWC inputs, given where its inputs are."""
        if cls.layout == NHWC:
            return True
        return cls.layout == "follow" and NHWC in ctx.in_layouts and cls.nhwc_ok(ctx)

    @classmethod
    def nhwc_ok(cls, ctx: OpContext) -> bool:
        return True

    def __init__(self, ctx: OpContext):
        self.ctx = ctx
        self.xp = ctx.xp
        self.out_shapes: list[tuple] = []
        self.out_dtypes: list[np.dtype] = []
        self.out_layouts: list[str] = []

    def attr(self, name):
        return self.ctx.node.attrs.get(name, self.attributes.get(name))

    def set_output(self, shape, dtype=np.float32, layout=PLAIN) -> None:
        self.out_shapes.append(tuple(int(d) for d in shape))
        self.out_dtypes.append(np.dtype(dtype))
        self.out_layouts.append(layout)

    def run(self, ins: list, outs: list) -> list:
        raise NotImplementedError

    def compiled_call(self, ins: list, outs: list):
        """(compiled kernel, its arguments) doing exactly what ``run(ins, outs)`` does, for
        these same buffers on every call, or None; see engine.chain."""
        return None

    def lane_phases(self, ins: list, outs: list, lanes: int):
        """``run(ins, outs)`` as phases of (compiled kernel, arguments) per lane, run in order
        with every lane's share of a phase done before the next starts (engine/lanes.py), or
        None. By default the whole op on lane 0: ``[[compiled_call]]``."""
        call = self.compiled_call(ins, outs)
        return None if call is None else [[call]]


class LayoutConvert(Op):
    """A planned copy between NCHW and NHWC storage, inserted where layouts meet."""

    def __init__(self, ctx: OpContext, to: str):
        super().__init__(ctx)
        self.perm = TO_NHWC if to == NHWC else TO_NCHW
        self.set_output(ctx.in_shapes[0], ctx.in_dtypes[0], to)

    def run(self, ins, outs):
        outs[0][...] = ins[0].transpose(self.perm)
        return outs

    def lane_phases(self, ins, outs, lanes):
        """Compiled for contiguous float32 on the CPU, split across ``lanes`` by rows."""
        x, y = ins[0], outs[0]
        if (self.ctx.backend.device != "cpu" or x.dtype != np.float32 or y.dtype != np.float32
                or not x.flags.c_contiguous or not y.flags.c_contiguous):  # fmt: skip
            return None
        from engine.backends.cpu_layout import convert_calls

        return [convert_calls(x, y, self.perm == TO_NHWC, lanes)]


def normalize_axis(axis: int, rank: int, node: Node) -> int:
    from engine.errors import UnsupportedModelError

    if not -rank <= axis < rank:
        raise UnsupportedModelError([f"{node.name} ({node.op}): axis {axis} for rank {rank}"])
    return axis % rank
