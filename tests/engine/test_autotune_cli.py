"""``python -m engine.autotune`` and ``python -m engine.bench`` end to end, in subprocesses."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from engine import load_model
from engine.bench.nets import NetBuilder, cifar_net
from engine.split import slices
from engine.threads import cpu_cores

ROOT = Path(__file__).resolve().parents[2]


def small_net(path: Path) -> Path:
    """A 3x3 conv, a depthwise conv and a strided 1x1 conv: several candidates each."""
    b = NetBuilder(seed=3)
    x = b.conv_bn_relu("input", 3, 12)
    w = b.rng.standard_normal((12, 1, 3, 3)).astype(np.float32)
    x = b.node("Conv", [x, b.const(w)], kernel_shape=[3, 3], pads=[1, 1, 1, 1], group=12)
    x = b.conv_bn_relu(x, 12, 10, kernel=1, stride=2)
    model = b.model("small", "input", b.head(x, 10, 4), (3, 11, 13), 4)
    path.write_bytes(model.SerializeToString())
    return path


def autotune(*args) -> str:
    command = [sys.executable, "-m", "engine.autotune", *map(str, args)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_cli_tunes_writes_and_then_hits(tmp_path):
    model, cache = small_net(tmp_path / "small.onnx"), tmp_path / "cache.json"
    first = autotune(model, "--device", "cpu", "--batch-sizes", "1,3", "--cache", cache)
    assert "batch 1:" in first and "batch 3:" in first
    assert "winner" in first and "im2col_gemm" in first and "depthwise_direct" in first
    entries = json.loads(cache.read_text())["entries"]
    # three convs x each batch the layers run at: bucket 1, and bucket 3 as one slice per core
    # (engine.split), each slice's layers tuned for one thread
    slice_sizes = {b - a for a, b in slices(3, min(cpu_cores(), 3))}
    expected = 3 * (2 if cpu_cores() < 2 else 1 + len(slice_sizes))
    assert len(entries) == expected
    second = autotune(model, "--batch-sizes", "1,3", "--cache", cache)
    assert f"{expected} hits, 0 tuned" in second


def test_tuned_model_matches_onnxruntime(tmp_path):
    path = tmp_path / "cifar.onnx"
    path.write_bytes(cifar_net(seed=1).SerializeToString())
    model = load_model(path, "cpu", (1, 4), autotune_cache=tmp_path / "c.json")
    sources = {layer["source"] for layer in model.info()["layers"] if layer["op"] == "Conv"}
    assert sources == {"tuned"}
    x = np.random.default_rng(7).standard_normal((3, 3, 32, 32), dtype=np.float32)
    session = ort.InferenceSession(path.read_bytes(), providers=["CPUExecutionProvider"])
    reference = session.run(None, {"input": x})[0]
    assert np.linalg.norm(model(x) - reference) / np.linalg.norm(reference) < 1e-4
    again = load_model(path, "cpu", (1, 4), autotune_cache=tmp_path / "c.json")
    assert {layer["source"] for layer in again.info()["layers"] if layer["op"] == "Conv"} == {
        "cache"
    }
    assert again.tuner.stats.tuning_seconds == 0


@pytest.mark.slow
def test_bench_quick_runs(tmp_path):
    command = [sys.executable, "-m", "engine.bench", "--nets", "cifar", "--batch-sizes", "2",
               "--quick", "--min-time-s", "0.01", "--cache", str(tmp_path / "c.json")]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "| cifar | 2 |" in done.stdout and "Machine:" in done.stdout
    # every conv layer against onnxruntime's per-node profile, matched by output shape
    layers = [line for line in done.stdout.splitlines() if line.startswith("| cifar | 2 | conv")]
    assert len(layers) == 5 and all(line.count("|") == 11 for line in layers)
    assert all(line.split("|")[8].strip() for line in layers)  # an onnxruntime time each


def test_cli_reports_a_missing_model_without_a_traceback(tmp_path):
    command = [sys.executable, "-m", "engine.autotune", str(tmp_path / "missing.onnx"),
               "--cache", str(tmp_path / "c.json")]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "missing.onnx" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "c.json").exists()


def test_bench_rounds_do_not_time_what_the_previous_runner_left_running(monkeypatch):
    """A runner's first call after another one pays for the other's leftovers (spinning thread
    pools); every block starts with an untimed call, so that cost never reaches the medians."""
    import time

    import engine.bench.runners as runners

    monkeypatch.setattr(runners, "BLOCK_S", 0.0)  # one timed call per block: the worst case
    last = {"name": None}

    def runner(name):
        def call():
            if last["name"] != name:
                time.sleep(0.05)  # the previous runner's threads still hold the cores
            last["name"] = name
            time.sleep(0.001)

        return call

    medians = runners.interleaved_medians({"a": runner("a"), "b": runner("b")}, 0.0, 3)
    assert set(medians) == {"a", "b"} and all(s < 0.02 for s in medians.values()), medians


def test_bench_blocks_open_with_untimed_calls_longer_than_a_thread_pool_spins(monkeypatch):
    """Leftovers that last a while after the switch (onnxruntime's thread spins ~40 ms after
    its last run), not one call: each block's untimed calls last SETTLE_S."""
    import time

    import engine.bench.runners as runners

    monkeypatch.setattr(runners, "BLOCK_S", 0.0)  # one timed call per block: the worst case
    spin_s = 0.03
    assert 2 * spin_s <= runners.SETTLE_S
    last = {"name": None, "since": 0.0}

    def runner(name):
        def call():
            if last["name"] != name:
                last["name"], last["since"] = name, time.perf_counter()
            if time.perf_counter() - last["since"] < spin_s:
                time.sleep(0.02)  # the previous runner's threads still spinning
            time.sleep(0.001)

        return call

    medians = runners.interleaved_medians({"a": runner("a"), "b": runner("b")}, 0.0, 3)
    assert all(s < 0.015 for s in medians.values()), medians
