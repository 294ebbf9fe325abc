"""The runner and the report on real processes: a step that passes, one that fails, one that
outlives its limit (stopped with the process it started), one left without time; each reported
with its verdict and the parts of its log worth reading."""

from __future__ import annotations

import os
import sys
import time

import pytest

from gpucheck.report import render
from gpucheck.run import FILE_NAME, run_all
from gpucheck.steps import Step

TABLE = "print('| batch | img/s |'); print('|---:|---:|'); print('| 1 | 123 |')"
# a step that starts a child (as the service step starts servers), says its pid, then sleeps
SLEEPER = ("import subprocess, sys, time; child = subprocess.Popen([sys.executable, '-c', "
           "'import time; time.sleep(120)']); print('child-pid', child.pid, flush=True); "
           "time.sleep(120)")  # fmt: skip


def python_step(name: str, code: str, limit_s: float, highlight: str = r"$^") -> Step:
    return Step(name, f"the {name} step", [sys.executable, "-c", code], limit_s, highlight)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    steps = [
        python_step("tables", TABLE + "; print('GPU: card'); print('no' + 'ise')", 60, r"^GPU:"),
        python_step("fails", "import sys; print('went wrong'); sys.exit(3)", 60),
        python_step("sleeps", SLEEPER, 2),
        python_step("late", "print('ne' + 'ver')", 60),
    ]
    lines = []
    # the first three take over 2 s (the sleeper its whole limit): under 5 s are left for the last
    outcomes = run_all(steps, out, budget_s=6.0, dry=False, progress=lines.append)
    return out, outcomes, lines


def test_each_step_gets_its_verdict_and_the_check_goes_on(ran):
    out, outcomes, lines = ran
    assert [o.status for o in outcomes] == ["passed", "failed", "timed out", "skipped"]
    assert outcomes[1].note == "exit code 3" and outcomes[2].note.startswith("stopped after 2")
    assert all(FILE_NAME.match(o.log.name) and o.log.exists() for o in outcomes)
    assert lines[0].startswith("gpu-check [1/4] tables") and len(lines) == 6


def test_a_step_past_its_limit_is_stopped_with_its_children(ran):
    _, outcomes, _ = ran
    text = outcomes[2].log.read_text()
    child = int(text.split("child-pid ")[1].split()[0])
    end = time.monotonic() + 10
    while alive(child) and time.monotonic() < end:
        time.sleep(0.05)  # SIGTERM was sent; the kernel may take a moment to reap it
    assert not alive(child)


def test_report_quotes_tables_highlights_and_failure_tails(ran):
    _, outcomes, _ = ran
    report = render(outcomes, ["- GPU: test"], False, 6.0)
    assert "| 1 | tables | passed |" in report and "| 4 | late | skipped |" in report
    assert "| 1 | 123 |" in report and "GPU: card" in report and "noise" not in report
    failed = report.split("## 2. fails")[1].split("## 3.")[0]
    assert "**failed** (exit code 3)" in failed and "went wrong" in failed
    assert "Last " in report.split("## 3. sleeps")[1] and "never" not in report
