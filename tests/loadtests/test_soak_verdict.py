"""The soak's verdicts on synthetic series: flat memory passes, a leak fails."""

from __future__ import annotations

import math

import numpy as np

from loadtests.soak import (
    Sample,
    memory_growth_mib,
    memory_problem,
    rolling_p99,
    with_latency,
)


def rss_series(start_mib: float, slope_mib: float, noise_mib: float, count: int, seed: int):
    rng = np.random.default_rng(seed)
    steps = np.arange(count)
    return list(start_mib + slope_mib * steps + rng.normal(0, noise_mib, count))


def test_flat_noisy_memory_passes():
    series = rss_series(120.0, 0.0, 3.0, 300, seed=1)
    assert memory_problem(series, max_growth_mib=16) is None


def test_warm_up_growth_is_not_a_leak():
    warm_up = list(np.linspace(60, 120, 40))  # the first 20 % of the run fills pools and caches
    series = warm_up + rss_series(120.0, 0.0, 1.0, 160, seed=2)
    assert memory_problem(series, max_growth_mib=16) is None


def test_steady_growth_is_reported_with_the_figures():
    series = rss_series(100.0, 0.25, 1.0, 300, seed=3)  # 0.25 MiB per sample, ~30 MiB per half
    first, second = memory_growth_mib(series)
    assert 25 < second - first < 35
    problem = memory_problem(series, max_growth_mib=16)
    assert problem and f"{first:.1f}" in problem and f"{second:.1f}" in problem


def test_too_few_samples_fail_rather_than_pass():
    assert "too few" in memory_problem([100.0, 101.0, 102.0], max_growth_mib=16)


def test_latency_history_joins_the_latest_row_at_or_before_each_sample(tmp_path):
    history = tmp_path / "soak_stats_history.csv"
    header = "Timestamp,User Count,Type,Name,Requests/s,Failures/s,99%\n"
    rows = [
        "1000,4,,Aggregated,0.0,0.0,N/A",
        "1002,4,POST,/predict png,50.0,0.0,80",
        "1002,4,,Aggregated,55.0,0.0,90",
        "1005,4,,Aggregated,60.0,0.0,120",
    ]
    history.write_text(header + "\n".join(rows) + "\n")
    latency = rolling_p99(history, start_unix_s=1000.0)
    assert [t for t, _, _ in latency] == [0.0, 2.0, 5.0]
    samples = [Sample(t, 100.0, 0.0, 0.0) for t in (1.0, 2.5, 4.9, 7.0)]
    joined = with_latency(samples, latency)
    assert math.isnan(joined[0].p99_ms)
    assert [s.p99_ms for s in joined[1:]] == [90.0, 90.0, 120.0]
    assert [s.rps for s in joined[1:]] == [55.0, 55.0, 60.0]
