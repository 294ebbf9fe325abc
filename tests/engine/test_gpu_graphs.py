"""GraphRunner's bookkeeping, with capture replaced by a stand-in (no GPU needed): a plan's graph
lives exactly as long as the plan."""

from __future__ import annotations

import gc
from types import SimpleNamespace

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
