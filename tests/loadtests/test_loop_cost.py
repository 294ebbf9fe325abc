"""``python -m loadtests.loop_cost``: a worker's app called in process against a real engine
process; the front end's CPU per request."""

from __future__ import annotations

import asyncio

import pytest

from loadtests.loop_cost import measure
from loadtests.service_proc import DEFAULT_MODEL


@pytest.mark.parametrize("kind", ["npy", "png"])
def test_loop_cost_measures_the_front_end_per_request(tmp_path, kind):
    cache = ["--autotune-cache", str(tmp_path / "tune.json")]
    rate, cpu_s, loop_s, statuses = asyncio.run(measure(DEFAULT_MODEL, 8, 0.5, 0.2, cache, kind))
    assert set(statuses) == {200} and statuses[200] > 0
    # Seconds of CPU per answered request: the whole front end, and its event loop's share.
    assert rate > 0 and 0 < cpu_s < 0.5 and 0 < loop_s <= cpu_s + 1e-5  # two clocks, one tick apart
