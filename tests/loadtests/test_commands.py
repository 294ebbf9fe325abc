"""``python -m loadtests run|soak|report`` end to end: a real service, real Locust, short runs."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest

from loadtests.service_proc import DEFAULT_MODEL, REPO

pytestmark = pytest.mark.slow


def loadtests(*args: str, timeout_s: float) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "loadtests", *args, "--model", str(DEFAULT_MODEL)]
    return subprocess.run(
        command, cwd=REPO, capture_output=True, text=True, timeout=timeout_s, check=False
    )


def stats_rows(path) -> dict[str, dict]:
    with open(path, newline="") as handle:
        return {row["Name"]: row for row in csv.DictReader(handle)}


def test_run_passes_with_every_kind_of_request_and_no_failure(tmp_path):
    done = loadtests("run", "--run-time-s", "15", "--users", "6", "--out", str(tmp_path),
                     timeout_s=120)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "PASS" in done.stdout
    rows = stats_rows(tmp_path / "run_stats.csv")
    assert int(rows["Aggregated"]["Request Count"]) > 50
    assert int(rows["Aggregated"]["Failure Count"]) == 0
    kinds = {"/predict png", "/predict multipart", "/predict npy", "/v2 infer", "/v2 infer binary",
             "/predict png (open loop)"}  # fmt: skip
    assert kinds <= set(rows)
    assert any(name.startswith("bad: ") for name in rows)  # the trickle of bad inputs ran
    assert (tmp_path / "autotune.json").exists()  # the service tuned into the run's directory


def test_models_scenario_mixes_every_model_of_a_repository(tmp_path):
    from tests.service.models import write_model_dir

    for name, channels, size in (("gray", 1, 8), ("rgb", 3, 16)):
        write_model_dir(tmp_path / "repo", name, channels=channels, size=size)
    done = loadtests("run", "--scenario", "models", "--run-time-s", "8", "--users", "4",
                     "--out", str(tmp_path / "out"), "--set",
                     f"model_repository={tmp_path / 'repo'}", timeout_s=120)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    rows = stats_rows(tmp_path / "out" / "run_stats.csv")
    assert int(rows["Aggregated"]["Failure Count"]) == 0
    for name in ("digits", "gray", "rgb"):  # the bundled model (--model) and the repository's
        assert int(rows[f"/models/{{name}}/predict npy ({name})"]["Request Count"]) > 0
    assert {p.name.split("-")[0] for p in (tmp_path / "out" / "autotune").iterdir()} == {
        "digits", "gray", "rgb"}  # fmt: skip


def test_run_fails_when_good_requests_fail(tmp_path):
    # A 1 us deadline: every good request gets 504, which must turn the run red.
    done = loadtests("run", "--run-time-s", "2", "--users", "2", "--set", "timeout_ms=0.001",
                     "--set", "autotune_mode=off", "--out", str(tmp_path),
                     timeout_s=90)  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    assert "FAIL" in done.stdout and "HTTP 504" in done.stdout


def test_short_soak_records_memory_queue_depth_and_p99(tmp_path):
    done = loadtests("soak", "--minutes", "0.5", "--users", "6", "--sample-s", "1",
                     "--out", str(tmp_path), timeout_s=150)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    with open(tmp_path / "soak.csv", newline="") as handle:
        samples = list(csv.DictReader(handle))
    assert len(samples) >= 10
    assert all(float(s["rss_mib"]) > 10 for s in samples)
    assert all(float(s["queue_depth"]) >= 0 for s in samples)
    assert any(float(s["p99_ms"]) > 0 for s in samples if s["p99_ms"] != "nan")
    summary = json.loads((tmp_path / "soak_summary.json").read_text())
    assert summary["passed"] and summary["failures"] == 0 and summary["requests"] > 100


def test_report_writes_tables_and_plots(tmp_path):
    docs = tmp_path / "docs"
    done = loadtests("report", "--users", "2", "--batch-sizes", "4", "--point-s", "2",
                     "--open-fractions", "0.5", "--set", "autotune_mode=off",
                     "--out", str(tmp_path / "out"), "--docs", str(docs),
                     timeout_s=180)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    text = (docs / "LOADTEST.md").read_text()
    assert "| users | mbs 4 |" in text and "\n| 2 | " in text
    assert "| 4 | Poisson |" in text and "| 4 | bursts x4 |" in text
    with open(tmp_path / "out" / "points.csv", newline="") as handle:
        points = list(csv.DictReader(handle))
    assert len(points) == 1 + 2  # 1 closed point + Poisson and bursty open-loop points
    assert all(int(p["requests"]) > 0 and int(p["failures"]) == 0 for p in points)
    plots = ("loadtest_throughput.png", "loadtest_latency.png", "loadtest_open_loop.png")
    assert all((docs / name).stat().st_size > 1000 for name in plots)
