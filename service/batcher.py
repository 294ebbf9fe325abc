"""Dynamic batching: a bounded queue in front of the one thread that owns the engine.

Knows nothing of HTTP. Requests queue single images with a deadline; the engine thread takes
everything queued (up to ``max_batch_size``) as one batch. Each model has its own batcher; the
engine thread is ``service.scheduler``'s, shared fairly between them. When the engine was idle a
request starts at once; only under load does it wait up to ``max_delay_ms`` for a fuller batch.
A failing batch is split in halves and retried, so only the culprit fails; every accepted image
is answered exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from service.errors import (
    ClientDisconnected,
    DeadlineExceeded,
    InferenceFailed,
    NotReadyError,
    QueueFullError,
    to_service_error,
)
from service.scheduler import Scheduler

log = logging.getLogger("gemmserve.batcher")


@dataclass(frozen=True)
class BatchStats:
    """One engine call: how many images ran, how long they waited and how long the engine took."""

    size: int
    queue_wait_s: tuple[float, ...]
    inference_s: float


class Observer(Protocol):
    """Receives plain stats from the engine thread (the metrics module implements it)."""

    def on_batch(self, stats: BatchStats) -> None: ...

    def on_reject(self, reason: str, count: int) -> None: ...

    def on_split(self, reason: str) -> None: ...


def choose_batch_size(
    queued: int,
    max_batch_size: int,
    cost_s: Callable[[int], float] | None,
    slack_s: float = float("inf"),
) -> int:
    """How many queued images to run now: all that fit, but no more than can finish before the
    oldest request's deadline (``slack_s`` from now) by the measured batch costs, so a full batch
    never makes the request that waited longest miss it."""
    size = min(queued, max_batch_size)
    if cost_s is None:
        return size
    while size > 1 and cost_s(size) > slack_s:
        size -= 1
    return size


class NullObserver:
    """Discards every stat."""

    def on_batch(self, stats: BatchStats) -> None:
        pass

    def on_reject(self, reason: str, count: int) -> None:
        pass

    def on_split(self, reason: str) -> None:
        pass


@dataclass(eq=False)
class _Item:
    x: np.ndarray
    deadline: float
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    enqueued: float = field(default_factory=time.monotonic)
    # Set from the event loop when nobody waits any more; read by the engine thread.
    abandoned: bool = False


def _settle(future: asyncio.Future, result: Any, exc: BaseException | None) -> None:
    if future.done():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)


def _settle_all(outcomes: list[tuple[asyncio.Future, Any, BaseException | None]]) -> None:
    for outcome in outcomes:
        _settle(*outcome)


def _hand_back(items: list[_Item], results: list, exc: BaseException | None) -> None:
    """Settle the items' futures on their event loop: one wake-up per batch, not per image."""
    if not items:
        return
    outcomes = [(item.future, result, exc) for item, result in zip(items, results, strict=True)]
    # A closed loop (RuntimeError) means nobody is waiting any more.
    with contextlib.suppress(RuntimeError):
        items[0].loop.call_soon_threadsafe(_settle_all, outcomes)


