"""Arrival schedules for the open-loop client: Poisson, optionally bursty at the same mean rate."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np


def arrival_times(
    rng: np.random.Generator, rate_per_s: float, burst_factor: float = 1.0, period_s: float = 2.0
) -> Iterator[float]:
    """Seconds from the start at which requests arrive, forever.

    With ``burst_factor`` b > 1, each ``period_s`` cycle is "on" for its first ``period_s / b``
    seconds, with arrivals at ``rate_per_s * b``, and silent for the rest: the mean rate is
    unchanged, the arrivals come in bursts. Poisson arrivals are drawn in "on" time and mapped onto
    the wall clock.
    """
    if rate_per_s <= 0 or burst_factor < 1 or period_s <= 0:
        raise ValueError(
            f"need rate_per_s > 0, burst_factor >= 1, period_s > 0; "
            f"got {rate_per_s}, {burst_factor}, {period_s}"
        )
    on_s = period_s / burst_factor
    on_time = 0.0
    while True:
        on_time += rng.exponential(1.0 / (rate_per_s * burst_factor))
        cycles, into_cycle = divmod(on_time, on_s)
        yield cycles * period_s + into_cycle
