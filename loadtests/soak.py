"""``python -m loadtests soak``: a long mixed run that watches the server for leaks.

Good and bad traffic (``MixedClient`` plus a bursty open-loop client) run against a service
subprocess while the server's RSS and ``gemmserve_queue_depth`` are sampled; Locust's rolling p99 is
joined in afterwards. The soak fails if any request failed (a good one not answered, or a bad one
not refused with a 4xx), if the RSS of the second half grew beyond ``--max-growth-mib`` over the
first half (after a warm-up), or if work is still queued once the load stops.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

from loadtests.locust_run import LocustPlan, number, read_result, start_locust
from loadtests.run import Target, describe, verdict
from loadtests.service_proc import ServiceError, http_get

MIB = 1024 * 1024
GAUGES = ("gemmserve_queue_depth", "gemmserve_requests_in_flight")
WARMUP_FRACTION = 0.2  # thread pools, buffers and caches fill up early: not a leak


@dataclass(frozen=True)
class Sample:
    """One observation of the server (``p99_ms``/``rps``: Locust's rolling ~10 s window)."""

    t_s: float
    rss_mib: float
    queue_depth: float
    in_flight: float
    p99_ms: float = math.nan
    rps: float = math.nan


def scrape_gauges(url: str) -> dict[str, float]:
    """The values of ``GAUGES`` in ``GET /metrics`` (NaN for any missing)."""
    values = dict.fromkeys(GAUGES, math.nan)
    status, body = http_get(url + "/metrics")
    if status != 200:
        return values
    for line in body.decode().splitlines():
        name, _, value = line.partition(" ")
        if name in values:
            values[name] = float(value)
    return values


def observe(url: str, process: psutil.Process, t_s: float) -> Sample:
    gauges = scrape_gauges(url)
    rss = process.memory_info().rss / MIB
    return Sample(t_s, rss, gauges["gemmserve_queue_depth"], gauges["gemmserve_requests_in_flight"])


def sample_until_done(locust, url: str, pid: int, interval_s: float, limit_s: float):
    """Sample every ``interval_s`` until Locust exits (killed after ``limit_s``); the samples and
    the start (Unix time)."""
    process = psutil.Process(pid)
    start = time.time()
    samples = []
    while locust.poll() is None:
        if time.time() - start > limit_s:
            locust.kill()
            raise ServiceError(f"Locust still running after {limit_s:.0f} s; killed")
        # One missed scrape under load is not a verdict; Locust counts the real failures.
        with contextlib.suppress(OSError):
            samples.append(observe(url, process, time.time() - start))
        time.sleep(interval_s)
    return samples, start


def rolling_p99(history_csv: Path, start_unix_s: float) -> list[tuple[float, float, float]]:
    """``(t_s, p99_ms, rps)`` from Locust's ``_stats_history.csv`` (Aggregated rows)."""
    if not history_csv.exists():
        return []
    with open(history_csv, newline="") as handle:
        return [
            (number(row["Timestamp"]) - start_unix_s, number(row["99%"]), number(row["Requests/s"]))
            for row in csv.DictReader(handle)
            if row["Name"] == "Aggregated"
        ]


def with_latency(samples: list[Sample], history: list[tuple[float, float, float]]) -> list[Sample]:
    """Each sample joined with the latest Locust history row at or before it."""
    joined, n = [], 0
    for sample in samples:
        while n + 1 < len(history) and history[n + 1][0] <= sample.t_s:
            n += 1
        if history and history[n][0] <= sample.t_s:
            sample = Sample(**{**asdict(sample), "p99_ms": history[n][1], "rps": history[n][2]})
        joined.append(sample)
    return joined


def memory_growth_mib(rss_mib: list[float]) -> tuple[float, float]:
    """Median RSS of the first and second half of the samples after the warm-up."""
    steady = rss_mib[int(len(rss_mib) * WARMUP_FRACTION) :]
    if len(steady) < 4:
        return math.nan, math.nan
    half = len(steady) // 2
    return statistics.median(steady[:half]), statistics.median(steady[half:])


def memory_problem(rss_mib: list[float], max_growth_mib: float) -> str | None:
    """Why the RSS series looks like a leak, or None."""
    first, second = memory_growth_mib(rss_mib)
    if math.isnan(first):
        return f"{len(rss_mib)} RSS samples are too few to judge memory growth"
    if second - first > max_growth_mib:
        return (
            f"RSS grew from {first:.1f} MiB (first half median) to {second:.1f} MiB "
            f"(second half), more than {max_growth_mib:g} MiB"
        )
    return None


def wait_idle(url: str, timeout_s: float = 10.0) -> str | None:
    """None once the queue and in-flight gauges read 0 after the load; else why not."""
    deadline = time.monotonic() + timeout_s
    while True:
        gauges = scrape_gauges(url)
        if all(value == 0 or math.isnan(value) for value in gauges.values()):
            return None
        if time.monotonic() > deadline:
            return f"work left after the load stopped: {gauges}"
        time.sleep(0.2)


def write_samples(samples: list[Sample], path: Path) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["t_s", "rss_mib", "queue_depth", "in_flight", "p99_ms", "rps"])
        for s in samples:
            writer.writerow([f"{s.t_s:.1f}", f"{s.rss_mib:.2f}", s.queue_depth, s.in_flight,
                             s.p99_ms, f"{s.rps:.1f}"])  # fmt: skip


