"""``python -m loadtests.compare_servers`` end to end, on the two quick servers (the gemmserve
rows run the same code path with a slower start-up: tuning the CIFAR-style net)."""

from __future__ import annotations

import re
import subprocess
import sys

from loadtests.service_proc import REPO


def test_plain_and_noop_servers_measured_with_cpu_per_request():
    command = [sys.executable, "-m", "loadtests.compare_servers", "--connections", "4",
               "--seconds", "1.5", "--warmup-s", "0.5", "--only", "plain", "no-op"]  # fmt: skip
    run = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stderr[-2000:]
    rows = re.findall(r"^\| (plain FastAPI \+ onnxruntime|no-op FastAPI endpoint) \|(.*)$",
                      run.stdout, re.M)  # fmt: skip
    assert [name for name, _ in rows] == ["plain FastAPI + onnxruntime", "no-op FastAPI endpoint"]
    for _, cells in rows:
        req_s, p50, p99, non_200, cpu_ms = (c.strip() for c in cells.split("|")[:5])
        assert float(req_s.replace(",", "")) > 0 and non_200 == "0"
        assert 0 < float(p50) <= float(p99)
        assert 0 < float(cpu_ms) < 1000  # the server process's CPU per answered request
    assert "Machine:" in run.stdout
