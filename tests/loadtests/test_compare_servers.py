"""``python -m loadtests.compare_servers`` end to end: the two quick servers on the CIFAR-style
net, and gemmserve (supervisor, engine and workers) on the bundled digits model."""

from __future__ import annotations

import re
import subprocess
import sys

from loadtests.service_proc import REPO


def _run(*flags: str) -> str:
    command = [sys.executable, "-m", "loadtests.compare_servers", "--connections", "4",
               "--seconds", "1.5", "--warmup-s", "0.5", *flags]  # fmt: skip
    run = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "Machine:" in run.stdout and "load average" in run.stdout
    return run.stdout


def _cells(stdout: str, names: str) -> list[tuple[str, list[str]]]:
    rows = re.findall(rf"^\| ({names}) \|(.*)$", stdout, re.M)
    return [(name, [c.strip() for c in cells.split("|")]) for name, cells in rows]


def _check(cells: list[str]) -> None:
    req_s, p50, p99, goodput, non_200, cpu_ms = cells[:6]
    assert float(req_s.replace(",", "")) > 0 and non_200 == "0"
    assert 0 < float(p50) <= float(p99)
    assert 0 <= float(goodput.replace(",", "")) <= float(req_s.replace(",", "")) + 1
    assert 0 < float(cpu_ms) < 1000  # the server's CPU (every process) per answered request


def test_plain_and_noop_servers_measured_with_cpu_per_request():
    stdout = _run("--only", "plain", "no-op")
    rows = _cells(stdout, r"plain FastAPI \+ onnxruntime|no-op FastAPI endpoint")
    assert [name for name, _ in rows] == ["plain FastAPI + onnxruntime", "no-op FastAPI endpoint"]
    for _, cells in rows:
        _check(cells)


def test_gemmserve_workers_on_the_digits_model():
    stdout = _run("--net", "digits", "--only", "gemmserve --workers 2")
    ((name, cells),) = _cells(stdout, r"gemmserve --workers 2")
    _check(cells)
    assert float(cells[6]) >= 1  # mean engine batch, read from the service's /metrics
