"""Running the steps in order, each with its own limit, never stopping at a failure.

Files written under the output folder: one ``N-step.log`` per step and the report
(``gpu-check.md``), at most ``MAX_FILES`` in all and named in letters, digits, '.', '_' and '-'
(what a lent machine's ``$OUT`` hands back).
"""

from __future__ import annotations

import importlib.util
import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from gpucheck.steps import REPO, Step, environment

REPORT_NAME = "gpu-check.md"
MAX_FILES = 8
FILE_NAME = re.compile(r"^[A-Za-z0-9._-]+$")
#: a step needs at least this much of the budget left to start
MIN_STEP_S = 5
STOP_GRACE_S = 5


@dataclass
class Outcome:
    step: Step
    status: str  # passed, failed, timed out, skipped, dry run, broken
    seconds: float = 0.0
    limit_s: float = 0.0
    log: Path | None = None
    note: str = ""

    @property
    def ok(self) -> bool:
        return self.status in ("passed", "dry run")


def log_name(index: int, step: Step) -> str:
    return f"{index}-{step.name}.log"


def clear(out: Path) -> None:
    """Remove a previous check's files (only those: the folder may hold other things)."""
    for path in [out / REPORT_NAME, *out.glob("[0-9]-*.log")]:
        path.unlink(missing_ok=True)


def run_step(step: Step, log: Path, limit_s: float) -> Outcome:
    """Run ``step`` in its own process group with its output in ``log``; on time-out the whole
    group (a started service included) gets SIGTERM, then SIGKILL."""
    started = time.monotonic()
    with open(log, "wb") as sink:
        sink.write(f"$ {step.shell()}\n".encode())
        sink.flush()
        proc = subprocess.Popen(step.argv, cwd=REPO, stdout=sink, stderr=subprocess.STDOUT,
                                env=environment(step.env), start_new_session=True)  # fmt: skip
        try:
            code = proc.wait(timeout=limit_s)
            status, note = ("passed", "") if code == 0 else ("failed", f"exit code {code}")
        except subprocess.TimeoutExpired:
            stop_group(proc)
            status, note = "timed out", f"stopped after {limit_s:.0f} s"
    return Outcome(step, status, time.monotonic() - started, limit_s, log, note)


def stop_group(proc: subprocess.Popen) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=STOP_GRACE_S)
            break
        except subprocess.TimeoutExpired:
            continue


def dry_run(step: Step, log: Path) -> Outcome:
    """Check the command could start: its module is found and the files it reads exist."""
    problems = []
    if step.module and importlib.util.find_spec(step.module) is None:
        problems.append(f"module {step.module} not found")
    problems += [f"{path} missing" for path in step.paths if not path.exists()]
    notes = [f"{p} {'present' if p.exists() else 'absent'}" for p in step.optional]
    note = "; ".join(problems or ["command line checked, not run", *notes])
    log.write_text(f"$ {step.shell()}\n(dry run: {note})\n")
    return Outcome(step, "broken" if problems else "dry run", 0.0, step.timeout_s, log, note)


def run_all(steps: list[Step], out: Path, budget_s: float, dry: bool, progress=print):
    """Every step in order within ``budget_s`` in all; each gets its own limit or what is left."""
    deadline = time.monotonic() + budget_s
    outcomes = []
    for index, step in enumerate(steps, 1):
        log = out / log_name(index, step)
        left_s = deadline - time.monotonic()
        if dry:
            outcomes.append(dry_run(step, log))
            continue
        if left_s < MIN_STEP_S:
            log.write_text(f"$ {step.shell()}\n(skipped: the {budget_s:.0f} s budget is spent)\n")
            outcomes.append(Outcome(step, "skipped", 0.0, 0.0, log, "no time left"))
            continue
        progress(f"gpu-check [{index}/{len(steps)}] {step.name} (limit {step.timeout_s:.0f} s)")
        outcomes.append(run_step(step, log, min(step.timeout_s, left_s)))
        progress(f"gpu-check [{index}/{len(steps)}] {step.name}: {outcomes[-1].status} in "
                 f"{outcomes[-1].seconds:.1f} s")  # fmt: skip
    return outcomes
