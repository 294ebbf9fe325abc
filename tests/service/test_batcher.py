"""The batcher alone (no HTTP): batch-size policy, split-and-retry, exactly one answer each."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from engine.errors import OutOfMemoryError
from service.batcher import Batcher, BatchStats, choose_batch_size
from service.errors import DeadlineExceeded, InferenceFailed, QueueFullError


def test_policy_without_costs_takes_everything_up_to_the_maximum():
    assert choose_batch_size(5, 32, None) == 5
    assert choose_batch_size(50, 32, None) == 32


def test_policy_takes_everything_while_the_deadline_allows():
    assert choose_batch_size(32, 32, lambda n: 0.001 * n, slack_s=1.0) == 32
    assert choose_batch_size(40, 32, lambda n: 0.001 * n, slack_s=1.0) == 32


def test_policy_never_plans_past_the_oldest_deadline():
    assert choose_batch_size(32, 32, lambda n: 0.01 * n, slack_s=0.05) == 5
    assert choose_batch_size(32, 32, lambda n: 0.01 * n, slack_s=0.001) == 1


class Recorder:
    def __init__(self):
        self.batches: list[BatchStats] = []
        self.rejects: dict[str, int] = {}
        self.splits: list[str] = []

    def on_batch(self, stats):
        self.batches.append(stats)

    def on_reject(self, reason, count):
        self.rejects[reason] = self.rejects.get(reason, 0) + count

    def on_split(self, reason):
        self.splits.append(reason)


def flaky_model(x: np.ndarray) -> np.ndarray:
    """Doubles its input; fails the whole batch if any image starts with a negative number, and
    reports out-of-memory above 6 images."""
    time.sleep(0.002)
    if len(x) > 6:
        raise OutOfMemoryError(f"batch {len(x)}")
    if (x[:, 0] < 0).any():
        raise RuntimeError("bad image")
    return x * 2


async def _serve(values: list[float], max_queue: int = 1000):
    recorder = Recorder()
    batcher = Batcher(
        lambda: flaky_model, max_batch_size=16, max_queue=max_queue, observer=recorder
    )
    await batcher.start()
    deadline = time.monotonic() + 10
    tasks = [batcher.infer(np.array([[v, 1.0]], np.float32), deadline) for v in values]
    results = await asyncio.gather(*tasks, return_exceptions=True)
    batcher.close(5)
    return results, recorder


def test_every_request_answered_once_and_only_culprits_fail():
    rng = np.random.default_rng(7)
    values = rng.uniform(-0.3, 1.0, 200).round(3).tolist()
    results, recorder = asyncio.run(_serve(values))
    for value, result in zip(values, results, strict=True):
        if value < 0:
            assert isinstance(result, InferenceFailed)
        else:
            np.testing.assert_array_equal(result, np.array([[value, 1.0]], np.float32) * 2)
    assert sum(b.size for b in recorder.batches) == sum(v >= 0 for v in values)
    assert "oom" in recorder.splits and "error" in recorder.splits
    assert max(b.size for b in recorder.batches) <= 6


@pytest.mark.timeout(60)
def test_full_queue_refuses_at_once():
    async def scenario():
        release = asyncio.Event()
        loop = asyncio.get_running_loop()

        def slow(x):
            asyncio.run_coroutine_threadsafe(release.wait(), loop).result(30)
            return x

        batcher = Batcher(lambda: slow, max_batch_size=2, max_queue=3)
        await batcher.start()
        deadline = time.monotonic() + 10
        first = asyncio.ensure_future(batcher.infer(np.ones((1, 1), np.float32), deadline))
        while batcher.running < 1:  # the engine holds the first one
            await asyncio.sleep(0.001)
        queued = asyncio.ensure_future(batcher.infer(np.ones((3, 1), np.float32), deadline))
        while batcher.depth < 3:
            await asyncio.sleep(0.001)
        with pytest.raises(QueueFullError):
            await batcher.infer(np.ones((1, 1), np.float32), deadline)
        release.set()
        assert np.shape(await first) == (1, 1) and np.shape(await queued) == (3, 1)
        expired = await asyncio.gather(
            batcher.infer(np.ones((1, 1), np.float32), time.monotonic() - 1),
            return_exceptions=True,
        )
        batcher.close(5)
        return expired[0]

    assert isinstance(asyncio.run(scenario()), DeadlineExceeded)


@pytest.mark.timeout(60)
def test_idle_engine_starts_at_once_busy_engine_gathers_up_to_max_delay():
    """``max_delay_ms`` only applies under load: a request to an idle engine runs alone even if
    another follows 20 ms later; behind a busy engine, the two wait for each other."""

    async def scenario():
        recorder = Recorder()
        loop = asyncio.get_running_loop()
        gate = asyncio.Event()
        gate.set()

        def model(x):
            asyncio.run_coroutine_threadsafe(gate.wait(), loop).result(30)
            return x

        batcher = Batcher(
            lambda: model, max_batch_size=8, max_queue=8, max_delay_ms=300, observer=recorder
        )
        await batcher.start()
        deadline = time.monotonic() + 10
        one = np.ones((1, 1), np.float32)

        async def two_requests_20ms_apart():
            first = asyncio.ensure_future(batcher.infer(one, deadline))
            await asyncio.sleep(0.02)
            await asyncio.gather(first, batcher.infer(one, deadline))

        await two_requests_20ms_apart()  # idle: each runs on its own
        idle_sizes = [b.size for b in recorder.batches]
        gate.clear()
        busy = asyncio.ensure_future(batcher.infer(one, deadline))
        while batcher.running < 1:
            await asyncio.sleep(0.001)
        pair = asyncio.ensure_future(two_requests_20ms_apart())
        while batcher.depth < 1:  # the first of the pair is queued behind the busy engine
            await asyncio.sleep(0.001)
        gate.set()
        await asyncio.gather(busy, pair)
        batcher.close(5)
        return idle_sizes, [b.size for b in recorder.batches[len(idle_sizes) :]]

    idle_sizes, busy_sizes = asyncio.run(scenario())
    assert idle_sizes == [1, 1]
    assert busy_sizes == [1, 2]


def test_models_sharing_the_engine_thread_take_turns_by_engine_time():
    """A held batch of model a, then 10 more a images and one b image queue up: once released,
    b runs next (it has used no engine time), not after a's whole queue."""
    from service.scheduler import Scheduler

    order: list[str] = []
    gate = threading.Event()

    def recording(name):
        def run(x):
            if name == "a" and not order:
                gate.wait(30)
            order.append(name)
            return x * 2

        return run

    async def scenario():
        scheduler = Scheduler()
        a, b = (
            Batcher(lambda n=n: recording(n), max_batch_size=2, max_queue=100, scheduler=scheduler)
            for n in ("a", "b")
        )
        await asyncio.gather(a.start(), b.start())
        deadline = time.monotonic() + 30
        one = np.ones((1, 1), np.float32)
        held = asyncio.ensure_future(a.infer(one, deadline))
        while a.running == 0:
            await asyncio.sleep(0.001)
        flood = [asyncio.ensure_future(a.infer(one, deadline)) for _ in range(10)]
        other = asyncio.ensure_future(b.infer(one * 3, deadline))
        await asyncio.sleep(0.01)
        gate.set()
        results = await asyncio.gather(held, *flood, other)
        for batcher in (a, b):
            batcher.close(5)
        scheduler.close(5)
        return results

    results = asyncio.run(scenario())
    assert [r[0].tolist() for r in results] == [[2.0]] * 11 + [[6.0]]
    assert order[:2] == ["a", "b"] and order.count("a") == 6  # 1 held, then 10 in batches of 2
