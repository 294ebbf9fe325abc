"""Open-loop arrival schedules: the mean rate holds, bursts stay inside their windows."""

import itertools

import numpy as np
import pytest

from loadtests.arrivals import arrival_times


def take(schedule, count: int) -> np.ndarray:
    return np.fromiter(itertools.islice(schedule, count), dtype=float)


@pytest.mark.parametrize("burst_factor", [1.0, 4.0])
def test_mean_rate_matches_the_requested_rate(burst_factor):
    rate_per_s = 50.0
    times = take(arrival_times(np.random.default_rng(7), rate_per_s, burst_factor, 2.0), 20_000)
    assert np.all(np.diff(times) >= 0)
    measured = len(times) / times[-1]
    assert measured == pytest.approx(rate_per_s, rel=0.03)


def test_poisson_gaps_are_exponential():
    rate_per_s = 10.0
    gaps = np.diff(take(arrival_times(np.random.default_rng(3), rate_per_s), 20_000))
    # Exponential: mean = std = 1/rate; a fixed-interval schedule would have std 0.
    assert gaps.mean() == pytest.approx(1 / rate_per_s, rel=0.03)
    assert gaps.std() == pytest.approx(1 / rate_per_s, rel=0.05)


def test_bursts_fall_inside_the_on_window_of_each_period():
    period_s, burst_factor = 2.0, 4.0
    times = take(arrival_times(np.random.default_rng(5), 30.0, burst_factor, period_s), 5_000)
    phase = np.mod(times, period_s)
    assert phase.max() < period_s / burst_factor
    # Every period gets arrivals: bursts repeat, they are not one block at the start.
    assert len(np.unique(np.floor(times / period_s))) == int(times[-1] // period_s) + 1


@pytest.mark.parametrize("args", [(0.0, 1.0, 1.0), (5.0, 0.5, 1.0), (5.0, 2.0, 0.0)])
def test_invalid_schedules_are_refused(args):
    with pytest.raises(ValueError):
        next(arrival_times(np.random.default_rng(0), *args))
