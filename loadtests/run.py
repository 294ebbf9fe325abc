"""``python -m loadtests run``: the service as a subprocess, one headless Locust run against it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from loadtests.locust_run import LocustPlan, LocustResult, read_failures, run_locust
from loadtests.service_proc import ServiceError, ServiceProcess


@dataclass(frozen=True)
class Target:
    """The service to start: model, device and extra service flags."""

    model: Path
    device: str = "cpu"
    flags: tuple[tuple[str, str], ...] = ()

    def service(self, log_path: Path, **more_flags) -> ServiceProcess:
        flags = {**dict(self.flags), **more_flags}
        return ServiceProcess(self.model, log_path, flags, device=self.device)


def describe(result: LocustResult) -> str:
    return (
        f"{result.requests} requests, {result.failures} failed, {result.rps:.1f} req/s, "
        f"p50 {result.p50_ms:.0f} ms, p95 {result.p95_ms:.0f} ms, p99 {result.p99_ms:.0f} ms"
    )


def verdict(result: LocustResult, csv_prefix: Path) -> list[str]:
    """Reasons the run failed (empty when it passed)."""
    problems = [f"unexpected failure: {line}" for line in read_failures(csv_prefix)]
    if result.failures and not problems:
        problems.append(f"{result.failures} failed requests")
    if result.exit_code != 0 and not problems:
        problems.append(f"locust exited with {result.exit_code}")
    if result.requests == 0:
        problems.append("no request was made")
    return problems


def run(target: Target, plan_args: dict, out_dir: Path) -> int:
    """Start the service, run Locust, stop the service with SIGTERM; 0 only if all went well."""
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_prefix = out_dir / "run"
    try:
        with target.service(out_dir / "service.log") as service:
            print(f"service ready at {service.url} (pid {service.pid}); log {out_dir}/service.log")
            plan = LocustPlan(host=service.url, csv_prefix=csv_prefix, **plan_args)
            result = run_locust(plan)
    except ServiceError as exc:
        print(f"FAIL: {exc}")
        return 1
    problems = verdict(result, csv_prefix)
    print(f"{'FAIL' if problems else 'PASS'}: {describe(result)}; CSV {csv_prefix}_stats.csv")
    for problem in problems[:12]:
        print(f"  {problem}")
    if len(problems) > 12:
        print(f"  ... {len(problems) - 12} more in {csv_prefix}_failures.csv")
    return 1 if problems else 0
