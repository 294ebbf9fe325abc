"""A real ``python -m service`` in a subprocess, and the bystanders that check nothing was lost.

Every reliability test talks HTTP to a server started here on a loopback port picked by the kernel
(``--port 0``; the port is read from uvicorn's start-up line). ``Bystanders`` are good requests sent
while something hostile happens: each must come back with the answer the same image got alone.
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from tests.processes import terminate

REPO = Path(__file__).resolve().parents[2]
PORT_LINE = re.compile(rb"listening on http://127\.0\.0\.1:(\d+)")
START_TIMEOUT_S = 60.0
# One client for every test: thread-safe, and creating one costs more than a request.
http = httpx.Client(timeout=30)


class Server:
    """One service process. ``faults`` (fault_server.py flags) wraps the engine to misbehave."""

    def __init__(self, model: Path, log_path: Path, *flags: str, faults=()):
        if faults:
            argv = [sys.executable, "-m", "tests.service.fault_server", *faults, "--"]
        else:
            argv = [sys.executable, "-m", "service"]
        argv += ["--model", str(model), "--port", "0", "--device", "cpu", *flags]
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        environ = {**os.environ, "PYTHONPATH": str(REPO)}
        self.proc = subprocess.Popen(
            argv, cwd=REPO, stdout=self._log, stderr=subprocess.STDOUT, env=environ
        )
        self.port = self._wait_port()
        self.url = f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_bytes().decode(errors="replace")

    def _wait_port(self) -> int:
        end = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < end:
            found = PORT_LINE.search(self.log_path.read_bytes())
            if found:
                return int(found.group(1))
            if self.proc.poll() is not None:
                raise RuntimeError(f"service exited with {self.proc.returncode}:\n{self.log()}")
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"service did not start listening:\n{self.log()}")

    def wait_ready(self, timeout_s: float = START_TIMEOUT_S) -> None:
        """Poll ``/readyz`` until 200."""
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            try:
                if http.get(self.url + "/readyz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError(f"service exited with {self.proc.returncode}:\n{self.log()}")
            time.sleep(0.05)
        raise RuntimeError(f"service not ready after {timeout_s} s:\n{self.log()}")

    def rss_bytes(self) -> int:
        """Resident memory of the server process (Linux ``/proc``)."""
        fields = Path(f"/proc/{self.proc.pid}/status").read_text().split("\n")
        line = next(f for f in fields if f.startswith("VmRSS:"))
        return int(line.split()[1]) * 1024

    def stop(self) -> int:
        """SIGTERM, then SIGKILL if it does not exit; returns the exit code."""
        code = terminate(self.proc)
        self._log.close()
        return code


def start(model: Path, log_path: Path, *flags: str, faults=()) -> Server:
    """Start a server and wait until it is ready (stopping it if it never gets there)."""
    server = Server(model, log_path, *flags, faults=faults)
    try:
        server.wait_ready()
    except Exception:
        server.stop()
        raise
    return server


def png_bytes(pixels: np.ndarray) -> bytes:
    """Encode uint8 (H, W) or (H, W, 3) pixels as PNG."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def random_pngs(count: int, size: int = 16, seed: int | None = None) -> list[bytes]:
    """Distinct random RGB images: each one's answer tells it apart from the others."""
    rng = np.random.default_rng(seed)
    return [png_bytes(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(count)]


def predict_png(url: str, image: bytes) -> httpx.Response:
    return http.post(
        url + "/predict?raw=true", content=image, headers={"content-type": "image/png"}
    )


def raw_output(response: httpx.Response) -> np.ndarray:
    """The model's output vector of a one-image ``/predict`` answer."""
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert len(results) == 1
    return np.asarray(results[0]["output"], np.float64)


def assert_error(response: httpx.Response, status: int | tuple[int, ...], code: str | None = None):
    """The status is one of ``status`` and the body is ``{"error": {"code", "message"}}``."""
    allowed = (status,) if isinstance(status, int) else status
    assert response.status_code in allowed, (response.status_code, response.text[:500])
    error = response.json()["error"]
    assert isinstance(error["code"], str) and isinstance(error["message"], str), error
    assert "Traceback" not in response.text
    if code is not None:
        assert error["code"] == code, error
    return error


class Bystanders:
    """Good requests with known answers, sent concurrently while a test does something hostile."""

    def __init__(self, url: str, count: int = 12, seed: int | None = None):
        self.url = url
        self.images = random_pngs(count, seed=seed)
        self.expected = [raw_output(predict_png(url, im)) for im in self.images]
        distinct = {tuple(np.round(e, 4)) for e in self.expected}
        assert len(distinct) == len(self.expected), "bystander images must answer differently"

    def run(self, hostile: Callable[[], object], rounds: int = 2, threads: int = 6):
        """Run ``hostile()`` while ``threads`` clients send every image ``rounds`` times.

        Returns what ``hostile`` returned; asserts that each good request got its own answer.
        """
        jobs = [i for _ in range(rounds) for i in range(len(self.images))]
        with ThreadPoolExecutor(threads + 1) as pool:
            attack = pool.submit(hostile)
            answers = list(pool.map(self._one, jobs))
            outcome = attack.result()
        for index, got in zip(jobs, answers, strict=True):
            np.testing.assert_allclose(got, self.expected[index], rtol=1e-4, atol=1e-5)
        return outcome

    def _one(self, index: int) -> np.ndarray:
        return raw_output(predict_png(self.url, self.images[index]))


def metric_samples(url: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """Samples of one metric from ``/metrics``: {sorted label pairs: value}."""
    text = http.get(url + "/metrics").text
    samples = {}
    pattern = re.compile(r"^" + re.escape(name) + r"(?:\{(.*)\})? (\S+)$")
    for line in text.splitlines():
        found = pattern.match(line)
        if found:
            labels = tuple(sorted(re.findall(r'(\w+)="([^"]*)"', found.group(1) or "")))
            samples[labels] = float(found.group(2))
    return samples
