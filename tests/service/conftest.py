"""Fixtures: real ``python -m service`` processes on loopback ports, and the engine as reference."""

from __future__ import annotations

import contextlib
import io
import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

import engine
from tests.processes import terminate
from tests.service.models import write_model_dir

REPO = Path(__file__).resolve().parents[2]
MEAN = [0.5, 0.4, 0.3]
STD = [0.25, 0.2, 0.3]
# Small limits so the limit tests stay fast.
MAX_BODY_BYTES = 1 << 20
# First-pixel markers the fault server reacts to (see fault_server.py).
POISON = 1234.5
SLOW = 4321.5


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """One service process on a free loopback port."""

    def __init__(self, args: list[str], faults: list[str] | None = None, hold_file=None, env=None):
        """``hold_file``: with faults, the engine holds batches with a ``SLOW`` image while it
        exists (see ``engine_held``)."""
        self.hold_file = hold_file
        if hold_file is not None:
            faults = [*(faults or []), "--slow", str(SLOW), "--hold-file", str(hold_file)]
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        flags = [*args, "--port", str(self.port), "--device", "cpu", "--log-level", "warning"]
        if faults is None:
            command = [sys.executable, "-m", "service", *flags]
        else:
            command = [sys.executable, "-m", "tests.service.fault_server", *faults, "--", *flags]
        self.log = open(Path(os.environ.get("TMPDIR", "/tmp")) / f"svc-{self.port}.log", "w+")  # noqa: SIM115
        self.proc = subprocess.Popen(
            command, cwd=REPO, stdout=self.log, stderr=subprocess.STDOUT, env=env
        )

    def wait_listening(self, timeout_s: float = 60) -> None:
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited {self.proc.returncode}: {self.output()}")
            try:
                httpx.get(self.url + "/healthz", timeout=1)
                return
            except httpx.TransportError:
                time.sleep(0.05)
        raise RuntimeError("server did not start listening: " + self.output())

    def wait_ready(self, timeout_s: float = 60) -> Server:
        self.wait_listening(timeout_s)
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                return self
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError("server never became ready: " + self.output())

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()[-4000:]

    def metrics(self) -> str:
        return httpx.get(self.url + "/metrics", timeout=5).text

    def stop(self) -> None:
        terminate(self.proc)
        self.log.close()


def metric(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    total = 0.0
    for line in text.splitlines():
        # Label values may hold braces (route templates): skip over quoted text.
        match = re.match(r'^([a-zA-Z_:][\w:]*)(\{(?:[^"}]|"[^"]*")*\})? (\S+)$', line)
        if not match or match.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(match.group(3))
    return total


def delta(before: str, after: str, name: str, **labels: str) -> float:
    """How much a metric grew between two scrapes."""
    return metric(after, name, **labels) - metric(before, name, **labels)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    meta = {
        "labels": [f"class-{i}" for i in range(10)],
        "preprocess": {"resample": "bilinear", "mean": MEAN, "std": STD},
    }
    return write_model_dir(tmp_path_factory.mktemp("models"), "tiny", meta=meta)


@pytest.fixture(scope="session")
def reference(model_dir):
    """The engine itself, loaded in the test process: what the service must answer."""
    model = engine.load_model(str(model_dir / "model.onnx"), device="cpu", batch_sizes=(1,))

    def run(x: np.ndarray) -> np.ndarray:
        return np.concatenate([model(x[i : i + 1]) for i in range(len(x))])

    return run


@pytest.fixture(scope="session")
def server(model_dir):
    """The service with its default batching and small body limit."""
    srv = Server(
        [
            "--model",
            str(model_dir),
            "--max-body-bytes",
            str(MAX_BODY_BYTES),
            "--max-image-pixels",
            "25000000",
        ]
    ).wait_ready()
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def fault_server(model_dir, tmp_path_factory):
    """Engine wrapped with injected faults; a small queue and batches of at most 16."""
    hold = tmp_path_factory.mktemp("hold") / "hold"
    faults = ["--poison", str(POISON), "--oom-above", "8", "--delay-ms", "5"]
    args = ["--model", str(model_dir), "--max-queue", "24", "--max-batch-size", "16"]
    args += ["--max-concurrency", "200", "--keep-alive-s", "1"]
    srv = Server(args, faults=faults, hold_file=hold).wait_ready()
    yield srv
    srv.stop()


def random_batch(n: int, seed: int | None = None) -> np.ndarray:
    """Fresh random inputs (never zeros) of the tiny model's shape."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 3, 16, 16)).astype(np.float32)


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


NPY_TYPE = {"Content-Type": "application/x-npy"}


@contextlib.contextmanager
def engine_held(server):
    """Hold the engine on one slow image while the block runs, so requests queue up behind it."""
    server.hold_file.touch()
    x = random_batch(1)
    x[0, 0, 0, 0] = SLOW
    kwargs = {"content": npy_bytes(x), "headers": NPY_TYPE, "timeout": 60}
    blocker = threading.Thread(target=httpx.post, args=(server.url + "/predict",), kwargs=kwargs)
    blocker.start()
    try:
        wait_for(server, "gemmserve_batch_running_images", lambda v: v == 1)
        yield
    finally:
        server.hold_file.unlink()
        blocker.join()


def wait_for(server, name: str, predicate, timeout_s: float = 20, **labels: str) -> None:
    """Poll /metrics until ``predicate(value of name)`` (with ``labels``) holds."""
    end = time.monotonic() + timeout_s
    while not predicate(metric(server.metrics(), name, **labels)):
        assert time.monotonic() < end, f"{name} never reached the expected value"
        time.sleep(0.005)
