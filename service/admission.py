"""SLO-aware admission (``--target-p99-ms``): refuse at once what could not finish in time.

A request's finish time is estimated from what is ahead of it: the batch the engine runs now, the
queue (run in full batches), then the batch it joins. Batch costs are the engine's warm-up times
per bucket, scaled by how much slower batches run inside the loaded service than at warm-up (the
engine publishes that ratio on the board after every batch). A request whose estimate exceeds the
target is refused with 429 and ``Retry-After`` before it costs the engine anything, so that under
overload the requests that are admitted still meet the target.
"""

from __future__ import annotations

import bisect
import math

from service.config import Settings
from service.errors import WouldMissTarget
from service.shm import Board

SLOWDOWN_SCALE = 1000  # the board holds the slowdown ratio in thousandths


class Admission:
    """Estimates a request's time to answer; refuses it when over ``--target-p99-ms``."""

    def __init__(self, settings: Settings, on_reject=lambda reason, count: None):
        self.target_s = settings.target_p99_ms / 1000.0 if settings.target_p99_ms else None
        self.max_delay_s = settings.max_delay_ms / 1000.0
        self.retry_after_s = settings.retry_after_s
        self.on_reject = on_reject
        self._buckets: list[int] = []
        self._seconds: list[float] = []
        self.max_batch_size = 1

    def set_costs(self, bucket_seconds: dict[int, float], max_batch_size: int) -> None:
        """The engine's measured seconds per batch bucket (empty: no estimate, admit all)."""
        self._buckets = sorted(bucket_seconds)
        self._seconds = [bucket_seconds[b] for b in self._buckets]
        self.max_batch_size = max_batch_size

    def batch_s(self, images: int) -> float:
        """Warm-up seconds of a batch of ``images`` (its bucket's time)."""
        if images <= 0:
            return 0.0
        index = min(bisect.bisect_left(self._buckets, images), len(self._buckets) - 1)
        return self._seconds[index]

    def estimate_s(self, images: int, depth: int, running: int, slowdown: float) -> float:
        """Seconds until a request of ``images`` would be answered, from now."""
        ahead = depth + images
        full, rest = divmod(ahead, self.max_batch_size)
        engine_s = self.batch_s(running) + full * self.batch_s(self.max_batch_size)
        engine_s += self.batch_s(rest)
        return engine_s * slowdown + self.max_delay_s

    def check(self, images: int, board: Board | None) -> None:
        """Raise ``WouldMissTarget`` (429) when the request would miss the target. An idle
        engine admits anything: nothing would answer it sooner."""
        if self.target_s is None or not self._buckets or board is None:
            return
        cells = board.cells
        depth, running = int(cells[Board.DEPTH]), int(cells[Board.RUNNING])
        if depth == 0 and running == 0:
            return
        slowdown = max(1.0, cells[Board.SLOWDOWN] / SLOWDOWN_SCALE)
        estimate_s = self.estimate_s(images, depth, running, slowdown)
        if estimate_s > self.target_s:
            self.on_reject("slo", images)
            retry_s = max(self.retry_after_s, math.ceil(estimate_s - self.target_s))
            raise WouldMissTarget(
                f"would answer in ~{estimate_s * 1000:.0f} ms, over the "
                f"{self.target_s * 1000:.0f} ms target",
                retry_s,
            )
