"""Start-up (503 until the model is warm), SIGTERM under load (drain), the command line, and the
dependency direction engine -> never service/web."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time

import httpx
import numpy as np
import pytest

from service.__main__ import parse_settings
from tests.service.conftest import (
    REPO,
    Server,
    engine_held,
    npy_bytes,
    random_batch,
    wait_for,
)

NPY = {"Content-Type": "application/x-npy"}


def test_loading_then_sigterm_under_load_drains(model_dir, reference, tmp_path):
    faults = ["--load-delay-s", "1.5"]
    args = ["--model", str(model_dir), "--max-batch-size", "4", "--graceful-shutdown-s", "20"]
    server = Server(args, faults=faults, hold_file=tmp_path / "hold")
    try:
        server.wait_listening()
        # Case 19: loading -> not ready, predict refused with Retry-After.
        assert httpx.get(server.url + "/readyz").status_code == 503
        early = httpx.post(server.url + "/predict", content=npy_bytes(random_batch(1)), headers=NPY)
        assert early.status_code == 503 and early.headers["Retry-After"]
        assert early.json()["error"]["code"] == "not_ready"
        server.wait_ready()
        _sigterm_under_load(server, reference)
    finally:
        server.stop()


def _sigterm_under_load(server: Server, reference) -> None:
    """Case 20: 24 admitted requests all finish after SIGTERM; newcomers get 503; exit in time."""
    inputs = random_batch(24, seed=300)
    responses: list = [None] * len(inputs)

    def client(i: int) -> None:
        url = server.url + "/predict?raw=true"
        responses[i] = httpx.post(url, content=npy_bytes(inputs[i]), headers=NPY, timeout=60)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(inputs))]
    with engine_held(server):
        for thread in threads:
            thread.start()
        wait_for(server, "gemmserve_queue_depth", lambda v: v == len(inputs))
        server.proc.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        wait_for(server, "gemmserve_ready", lambda v: v == 0)
        assert httpx.get(server.url + "/readyz").status_code == 503
        late = httpx.post(server.url + "/predict", content=npy_bytes(inputs[0]), headers=NPY)
        assert late.status_code == 503 and late.headers["Retry-After"]
    for thread in threads:
        thread.join()
    for x, response in zip(inputs, responses, strict=True):
        assert response.status_code == 200, response.text
        got = np.array(response.json()["results"][0]["output"], np.float32)
        np.testing.assert_allclose(got, reference(x[None])[0], rtol=1e-4, atol=1e-5)
    server.proc.wait(25)
    assert time.monotonic() - signalled < 20
    assert "Traceback" not in server.output()


def test_model_that_fails_to_load_exits_with_one_line(tmp_path):
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not an onnx file")
    server = Server(["--model", str(broken)])
    assert server.proc.wait(60) == 1
    assert "model failed to load" in server.output()
    assert "Traceback" not in server.output()
    server.stop()


@pytest.mark.parametrize(
    "argv",
    [
        ["--port", "70000"],
        ["--port", "abc"],
        ["--max-batch-size", "64"],  # above the largest batch size
        ["--batch-sizes", "1,x"],
        ["--device", "tpu"],
        ["--max-queue", "0"],
        ["--allowed-formats", ""],
        ["--cpu-threading", "openmp"],
    ],
)
def test_bad_flag_is_one_line_and_exit_2(model_dir, argv, capsys):
    with pytest.raises(SystemExit) as stop:
        parse_settings(["--model", str(model_dir), *argv])
    assert stop.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gemmserve: invalid settings:"), lines


def test_missing_model_is_exit_2_from_the_command(tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "service", "--model", str(tmp_path / "nope")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2
    assert run.stderr.count("\n") == 1 and "does not exist" in run.stderr


def test_environment_and_flags(model_dir, monkeypatch):
    monkeypatch.setenv("GEMMSERVE_MODEL", str(model_dir))
    monkeypatch.setenv("GEMMSERVE_MAX_QUEUE", "77")
    monkeypatch.setenv("GEMMSERVE_BATCH_SIZES", "1,4,2")
    monkeypatch.setenv("GEMMSERVE_CPU_THREADING", "blas")
    settings = parse_settings(["--max-delay-ms", "0.5", "--max-batch-size", "3"])
    assert settings.max_queue == 77 and settings.max_delay_ms == 0.5
    assert settings.cpu_threading == "blas"
    assert settings.batch_sizes == (1, 2, 4)
    assert settings.effective_batch_sizes == (1, 2, 3)  # nothing above --max-batch-size is planned
    assert settings.host == "127.0.0.1" and settings.port == 8000
    assert parse_settings(["--max-queue", "5"]).max_queue == 5  # a flag beats the environment


def test_engine_never_imports_the_web_stack():
    code = (
        "import sys, engine, engine.autotune\n"
        "from engine import load_model\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in "
        "('fastapi', 'starlette', 'prometheus_client', 'service', 'uvicorn')]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=60)


def test_importing_the_service_loads_nothing(model_dir):
    code = (
        "import sys\n"
        "from service.app import create_app\n"
        "from service.config import Settings\n"
        "from service.engine_client import EngineAddress\n"
        "from service.runtime import WorkerLink\n"
        "address = EngineAddress('/nonexistent.sock', b'key', 'gemmserve-test-', 1 << 20, 1)\n"
        f"app = create_app(Settings(model={str(model_dir)!r}), WorkerLink(address, 'none', 1))\n"
        "assert app.state.runtime.description is None\n"
        "assert 'cupy' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=60)
