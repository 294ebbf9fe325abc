"""A plan: the graph specialised to fixed input shapes, with every buffer allocated up front.

Planning decides each value's storage layout (NHWC for 4-D activations between layout-aware ops),
inserts the layout copies where layouts meet, builds each op for its shapes (conv algorithms are
chosen here), and packs buffers into reusable slots by lifetime. ``execute`` then only calls ops.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from engine import chain
from engine.graph import Graph
from engine.ops import NHWC, PLAIN, REGISTRY, LayoutConvert, Op, OpContext
from engine.ops.base import physical_shape


@dataclass
class Step:
    op: Op
    inputs: list[str]
    outputs: list[str]
    buffers: list = field(default_factory=list)


@dataclass
class _Value:
    shape: tuple
    dtype: np.dtype
    layout: str = PLAIN
    root: str = ""  # the value whose storage this one views


_NONE = _Value((), np.dtype(np.float32))


class Plan:
    """The graph specialised to ``input_shapes``; ``execute`` runs it without allocating."""

    def __init__(
        self, graph: Graph, backend, input_shapes: dict[str, tuple], tuner, constants, threads=0
    ):
        self.graph, self.backend, self.tuner = graph, backend, tuner
        self.threads = threads  # CPU threads each op may use; 0: every core (ConvSpec.threads)
        self.constants = constants  # name -> device array, shared by all plans of a model
        self.values: dict[str, _Value] = {}
        self.steps: list[Step] = []
        self._converted: dict[tuple[str, str], str] = {}
        for info in graph.inputs:
            shape = tuple(input_shapes[info.name])
            self.values[info.name] = _Value(shape, np.dtype(info.dtype), PLAIN, info.name)
        for node in graph.nodes:
            self._add_node(node)
        self.outputs = [self._convert(o.name, PLAIN) for o in graph.outputs]
        self.inputs = {}
        for info in graph.inputs:
            value = self.values[info.name]
            self.inputs[info.name] = backend.zeros(shape_of(value), value.dtype)
        self._env = {**self.constants, **self.inputs}  # value name -> array, for execute
        self._segments: list | None = None  # steps and chains, after the first call
        self._chained = False  # whether every segment is a compiled chain
        self._lanes = None  # held through a pass with several lane chains (engine/lanes.py)
        self._lone = None  # (chain, graph outputs) when the segments are that one chain
        self._allocate()

    # planning -------------------------------------------------------------------------------
    def _context(self, node, names) -> OpContext:
        consts = [self.graph.constants.get(n) if n else None for n in names]
        values = [
            self.values.get(n) or (_Value(tuple(c.shape), c.dtype) if c is not None else _NONE)
            for n, c in zip(names, consts)
        ]
        return OpContext(node, self.graph.opset, self.backend, [v.shape for v in values],
                         [v.dtype for v in values], [v.layout for v in values], consts,
                         self.tuner, self.threads)  # fmt: skip

    def _add_node(self, node) -> None:
        cls = REGISTRY[node.op]
        ctx = self._context(node, node.inputs)
        want = NHWC if cls.wants_nhwc(ctx) else PLAIN
        names = []
        for index, name in enumerate(node.inputs):
            value = self.values.get(name)
            needs = want if value is not None and len(value.shape) == 4 else PLAIN
            if cls.layout == NHWC and index > 0:
                needs = PLAIN
            names.append(self._convert(name, needs) if value is not None else name)
        op = cls(self._context(node, names))
        self._record(op, names, node.outputs)

    def _record(self, op: Op, inputs: list[str], outputs: list[str]) -> None:
        for index, name in enumerate(outputs):
            if not name:
                continue
            root = name if op.allocates else self.values[inputs[0]].root
            self.values[name] = _Value(op.out_shapes[index], op.out_dtypes[index],
                                       op.out_layouts[index], root)  # fmt: skip
        self.steps.append(Step(op, inputs, outputs))

    def _convert(self, name: str, layout: str) -> str:
        """The name of ``name`` stored in ``layout``, adding a copy step the first time."""
        value = self.values[name]
        if value.layout == layout or len(value.shape) != 4:
            return name
        key = (name, layout)
        if key not in self._converted:
            new = f"{name}@{layout}"
            ctx = self._context(None, [name])
            self._record(LayoutConvert(ctx, layout), [name], [new])
            self._converted[key] = new
        return self._converted[key]

    # buffers --------------------------------------------------------------------------------
    def _last_uses(self) -> dict[str, int]:
        last: dict[str, int] = {}
        for index, step in enumerate(self.steps):
            for name in step.inputs:
                if name in self.values:
                    last[self.values[name].root] = index
        for name in self.outputs:
            last[self.values[name].root] = len(self.steps)
        return last

    def _allocate(self) -> None:
        """Give each allocated value a slot whose previous tenant is dead; size slots to fit.

        Only sizes are decided here: ``bind`` lays the plan onto an Arena, which every plan of a
        model shares (one engine thread runs one plan at a time).
        """
        last = self._last_uses()
        slots: list[int] = []  # bytes
        free_after: list[int] = []
        self.assignment: dict[str, int] = {}
        for index, step in enumerate(self.steps):
            if not step.op.allocates:
                continue
            for name in filter(None, step.outputs):
                need = nbytes(self.values[name])
                idle = [s for s in range(len(slots)) if free_after[s] < index]
                fits = [s for s in idle if slots[s] >= need]
                slot = min(fits, key=slots.__getitem__) if fits else (
                    max(idle, key=slots.__getitem__) if idle else None)  # fmt: skip
                if slot is None:
                    slots.append(0)
                    free_after.append(0)
                    slot = len(slots) - 1
                slots[slot] = max(slots[slot], need)
                free_after[slot] = last.get(name, index)
                self.assignment[name] = slot
        self.slot_bytes = slots
        self.workspace_bytes = max((getattr(s.op, "workspace_bytes", 0) for s in self.steps),
                                   default=0)  # fmt: skip

    def bind(self, arena: Arena) -> None:
        """Point every step's output buffers and scratch space into ``arena``."""
        self._segments = None
        for step in self.steps:
            if step.op.allocates:
                step.buffers = [self._view(arena.slots[self.assignment[n]], self.values[n])
                                if n else None for n in step.outputs]  # fmt: skip
            if hasattr(step.op, "workspace"):
                step.op.workspace = arena.workspace

    @staticmethod
    def _view(slot, value: _Value):
        return slot[: nbytes(value)].view(value.dtype).reshape(shape_of(value))

    def lanes(self) -> list[Plan]:
        """The plans that run at once, one per arena (see SplitPlan): just this one."""
        return [self]

    @property
    def ranges(self) -> list[tuple[int, int]]:
        """The batch range each of ``lanes()`` runs: the whole of the first input's batch."""
        first = self.inputs[self.graph.inputs[0].name]
        return [(0, first.shape[0] if first.ndim else 1)]

    def use_inputs(self, arrays: dict) -> None:
        """Read the graph inputs from ``arrays`` (e.g. views of a larger staging buffer)."""
        self.inputs.update(arrays)
        self._env.update(arrays)
        self._segments = None

    # running --------------------------------------------------------------------------------
    def execute(self, run_step=None) -> list:
        """Run every step on the staged inputs; returns the device arrays of the graph outputs.

        ``run_step(step, ins) -> outs`` replaces the plain ``step.op.run`` (e.g. to time each
        step). The value table is kept between calls: each call rewrites every entry it reads.
        On a CPU plan the second and later plain calls run runs of compiled steps as one call
        each (engine.chain).
        """
        env = self._env
        if run_step is None and self._segments is not None:
            if self._generation == chain.generation():
                return self._run_segments()
            self._segments = None
        for step in self.steps:
            ins = [env[name] if name else None for name in step.inputs]
            outs = step.op.run(ins, step.buffers) if run_step is None else run_step(step, ins)
            env.update(zip(step.outputs, outs))
        if run_step is None and chain.available(self.backend):
            self._segments, self._generation = chain.segments(self), chain.generation()
            chained = chain.Chain | chain.LaneChain
            self._chained = all(isinstance(s, chained) for s in self._segments)
            lane_chains = [s for s in self._segments if isinstance(s, chain.LaneChain)]
            self._lanes = lane_chains[0].lanes if len(lane_chains) > 1 else None
            lone = self._chained and len(self._segments) == 1
            self._lone = (self._segments[0], [env[n] for n in self.outputs]) if lone else None
        return [env[name] for name in self.outputs]

    def compiled_only(self) -> bool:
        """Whether the next call runs only compiled chains (no BLAS call, no NumPy step)."""
        return (
            self._segments is not None
            and self._chained
            and (self._generation == chain.generation())
        )

    def lone_chain(self) -> tuple | None:
        """(chain, the graph outputs' arrays) when the whole pass is that one compiled chain
        (built by an earlier call, and current): a call of it and nothing else does what
        ``execute`` does. Else None."""
        lone = self._lone
        if lone is None or self._segments is None or self._generation != chain.generation():
            return None
        return lone

    def _run_segments(self) -> list:
        if self._lanes is None:
            return self._run_chains()
        with self._lanes.held():  # lanes awake through the steps between lane chains
            return self._run_chains()

    def _run_chains(self) -> list:
        env = self._env
        for segment in self._segments:
            if isinstance(segment, chain.Chain | chain.LaneChain):
                segment.call()  # its outputs are bound buffers, already in env
                continue
            ins = [env[name] if name else None for name in segment.inputs]
            env.update(zip(segment.outputs, segment.op.run(ins, segment.buffers)))
        return [env[name] for name in self.outputs]

    def conv_steps(self) -> list[Step]:
        return [s for s in self.steps if s.op.ctx.node is not None and s.op.ctx.node.op == "Conv"]