class Batcher:
    """One model's queue. ``setup`` runs on the engine thread and returns the batch function:
    an (N, ...) array in, N per-image results out (rows of a fresh array, or any objects).

    Batchers of several models share one ``Scheduler`` (one engine thread, served fairly);
    without one, a batcher has an engine thread of its own."""

    def __init__(
        self,
        setup: Callable[[], Callable[[np.ndarray], Sequence[Any]]],
        *,
        max_batch_size: int,
        max_queue: int,
        max_delay_ms: float = 0.0,
        retry_after_s: int = 1,
        observer: Observer | None = None,
        scheduler: Scheduler | None = None,
    ):
        self._setup = setup
        self._run_fn: Callable[[np.ndarray], Sequence[Any]] | None = None
        self.max_batch_size = max_batch_size
        self.max_queue = max_queue
        self._max_delay_s = max_delay_ms / 1000.0
        self._retry_after_s = retry_after_s
        self._observer: Observer = observer or NullObserver()
        self._queue: deque[_Item] = deque()
        self._scheduler = scheduler or Scheduler()
        self._own_scheduler = scheduler is None
        self._cond = self._scheduler.cond
        self._closed = False
        self._running = 0
        self._under_load = False  # idle at start: the first request runs at once
        self._cost_s: Callable[[int], float] | None = None
        self.used_s = 0.0  # the scheduler's fair-share account
        self._scheduler.add(self)

    @property
    def depth(self) -> int:
        """Images waiting in the queue (not counting the batch being run)."""
        return len(self._queue)

    @property
    def running(self) -> int:
        """Images inside the engine call running now (0 between calls)."""
        return self._running

    def backlog(self) -> int:
        """Images the engine thread may take now (none before ``setup`` has run)."""
        return len(self._queue) if self._run_fn is not None else 0

    def set_cost_model(self, cost_s: Callable[[int], float]) -> None:
        """Estimated seconds to run a batch of n images (from measured bucket times). Call from
        ``setup``; with it, batch sizes are chosen by ``choose_batch_size``."""
        self._cost_s = cost_s

    def start(self) -> asyncio.Future:
        """Queue ``setup`` on the engine thread; the future resolves with its result (or its
        error). Images queue from now on and run once it succeeded."""
        loop = asyncio.get_running_loop()
        ready = loop.create_future()

        def setup_job() -> None:
            try:
                run_fn = self._setup()
            except BaseException as exc:  # noqa: BLE001 - handed to the event loop, which reports it
                loop.call_soon_threadsafe(_settle, ready, None, exc)
                return
            with self._cond:
                self._run_fn = run_fn
            loop.call_soon_threadsafe(_settle, ready, run_fn, None)

        self._scheduler.submit(setup_job)
        return ready

    async def infer(
        self, batch: np.ndarray, deadline: float, give_up: asyncio.Future | None = None
    ) -> list:
        """Run each image of ``batch`` (N, ...) and return its N results in order.

        Admission is all or nothing: a request that does not fit the queue is refused whole.
        ``deadline`` is a ``time.monotonic()`` instant. When ``give_up`` completes first (the
        caller went away), the images are dropped unrun and ``ClientDisconnected`` is raised.
        """
        loop = asyncio.get_running_loop()
        items = [_Item(x, deadline, loop, loop.create_future()) for x in batch]
        self._admit(items)
        outputs = asyncio.gather(*(item.future for item in items))
        waiting = {outputs} if give_up is None else {outputs, give_up}
        try:
            remaining_s = max(deadline - time.monotonic(), 0.0)
            await asyncio.wait(waiting, timeout=remaining_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for item in items:
                item.abandoned = True
            answered = outputs.done()
            if not answered:
                outputs.cancel()  # takes effect on the next loop turn
        if answered:
            return outputs.result()
        if give_up is not None and give_up.done():
            raise ClientDisconnected("the caller went away while its request was queued")
        raise DeadlineExceeded(f"no answer within the deadline ({len(items)} image(s))")

    def _admit(self, items: list[_Item]) -> None:
        with self._cond:
            if self._closed:
                raise NotReadyError("server is shutting down", self._retry_after_s)
            if len(self._queue) + len(items) > self.max_queue:
                self._observer.on_reject("queue_full", len(items))
                raise QueueFullError(
                    f"queue full ({len(self._queue)} of {self.max_queue} images waiting)",
                    self._retry_after_s,
                )
            joined = not self._queue
            self._queue.extend(items)
            if joined:
                self._scheduler.joined(self)
            else:
                self._cond.notify()

    def close(self, timeout_s: float) -> None:
        """Refuse new work, let the engine thread finish what is queued, then fail any leftovers."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._own_scheduler:
            self._scheduler.close(timeout_s)
        else:
            with self._cond:
                self._cond.wait_for(lambda: self.backlog() == 0 and not self._running, timeout_s)
        self._scheduler.remove(self)
        with self._cond:
            leftovers = list(self._queue)
            self._queue.clear()
        self._fail(leftovers, NotReadyError("server shut down before this ran"), "shutdown")

    # ---- engine thread -------------------------------------------------------------------------

    def take(self, others_waiting: bool) -> list[_Item]:
        """The images of the next batch (called by the scheduler with the lock held). Only when
        no other model waits does it hold out for a fuller batch."""
        if self._under_load and self._max_delay_s > 0 and not others_waiting:
            self._gather_more()
        slack_s = self._queue[0].deadline - time.monotonic()
        count = choose_batch_size(len(self._queue), self.max_batch_size, self._cost_s, slack_s)
        return [self._queue.popleft() for _ in range(count)]

    def run(self, items: list[_Item]) -> float:
        """Run one batch taken by ``take``; the engine seconds it cost (the fair-share charge)."""
        started = time.monotonic()
        self._run(items)
        with self._cond:
            # Work queued up while this batch ran: the engine is the bottleneck right now.
            self._under_load = bool(self._queue)
            self._cond.notify_all()  # a ``close`` may be waiting for the queue to empty
        return time.monotonic() - started

    def _gather_more(self) -> None:
        """Under load (requests queued while the last batch ran): wait for a fuller batch, but
        never past the oldest request's deadline. Called with the lock held."""
        end = min(time.monotonic() + self._max_delay_s, self._queue[0].deadline)
        while len(self._queue) < self.max_batch_size and not self._closed:
            remaining = end - time.monotonic()
            if remaining <= 0:
                return
            self._cond.wait(remaining)

    def _live(self, items: list[_Item]) -> list[_Item]:
        """Fail expired items and drop abandoned ones before they run: they cost no engine time."""
        now = time.monotonic()
        expired = [i for i in items if i.deadline <= now]
        cancelled = [i for i in items if i.abandoned and i.deadline > now]
        if cancelled:
            self._observer.on_reject("cancelled", len(cancelled))
        self._fail(expired, DeadlineExceeded("deadline passed while queued"), "deadline")
        return [i for i in items if not i.abandoned and i.deadline > now]

    def _run(self, items: list[_Item]) -> None:
        items = self._live(items)
        if not items:
            return
        x = np.stack([item.x for item in items])
        started = time.monotonic()
        self._running = len(items)
        try:
            y = self._run_fn(x)
            if len(y) != len(items):
                raise InferenceFailed(f"engine returned {len(y)} rows for a batch of {len(items)}")
        except Exception as exc:  # noqa: BLE001 - split to find the culprit; it gets the error
            self._running = 0
            self._on_failure(items, exc)
            return
        # Before the answers go out, so nobody who got one still sees this batch running.
        self._running = 0
        elapsed = time.monotonic() - started
        waits = tuple(started - item.enqueued for item in items)
        self._observer.on_batch(BatchStats(len(items), waits, elapsed))
        _hand_back(items, list(y), None)

    def _on_failure(self, items: list[_Item], exc: Exception) -> None:
        if len(items) == 1:
            self._fail(items, to_service_error(exc), None)
            return
        reason = "oom" if getattr(exc, "recoverable", False) else "error"
        log.warning("batch of %d failed (%s: %s); splitting", len(items), type(exc).__name__, exc)
        self._observer.on_split(reason)
        half = len(items) // 2
        self._run(items[:half])
        self._run(items[half:])

    def _fail(self, items: list[_Item], exc: BaseException, reason: str | None) -> None:
        if not items:
            return
        if reason:
            self._observer.on_reject(reason, len(items))
        _hand_back(items, [None] * len(items), exc)
