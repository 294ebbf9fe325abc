"""``make gpu-check`` without a GPU: one line, exit 0, and a report of every step's command line
through the same report machinery a GPU run uses (at most 8 files, as a lent machine's $OUT
hands back)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from gpucheck import machine
from gpucheck.__main__ import main as gpucheck_main
from gpucheck.run import FILE_NAME, MAX_FILES, REPORT_NAME, dry_run
from gpucheck.steps import REPO, Step, plan

STEPS = [s.name for s in plan(Path("/nonexistent"))]


def run_check(*args: str, out: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OUT": str(out)}
    return subprocess.run([sys.executable, "-m", "gpucheck", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip


def check_files(out: Path) -> str:
    names = sorted(p.name for p in out.iterdir())
    assert len(names) <= MAX_FILES and all(FILE_NAME.match(n) for n in names), names
    assert names == sorted([REPORT_NAME] + [f"{i}-{s}.log" for i, s in enumerate(STEPS, 1)])
    return (out / REPORT_NAME).read_text()


@pytest.mark.skipif(machine.detect().present, reason="a GPU is here: make gpu-check would run")
def test_without_a_gpu_one_line_exit_zero_and_a_report(tmp_path):
    done = run_check(out=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu-check: no NVIDIA GPU here (")
    assert f"dry run of {len(STEPS)} steps" in lines[0]
    report = check_files(tmp_path)
    assert "Mode: dry run, nothing executed." in report
    for index, name in enumerate(STEPS, 1):
        assert f"| {index} | {name} | dry run |" in report
    for command in ("python -m pytest -m gpu", "python -m gpucheck.crosscheck --device cuda",
                    "python -m engine.autotune", "--batch-sizes 1,8,32,128",
                    "--nets resnet18 --batch-sizes 1,32",
                    "python -m loadtests.compare_servers --device cuda"):  # fmt: skip
        assert command in report


def test_dry_run_flag_and_selected_steps(tmp_path, capsys):
    assert gpucheck_main(["--dry-run", "--out", str(tmp_path), "--steps", "autotune"]) == 0
    assert "dry run of 1 steps" in capsys.readouterr().out
    report = (tmp_path / REPORT_NAME).read_text()
    assert "| 1 | autotune | dry run |" in report and "gpu-tests" not in report
    with pytest.raises(SystemExit, match="unknown steps"):
        gpucheck_main(["--dry-run", "--out", str(tmp_path), "--steps", "nope"])


def test_a_command_that_could_not_start_is_broken(tmp_path):
    step = Step("x", "a missing module", [sys.executable, "-m", "gpucheck.missing"], 5,
                paths=[tmp_path / "absent.onnx"])  # fmt: skip
    outcome = dry_run(step, tmp_path / "1-x.log")
    assert outcome.status == "broken" and not outcome.ok
    assert (
        "module gpucheck.missing not found" in outcome.note
        and "absent.onnx missing" in outcome.note
    )


def test_the_steps_fit_the_budget_and_the_order_of_the_issue():
    steps = plan(Path("/w"))
    assert sum(s.timeout_s for s in steps) <= 540
    assert STEPS == ["service-packages", "gpu-tests", "crosscheck", "autotune", "bench-cifar",
                     "bench-resnet18", "service-load"]  # fmt: skip
    assert len(steps) + 1 <= MAX_FILES  # one log each and the report