def drive(target: Target, args, prefix: Path):
    """Service up, Locust for the soak's length while sampling, service down (SIGTERM).
    Returns the samples, their start (Unix time), Locust's exit code and the idle check."""
    run_time_s = args.minutes * 60
    with target.service(args.out / "service.log") as service:
        print(f"service ready at {service.url} (pid {service.pid}); soak {run_time_s:.0f} s")
        plan = LocustPlan(
            host=service.url, scenario="mixed+open", users=args.users + 1, run_time_s=run_time_s,
            csv_prefix=prefix, arrival_rate=10, burst_factor=4, full_history=True,
        )  # fmt: skip
        locust = start_locust(plan, args.out / "locust.log")
        limit_s = run_time_s + 120  # start-up, stop timeout, CSV writing
        samples, start = sample_until_done(locust, service.url, service.pid, args.sample_s, limit_s)
        return samples, start, locust.returncode, wait_idle(service.url)


def soak(target: Target, args) -> int:
    """Run the soak; print and save the figures; 0 only if nothing failed and RSS stayed flat."""
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    run_time_s = args.minutes * 60
    prefix = out / "soak"
    try:
        samples, start, locust_code, idle = drive(target, args, prefix)
    except ServiceError as exc:
        print(f"FAIL: {exc}")
        return 1
    samples = with_latency(samples, rolling_p99(Path(f"{prefix}_stats_history.csv"), start))
    write_samples(samples, out / "soak.csv")
    plot(samples, out / "soak.png", args.minutes)
    result = read_result(prefix, locust_code)
    problems = verdict(result, prefix)
    problems += [p for p in (memory_problem([s.rss_mib for s in samples], args.max_growth_mib),
                             idle) if p]  # fmt: skip
    summary = summarize(samples, result, run_time_s, problems)
    (out / "soak_summary.json").write_text(json.dumps(summary, indent=2))
    print(f"{'FAIL' if problems else 'PASS'}: {describe(result)}")
    first, second = summary["rss_first_half_mib"], summary["rss_second_half_mib"]
    depth = summary["max_queue_depth"]
    print(f"  RSS {first:.1f} -> {second:.1f} MiB, max queue depth {depth:g}; {out / 'soak.csv'}")
    for problem in problems[:12]:
        print(f"  {problem}")
    return 1 if problems else 0


def plot(samples: list[Sample], path: Path, minutes: float) -> None:
    from loadtests.render import machine, plot_soak  # matplotlib only when plotting

    info = machine()
    title = f"Soak, {minutes:g} min ({info['cpu']}, {info['cores']} cores, {info['date']})"
    plot_soak(samples, path, title)


def summarize(samples: list[Sample], result, run_time_s: float, problems: list[str]) -> dict:
    """The figures worth recording (docs/RELIABILITY.md "Soak")."""
    first, second = memory_growth_mib([s.rss_mib for s in samples])
    p99s = [s.p99_ms for s in samples if not math.isnan(s.p99_ms)]
    return {
        "passed": not problems,
        "run_time_s": run_time_s,
        "requests": result.requests,
        "failures": result.failures,
        "rps": result.rps,
        "p50_ms": result.p50_ms,
        "p99_ms": result.p99_ms,
        "rss_start_mib": samples[0].rss_mib if samples else math.nan,
        "rss_first_half_mib": first,
        "rss_second_half_mib": second,
        "rss_max_mib": max((s.rss_mib for s in samples), default=math.nan),
        "max_queue_depth": max((s.queue_depth for s in samples), default=math.nan),
        "rolling_p99_max_ms": max(p99s, default=math.nan),
        "problems": problems,
    }
