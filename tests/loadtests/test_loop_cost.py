"""``python -m loadtests.loop_cost``: the app called in process, the loop's CPU per request."""

from __future__ import annotations

import asyncio

from loadtests.loop_cost import measure
from loadtests.service_proc import DEFAULT_MODEL


def test_loop_cost_measures_the_event_loop_per_request(tmp_path):
    cache = ["--autotune-cache", str(tmp_path / "tune.json")]
    rate, cpu_s, statuses = asyncio.run(measure(DEFAULT_MODEL, 8, 0.5, 0.2, cache))
    assert set(statuses) == {200} and statuses[200] > 0
    assert rate > 0 and 0 < cpu_s < 0.5  # seconds of loop CPU per answered request
