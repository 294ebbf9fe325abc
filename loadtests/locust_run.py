"""Locust as a headless subprocess, and the figures of its CSV output."""

from __future__ import annotations

import csv
import math
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from loadtests.service_proc import REPO

LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"
SCENARIOS = {
    "mixed": ("MixedClient",),
    "open": ("OpenLoopClient",),
    "mixed+open": ("MixedClient", "OpenLoopClient"),
    "single": ("SingleImageClient",),
    "models": ("MultiModelClient",),  # with --set model_repository=DIR
}


@dataclass(frozen=True)
class LocustPlan:
    """One headless Locust run against ``host``."""

    host: str
    scenario: str
    users: int
    run_time_s: float
    csv_prefix: Path
    spawn_rate: float | None = None  # default: all users at once
    arrival_rate: float = 20.0
    burst_factor: float = 1.0
    burst_period_s: float = 2.0
    full_history: bool = False
    reset_stats: bool = False  # drop what was counted while users were spawning (report only)

    def command(self) -> list[str]:
        """The ``locust`` command line; it exits non-zero on any failed request."""
        args = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless"]
        args += ["--host", self.host, "-u", str(self.users)]
        args += ["-r", str(self.spawn_rate or self.users), "--run-time", f"{self.run_time_s:g}s"]
        args += ["--csv", str(self.csv_prefix), "--only-summary", "--exit-code-on-error", "1"]
        args += ["--stop-timeout", "10", "--loglevel", "WARNING"]
        args += ["--arrival-rate", f"{self.arrival_rate:g}"]
        args += ["--burst-factor", f"{self.burst_factor:g}"]
        args += ["--burst-period-s", f"{self.burst_period_s:g}"]
        if self.full_history:
            args.append("--csv-full-history")
        if self.reset_stats:
            args.append("--reset-stats")
        return args + list(SCENARIOS[self.scenario])


@dataclass(frozen=True)
class LocustResult:
    """Aggregated figures of one run (latencies in ms, as Locust reports them)."""

    exit_code: int
    requests: int
    failures: int
    rps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float


def locust_env() -> dict[str, str]:
    """The environment for Locust: the repository importable, no Locust update check."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def start_locust(plan: LocustPlan, log_path: Path | None) -> subprocess.Popen:
    """Start Locust; its output goes to ``log_path`` (or this terminal when None)."""
    plan.csv_prefix.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "ab") if log_path else None  # noqa: SIM115 - closed after Popen
    try:
        return subprocess.Popen(
            plan.command(), cwd=REPO, env=locust_env(), stdout=log, stderr=subprocess.STDOUT
        )
    finally:
        if log:
            log.close()


def run_locust(plan: LocustPlan, log_path: Path | None = None) -> LocustResult:
    """Run to completion and read the aggregated row of ``<prefix>_stats.csv``."""
    proc = start_locust(plan, log_path)
    timeout_s = plan.run_time_s + 120  # start-up, stop timeout and CSV writing
    try:
        code = proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise
    return read_result(plan.csv_prefix, code)


def number(text: str) -> float:
    """A Locust CSV cell as a float (``N/A`` and blanks as NaN)."""
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


def read_result(csv_prefix: Path, exit_code: int) -> LocustResult:
    """The ``Aggregated`` row of ``<prefix>_stats.csv``."""
    with open(f"{csv_prefix}_stats.csv", newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if row["Name"] == "Aggregated"]
    if not rows:
        raise ValueError(f"{csv_prefix}_stats.csv has no Aggregated row")
    row = rows[0]
    return LocustResult(
        exit_code=exit_code,
        requests=int(row["Request Count"]),
        failures=int(row["Failure Count"]),
        rps=number(row["Requests/s"]),
        p50_ms=number(row["50%"]),
        p95_ms=number(row["95%"]),
        p99_ms=number(row["99%"]),
    )


def read_failures(csv_prefix: Path) -> list[str]:
    """One line per distinct failure: ``<count> x <name>: <error>``."""
    path = Path(f"{csv_prefix}_failures.csv")
    if not path.exists():
        return []
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    return [f"{row['Occurrences']} x {row['Name']}: {row['Error']}" for row in rows]
