"""RELIABILITY.md cases 19 to 22: loading, SIGTERM under load, and bad autotune caches."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.reliability.harness import (
    Server,
    assert_error,
    http,
    metric_samples,
    predict_png,
    random_pngs,
    raw_output,
)

LOAD_DELAY_S = 5


@pytest.fixture(scope="module")
def reference(server):
    """Images and the answers a plain server gives them."""
    images = random_pngs(6, seed=19)
    return images, [raw_output(predict_png(server.url, image)) for image in images]


def assert_same_answers(url: str, reference, rtol=1e-4, atol=1e-5) -> None:
    images, expected = reference
    for image, want in zip(images, expected, strict=True):
        np.testing.assert_allclose(raw_output(predict_png(url, image)), want, rtol=rtol, atol=atol)


def assert_not_ready(response: httpx.Response) -> None:
    assert_error(response, 503, "not_ready")
    assert int(response.headers["Retry-After"]) >= 1


def test_loading_model_answers_503(model_dir, tmp_path, reference):
    """Case 19: while the model loads, /readyz and /predict are 503 (+Retry-After), at once."""
    faults = ("--load-delay-s", str(LOAD_DELAY_S))
    server = Server(model_dir, tmp_path / "log", faults=faults)
    try:
        image = reference[0][0]
        with ThreadPoolExecutor(8) as pool:
            loading = list(pool.map(lambda _: predict_png(server.url, image), range(16)))
        for response in loading:
            assert_not_ready(response)
        assert_not_ready(http.get(server.url + "/readyz"))
        assert http.get(server.url + "/v2/health/ready").status_code == 503
        assert http.get(server.url + "/healthz").status_code == 200
        server.wait_ready()
        assert_same_answers(server.url, reference)
    finally:
        server.stop()


def test_sigterm_under_load_finishes_accepted_work_and_refuses_new(model_dir, tmp_path, reference):
    """Case 20: SIGTERM while requests are in flight: every admitted one gets its one right
    answer, readiness and later requests turn 503 (or the port closes), and the process exits 0
    inside the grace period (status 0 or the re-raised SIGTERM)."""
    grace_s = 20
    flags = ("--max-batch-size", "2", "--graceful-shutdown-s", str(grace_s))
    server = Server(model_dir, tmp_path / "log", *flags, faults=("--delay-ms", "250"))
    try:
        sigterm_under_load(server, reference, grace_s)
    finally:
        server.stop()


def sigterm_under_load(server: Server, reference, grace_s: float) -> None:
    server.wait_ready()
    images, expected = reference
    jobs = [i % len(images) for i in range(24)]
    with ThreadPoolExecutor(len(jobs) + 4) as pool:
        sent = [pool.submit(predict_png, server.url, images[i]) for i in jobs]
        in_flight = wait_in_flight(server.url, 8)
        signalled = time.monotonic()
        server.terminate()
        late = [pool.submit(late_request, server.url, images[0]) for _ in range(8)]
        readiness = late_request(server.url, None)
        answers = [f.result() for f in sent]
        late_statuses = [f.result() for f in late]
    answered = 0
    for index, response in zip(jobs, answers, strict=True):
        if response.status_code == 503:  # reached the server after the signal
            assert_not_ready(response)
            continue
        np.testing.assert_allclose(raw_output(response), expected[index], rtol=1e-4, atol=1e-5)
        answered += 1
    assert answered >= in_flight
    assert readiness in (503, 0)
    assert set(late_statuses) <= {503, 0}, late_statuses
    # uvicorn re-raises the signal once it has shut down cleanly: "killed by SIGTERM" (143).
    assert server.proc.wait(grace_s + 10) in (0, -signal.SIGTERM)
    assert time.monotonic() - signalled < grace_s
    assert "Traceback" not in server.log()


def wait_in_flight(url: str, count: int, timeout_s: float = 30) -> int:
    """Until the service counts at least ``count`` requests in flight; returns the count."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        now = metric_samples(url, "gemmserve_requests_in_flight").get((), 0)
        if now >= count:
            return int(now)
        time.sleep(0.02)
    raise AssertionError(f"{count} requests never were in flight")


def late_request(url: str, image: bytes | None) -> int:
    """Status of a request sent after SIGTERM (``/readyz`` without an image); 0 when refused at
    the socket because the server already closed its listener."""
    try:
        response = http.get(url + "/readyz") if image is None else predict_png(url, image)
    except httpx.TransportError:
        return 0
    if response.status_code == 503:
        assert_not_ready(response)
    return response.status_code


def cache_status(url: str) -> str:
    return http.get(url + "/model").json()["autotune"]["cache_status"]


def start_with_cache(server_factory, cache: Path) -> Server:
    return server_factory("--autotune-cache", str(cache), "--autotune-mode", "tune-missing")


FOREIGN_HEADER = {
    "schema": 1,
    "engine_version": "0.0.1",
    "kernel_hash": "0" * 64,
    "device": {"cpu": "another machine"},
}


@pytest.mark.parametrize(
    "content",
    [
        os.urandom(4096),
        json.dumps(
            {"header": FOREIGN_HEADER, "entries": {"k": {"winner": "im2col_gemm"}}}
        ).encode(),
    ],
    ids=["random-bytes", "foreign-header"],  # other corrupt shapes: tests/engine/test_autotune.py
)
def test_corrupt_or_foreign_cache_is_ignored_and_kept(server_factory, tmp_path, reference, content):
    """Case 21: the service starts, warns, answers right, and leaves the file byte for byte."""
    cache = tmp_path / "autotune.json"
    cache.write_bytes(content)
    server = start_with_cache(server_factory, cache)
    try:
        assert cache_status(server.url) in ("corrupt", "foreign")
        assert_same_answers(server.url, reference, rtol=1e-3, atol=1e-4)
        assert cache.read_bytes() == content
        assert "autotune cache" in server.log() and "ignored" in server.log()
        assert "Traceback" not in server.log()
    finally:
        server.stop()
    assert cache.read_bytes() == content


def read_only_dir(tmp_path: Path) -> Path:
    """A directory this process cannot write to (root ignores modes: use read-only /sys)."""
    directory = tmp_path / "read-only"
    directory.mkdir()
    directory.chmod(0o555)
    if os.access(directory, os.W_OK):
        directory = Path("/sys")
    probe = subprocess.run(["touch", str(directory / "probe")], capture_output=True)
    if probe.returncode == 0:
        pytest.skip("no read-only directory available here")
    return directory


def test_read_only_cache_directory_keeps_results_in_memory(server_factory, tmp_path, reference):
    """Case 22: tuning runs, its results stay in memory, a warning says so, the service starts."""
    directory = read_only_dir(tmp_path)
    cache = directory / "gemmserve-autotune.json"
    server = start_with_cache(server_factory, cache)
    try:
        info = http.get(server.url + "/model").json()["autotune"]
        assert info["entries"] > 0, info
        assert not cache.exists()
        assert "not written" in server.log() and "kept in memory" in server.log()
        assert_same_answers(server.url, reference, rtol=1e-3, atol=1e-4)
    finally:
        server.stop()