class Arena:
    """Slot buffers and one scratch workspace, sized for the largest of the plans laid on it."""

    def __init__(self, backend, plans: list[Plan]):
        count = max((len(p.slot_bytes) for p in plans), default=0)
        self.slot_bytes = [max((p.slot_bytes[i] for p in plans if i < len(p.slot_bytes)),
                               default=0) for i in range(count)]  # fmt: skip
        self.workspace_bytes = max((p.workspace_bytes for p in plans), default=0)
        self.slots = [backend.empty((size,), np.uint8) for size in self.slot_bytes]
        # a multiple of 64 bytes, so that any dtype can view it
        self.workspace = backend.empty((_round_up(max(self.workspace_bytes, 1), 64),), np.uint8)

    def fits(self, plan: Plan) -> bool:
        return (
            len(plan.slot_bytes) <= len(self.slot_bytes)
            and all(need <= have for need, have in zip(plan.slot_bytes, self.slot_bytes))
            and plan.workspace_bytes <= self.workspace_bytes
        )

    @property
    def nbytes(self) -> int:
        return sum(self.slot_bytes) + self.workspace_bytes


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def shape_of(value: _Value) -> tuple:
    return physical_shape(value.shape, value.layout)


def nbytes(value: _Value) -> int:
    return int(np.prod(value.shape, dtype=np.int64)) * value.dtype.itemsize
