"""CUDA graphs: one plan's whole ``execute()`` captured per batch bucket, replayed as one launch.

A small CNN at batch 1 is a few dozen short kernels and GEMMs whose launch overhead (Python,
CuPy, the driver) dwarfs their run time; a graph replay pays it once. Eager execution stays
the fallback: a plan whose capture fails for any reason (an operation that is illegal while
capturing, a GEMM form the direct cuBLAS path does not take, a numerical mismatch) runs eagerly
from then on, with one logged warning, and so does a plan whose replay is not faster than its
eager run (both are timed right after capture).

Rules a captured plan obeys, and how they are met:
- fixed addresses: a plan's buffers are preallocated, inputs are staged into them;
- nothing allocated per replay: memory taken from CuPy's pool during capture stays reserved
  for the graph's lifetime (``HoldingAllocator``), as PyTorch's private graph pools do;
- kernels compiled before capture: the plan runs once eagerly on the capture stream first;
- GEMMs: CuPy refuses cuBLAS while a stream captures, so ``cupy.matmul`` is routed through
  ``engine.cuda.cublas`` for the capture only (``direct_gemms_while_capturing``).
"""

from __future__ import annotations

import contextlib
import logging
import weakref
from dataclasses import dataclass, field

from engine.cuda.cublas import Cublas
from engine.cuda.precision import current_math

log = logging.getLogger("engine.cuda.graphs")

#: graph output vs eager output, relative: cuBLAS may pick another kernel through the Ex API
MATCH_TOLERANCE = 1e-4
TIMED_RUNS = 5


class HoldingAllocator:
    """A CuPy allocator that never gives memory back while the graph that recorded it lives."""

    def __init__(self, pool):
        self.pool, self.held = pool, []

    def malloc(self, size: int):
        memory = self.pool.malloc(size)
        self.held.append(memory)
        return memory


@contextlib.contextmanager
def direct_gemms_while_capturing(cupy, cublas: Cublas, always: bool = False):
    """Inside the block, ``cupy.matmul`` on a capturing stream calls cuBLAS directly (at the
    precision CuPy is set to); on any other stream, or with extra arguments, it is CuPy's own.

    ``always``: eager calls take the direct path too, so that every GEMM runs at CuPy's setting,
    also where CuPy itself would not apply it (FP16 products on float32, batched GEMMs)."""
    eager = cupy.matmul

    def matmul(a, b, out=None, **kwargs):
        if kwargs or not (always or cupy.cuda.get_current_stream().is_capturing()):
            return eager(a, b, out=out, **kwargs)
        return cublas.matmul(a, b, out, math=current_math(cupy))

    cupy.matmul = matmul
    try:
        yield
    finally:
        cupy.matmul = eager


@dataclass
class CapturedPlan:
    graph: object  # cupy.cuda.Graph
    outputs: list  # the plan's output arrays (fixed addresses the graph writes)
    held: list = field(default_factory=list)
    eager_ms: float = 0.0
    graph_ms: float = 0.0


