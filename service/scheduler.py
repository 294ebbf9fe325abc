"""The engine thread, shared by every model's batcher, and the fair order in which it serves them.

Each model has its own queue (a ``Batcher``, a lane here); one thread runs every engine call,
because the device (or the CPU cores) can do one batch at a time well. The thread also runs jobs
(a model's load, warm-up and self-test) between batches, so only it ever touches a model.

Fairness is by engine time, not by request count (start-time fair queuing): each lane counts the
engine seconds its batches took; the lane with queued work and the fewest seconds goes next. A
lane that was idle joins at the current virtual time, so it cannot bank credit while idle, and a
flooded lane cannot keep another waiting for more than about one of its own batches.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import Protocol


class Lane(Protocol):
    """What the scheduler needs of a batcher."""

    used_s: float  # engine seconds this lane's batches took, offset by when it joined

    def backlog(self) -> int: ...

    def take(self, others_waiting: bool) -> list: ...

    def run(self, taken: list) -> float: ...


class Scheduler:
    """Owns the engine thread; lanes share its condition variable (``cond``)."""

    def __init__(self, name: str = "gemmserve-engine"):
        self.cond = threading.Condition()
        self.lanes: list[Lane] = []
        self._jobs: deque[Callable[[], None]] = deque()
        self._closed = False
        self._vtime_s = 0.0
        self._name = name
        self._thread: threading.Thread | None = None

    def add(self, lane: Lane) -> None:
        with self.cond:
            self.lanes.append(lane)

    def remove(self, lane: Lane) -> None:
        with self.cond:
            if lane in self.lanes:
                self.lanes.remove(lane)

    def joined(self, lane: Lane) -> None:
        """A lane's queue went from empty to not: it starts at the current virtual time.
        Called with ``cond`` held."""
        lane.used_s = max(lane.used_s, self._vtime_s)
        self.cond.notify()

    def submit(self, job: Callable[[], None]) -> None:
        """Run ``job`` on the engine thread, before the next batch."""
        with self.cond:
            self._jobs.append(job)
            self.cond.notify()
        self._ensure_thread()

    @property
    def depth(self) -> int:
        """Images waiting in every lane."""
        return sum(lane.backlog() for lane in list(self.lanes))

    def _ensure_thread(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._main, name=self._name, daemon=True)
            self._thread.start()

    def close(self, timeout_s: float) -> None:
        """Stop once every queue is empty and every job has run (lanes refuse new work first)."""
        with self.cond:
            self._closed = True
            self.cond.notify_all()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout_s)

    def _main(self) -> None:
        while (picked := self._next()) is not None:
            if callable(picked):
                picked()
            else:
                lane, taken = picked
                lane.used_s += lane.run(taken)

    def _next(self):
        """The next job, or the next (lane, images) by fair order; None when closed and idle."""
        with self.cond:
            while True:
                if self._jobs:
                    return self._jobs.popleft()
                waiting = [lane for lane in self.lanes if lane.backlog()]
                if waiting:
                    lane = min(waiting, key=lambda w: w.used_s)
                    self._vtime_s = lane.used_s
                    taken = lane.take(len(waiting) > 1)
                    if taken:
                        return lane, taken
                    continue
                if self._closed:
                    return None
                self.cond.wait()
