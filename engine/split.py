"""A batch bucket run depth first: one sub-plan per core, each on its slice of the batch.

Splitting each layer across the cores costs a thread hand-off per layer (measured at 0.1-0.2 ms
on this project's 2-core machine, as much as a whole small conv at batch 8) and leaves the steps
that are not threaded (pooling, layout copies, the head) on one core. A ``SplitPlan`` instead
plans the graph once per slice of the batch with one thread per op (``ConvSpec.threads = 1``,
tuned as such), and runs the slices on the engine's worker threads at once: one hand-off per
forward pass, every step on every core. The compiled kernels and NumPy release the GIL, so the
slices overlap. CPU only, under ``cpu_threading="engine"`` (BLAS single-threaded).

Each slice has its own buffers: slice i of every bucket shares arena i (``Plan.lanes``).
"""

from __future__ import annotations

from engine.plan import Plan
from engine.threads import run_in_threads


def slices(n: int, lanes: int) -> list[tuple[int, int]]:
    """Near-equal [n0, n1) ranges of a batch of ``n``, at most ``lanes`` of them."""
    bounds = [n * i // lanes for i in range(lanes + 1)]
    return [(a, b) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


class NotSplittableError(ValueError):
    """The graph's outputs are not one row per image: it runs as a plain Plan."""


class SplitPlan:
    """The graph planned for one batch bucket as ``lanes`` plans of slices of the batch; used
    where a Plan is (``execute``, ``inputs``, ``values``, ``steps``, ``conv_steps``)."""

    def __init__(self, graph, backend, input_shapes: dict, tuner, constants, lanes: int):
        ((name, shape),) = input_shapes.items()
        self.backend, self.ranges = backend, slices(shape[0], lanes)
        self.parts = [Plan(graph, backend, {name: (b - a, *shape[1:])}, tuner, constants,
                           threads=1) for a, b in self.ranges]  # fmt: skip
        first = self.parts[0]
        for part, (a, b) in zip(self.parts, self.ranges):
            if any(part.values[o].shape[:1] != (b - a,) for o in part.outputs):
                raise NotSplittableError("an output is not batch-first")
        dtype = first.inputs[name].dtype
        self.inputs = {name: backend.zeros(shape, dtype)}
        for part, (a, b) in zip(self.parts, self.ranges):
            part.use_inputs({name: self.inputs[name][a:b]})
        self.outputs = first.outputs
        self._results = [backend.empty((shape[0], *first.values[o].shape[1:]),
                                       first.values[o].dtype) for o in self.outputs]  # fmt: skip

    @property
    def values(self):
        return self.parts[0].values

    @property
    def steps(self):
        return self.parts[0].steps

    def conv_steps(self):
        """The conv steps of each distinct slice size (the layers the tuner saw)."""
        seen, steps = set(), []
        for part, (a, b) in zip(self.parts, self.ranges):
            if b - a not in seen:
                seen.add(b - a)
                steps += part.conv_steps()
        return steps

    def lanes(self) -> list[Plan]:
        return self.parts

    def compiled_only(self) -> bool:
        return all(part.compiled_only() for part in self.parts)

    def lone_chain(self) -> None:
        """Never one chain: the slices run on threads of their own."""
        return None

    def execute(self, run_step=None) -> list:
        """Every slice through every step, one slice per worker thread; ``run_step`` (a
        per-step hook: profiling, cross-check) runs the slices one after another instead."""
        if run_step is not None:
            for index in range(len(self.parts)):
                self._run_part(index, run_step)
        else:
            run_in_threads(self._run_part, [(index, None) for index in range(len(self.parts))])
        return self._results

    def _run_part(self, index: int, run_step) -> None:
        a, b = self.ranges[index]
        for result, value in zip(self._results, self.parts[index].execute(run_step)):
            result[a:b] = value