class GraphRunner:
    """Runs plans by graph replay where that works and is faster, eagerly elsewhere."""

    def __init__(self, backend, enabled: bool = True):
        self.backend, self.enabled = backend, enabled
        self.cupy = backend.xp
        self._stream = None
        self._cublas: Cublas | None = None
        # keyed by the plan itself, held weakly: a model drops plans of unplanned shapes, and a
        # new plan must never find a dead one's graph (an id() can be reused)
        self.plans: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self.failures: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def execute(self, plan) -> list:
        """Like ``plan.execute()``; the first call of each plan decides graph or eager."""
        if not self.enabled:
            return plan.execute()
        if plan not in self.plans:
            self.plans[plan] = self.prepare(plan)
        captured = self.plans[plan]
        if captured is None:
            return plan.execute()
        captured.graph.launch(self.cupy.cuda.get_current_stream())
        return captured.outputs

    def prepare(self, plan) -> CapturedPlan | None:
        """Capture, check and time ``plan``; None (eager) when any step fails or loses."""
        try:
            captured = self.capture(plan)
        except Exception as error:  # any failure while capturing means "run this plan eagerly"
            # a failure inside the capture invalidates it, and ending it then raises again:
            # the first error (the cause worth reporting, or an out-of-memory) is the context
            first = error.__context__ or error
            if self.backend.is_out_of_memory(first):
                raise first from None
            if self.backend.is_out_of_memory(error):
                raise
            reason = " after ".join(
                dict.fromkeys(f"{type(e).__name__}: {e}" for e in (error, first))
            )
            self.failures[plan] = reason
            log.warning("CUDA graph capture failed, running this plan eagerly: %s", reason)
            return None
        if captured.graph_ms >= captured.eager_ms:
            log.info("graph replay %.3f ms >= eager %.3f ms: eager", captured.graph_ms,
                     captured.eager_ms)  # fmt: skip
            return None
        return captured

    def capture(self, plan) -> CapturedPlan:
        """Warm up, record, replay once against the eager result, then time both ways."""
        cupy = self.cupy
        if self._stream is None:
            self._stream = cupy.cuda.Stream(non_blocking=True)
        if self._cublas is None:  # apart: if this fails, every later capture says why again
            self._cublas = Cublas.shared(cupy)
        current, stream = cupy.cuda.get_current_stream(), self._stream
        stream.wait_event(current.record())  # the staged inputs are on the current stream
        with stream:
            reference = [y.copy() for y in plan.execute()]  # also compiles every kernel
            captured = self.record(plan, stream)
            captured.graph.launch(stream)
            check_outputs(cupy, captured.outputs, reference)
            captured.eager_ms = self.time_ms(stream, plan.execute)
            captured.graph_ms = self.time_ms(stream, lambda: captured.graph.launch(stream))
        current.wait_event(stream.record())
        return captured

    def record(self, plan, stream) -> CapturedPlan:
        """``plan.execute()`` captured on ``stream`` (not run)."""
        holder = HoldingAllocator(self.cupy.get_default_memory_pool())
        with (
            self.cupy.cuda.using_allocator(holder.malloc),
            direct_gemms_while_capturing(self.cupy, self._cublas),
        ):
            stream.begin_capture()
            try:
                outputs = plan.execute()
            finally:
                graph = stream.end_capture()  # leaves capture mode even after an error
        return CapturedPlan(graph, outputs, holder.held)

    def time_ms(self, stream, run) -> float:
        """Median of a few runs, timed with CUDA events on ``stream``."""
        times = []
        for _ in range(TIMED_RUNS):
            start, end = self.cupy.cuda.Event(), self.cupy.cuda.Event()
            start.record(stream)
            run()
            end.record(stream)
            end.synchronize()
            times.append(self.cupy.cuda.get_elapsed_time(start, end))
        return sorted(times)[len(times) // 2]

    def info(self) -> dict:
        """Per captured plan: graph or eager, the two timings, why capture failed."""
        graphs = [p for p in self.plans.values() if p is not None]
        return {
            "enabled": self.enabled,
            "graphs": len(graphs),
            "eager": len(self.plans) - len(graphs),
            "timings_ms": [{"eager": p.eager_ms, "graph": p.graph_ms} for p in graphs],
            "failures": sorted(set(self.failures.values())),
        }


def check_outputs(cupy, outputs, reference) -> None:
    """Raise when the replayed graph's outputs differ from the eager run's.

    Rows past a batch's images (padding up to the bucket) hold whatever the buffers held, NaN
    included: values that are not finite must match exactly, the finite ones within tolerance."""
    for got, want in zip(outputs, reference, strict=True):
        got = got.astype(want.dtype)
        finite = cupy.isfinite(want)
        same = (got == want) | (cupy.isnan(got) & cupy.isnan(want))
        if bool(cupy.any(~finite & ~same)):
            raise RuntimeError("graph replay differs from eager execution (non-finite values)")
        want = cupy.where(finite, want, 0)
        diff = cupy.where(finite, got - want, 0)
        error = float(cupy.linalg.norm(diff)) / (float(cupy.linalg.norm(want)) or 1.0)
        if not error <= MATCH_TOLERANCE:  # also catches NaN
            raise RuntimeError(f"graph replay differs from eager execution ({error:.2e})")
