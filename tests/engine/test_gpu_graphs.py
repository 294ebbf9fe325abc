"""GraphRunner's bookkeeping, with capture replaced by a stand-in (no GPU needed): a plan's graph
lives exactly as long as the plan, and a failed capture says why (or lets out-of-memory out)."""

from __future__ import annotations

import gc
from types import SimpleNamespace

import pytest

from engine.cuda.graphs import CapturedPlan, GraphRunner


class Plan:
    def __init__(self, name: str):
        self.name = name

    def execute(self) -> list:
        return [f"eager {self.name}"]


class Graph:
    def launch(self, stream) -> None:
        pass


def stand_in_runner() -> GraphRunner:
    stream = SimpleNamespace(ptr=0)
    cupy = SimpleNamespace(cuda=SimpleNamespace(get_current_stream=lambda: stream))
    runner = GraphRunner(SimpleNamespace(xp=cupy), enabled=True)
    runner.prepare = lambda plan: CapturedPlan(Graph(), [f"graph of {plan.name}"])
    return runner


def test_a_dropped_plan_drops_its_graph():
    """A model drops the plans of unplanned shapes past a limit: their graphs (and the memory
    they hold) go too, and a new plan, even one that reuses a dead plan's id(), is captured
    afresh instead of replaying the dead plan's graph."""
    runner = stand_in_runner()
    first = Plan("first")
    assert runner.execute(first) == ["graph of first"]
    assert runner.execute(first) == ["graph of first"]  # prepared once, then replayed
    del first
    gc.collect()
    assert runner.info()["graphs"] == 0
    second = Plan("second")
    assert runner.execute(second) == ["graph of second"]
    assert runner.info()["graphs"] == 1


def failing_capture(first: BaseException):
    """A capture whose plan raises ``first``; ending the invalidated capture then raises too."""

    def capture(plan):
        try:
            raise first
        finally:
            raise RuntimeError("cudaErrorStreamCaptureInvalidated")

    return capture


def test_a_failed_capture_reports_the_first_error_and_runs_eagerly():
    runner = stand_in_runner()
    runner.backend.is_out_of_memory = lambda error: isinstance(error, MemoryError)
    runner.capture = failing_capture(NotImplementedError("cuBLAS call while capturing"))
    del runner.prepare  # the real one, around the failing capture
    plan = Plan("p")
    assert runner.execute(plan) == ["eager p"]
    assert runner.execute(plan) == ["eager p"]  # decided once
    (reason,) = runner.info()["failures"]
    assert "NotImplementedError: cuBLAS call while capturing" in reason
    assert "cudaErrorStreamCaptureInvalidated" in reason


def test_out_of_memory_inside_a_capture_is_not_swallowed():
    runner = stand_in_runner()
    runner.backend.is_out_of_memory = lambda error: isinstance(error, MemoryError)
    runner.capture = failing_capture(MemoryError("out of memory allocating 1 GiB"))
    del runner.prepare
    with pytest.raises(MemoryError):
        runner.execute(Plan("p"))
