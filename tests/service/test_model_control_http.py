"""``--model-control explicit`` over real HTTP: reload under load with no failed request, unload,
load of a new or broken model, and the loopback-only rule."""

from __future__ import annotations

import os
import threading
from types import SimpleNamespace

import httpx
import numpy as np
import onnx
import onnxruntime as ort
import pytest

from service.errors import ControlForbidden
from service.routes.models import check_control_allowed
from tests.service.conftest import Server, npy_bytes, random_batch
from tests.service.models import build_cnn, write_model_dir

NPY = {"Content-Type": "application/x-npy"}


def replace_model(path, seed: int) -> None:
    """Write a model with other weights (same shapes) in place, atomically."""
    temp = path.with_suffix(".tmp")
    onnx.save(build_cnn(3, 16, 10, seed=seed), temp)
    os.replace(temp, path)


def outputs(url: str, name: str, x: np.ndarray) -> np.ndarray:
    r = httpx.post(f"{url}/models/{name}/predict?raw=1", content=npy_bytes(x), headers=NPY)
    assert r.status_code == 200, r.text
    return np.array([res["output"] for res in r.json()["results"]], np.float32)


def reference(path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


@pytest.fixture
def explicit(tmp_path):
    root = tmp_path / "repo"
    write_model_dir(root, "alpha")
    write_model_dir(root, "beta")
    srv = Server(["--model-repository", str(root), "--model-control", "explicit"]).wait_ready()
    srv.root = root
    yield srv
    srv.stop()


def test_reload_under_load_fails_no_request_and_switches_to_the_new_weights(explicit):
    url, onnx_path = explicit.url, explicit.root / "alpha" / "model.onnx"
    statuses: list[int] = []
    stop = threading.Event()

    def client() -> None:
        with httpx.Client(timeout=60) as http:
            while not stop.is_set():
                r = http.post(f"{url}/models/alpha/predict", content=npy_bytes(random_batch(2)),
                              headers=NPY)  # fmt: skip
                statuses.append(r.status_code)

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        x = random_batch(3)
        np.testing.assert_allclose(outputs(url, "alpha", x), reference(onnx_path, x), 1e-4, 1e-4)
        replace_model(onnx_path, seed=99)
        r = httpx.post(f"{url}/v2/repository/models/alpha/load", timeout=120)
        assert r.status_code == 200, r.text
        x = random_batch(3)
        np.testing.assert_allclose(outputs(url, "alpha", x), reference(onnx_path, x), 1e-4, 1e-4)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert statuses and set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}


def test_unload_then_load_again_and_a_new_or_broken_model(explicit):
    url = explicit.url
    assert httpx.post(f"{url}/v2/repository/models/beta/unload").status_code == 200
    r = httpx.post(f"{url}/models/beta/predict", content=npy_bytes(random_batch(1)), headers=NPY)
    assert r.status_code == 404
    assert [m["name"] for m in httpx.get(f"{url}/models").json()["models"]] == ["alpha"]
    assert httpx.post(f"{url}/v2/repository/models/beta/unload").status_code == 404
    assert httpx.post(f"{url}/v2/repository/models/beta/load", timeout=120).status_code == 200
    assert outputs(url, "beta", random_batch(1)).shape == (1, 10)

    write_model_dir(explicit.root, "gamma")
    assert httpx.post(f"{url}/v2/repository/models/gamma/load", timeout=120).status_code == 200
    x = random_batch(2)
    want = reference(explicit.root / "gamma" / "model.onnx", x)
    np.testing.assert_allclose(outputs(url, "gamma", x), want, 1e-4, 1e-4)

    (explicit.root / "bad").mkdir()
    (explicit.root / "bad" / "model.onnx").write_bytes(b"junk")
    r = httpx.post(f"{url}/v2/repository/models/bad/load", timeout=120)
    assert r.status_code == 503 and "failed to load" in r.json()["error"]
    assert httpx.post(f"{url}/v2/repository/models/nowhere/load").status_code == 404
    states = {m["name"]: m["state"] for m in httpx.get(f"{url}/models").json()["models"]}
    assert states == {"alpha": "ready", "bad": "failed", "beta": "ready", "gamma": "ready"}
    assert outputs(url, "alpha", random_batch(1)).shape == (1, 10)  # the others still serve

    replace_model(explicit.root / "bad" / "model.onnx", seed=7)  # fixed: it loads now
    assert httpx.post(f"{url}/v2/repository/models/bad/load", timeout=120).status_code == 200
    x = random_batch(2)
    want = reference(explicit.root / "bad" / "model.onnx", x)
    np.testing.assert_allclose(outputs(url, "bad", x), want, 1e-4, 1e-4)


def test_a_bad_reload_keeps_the_old_version_serving(explicit):
    onnx_path = explicit.root / "alpha" / "model.onnx"
    x = random_batch(2)
    before = outputs(explicit.url, "alpha", x)
    onnx_path.write_bytes(b"truncated")
    r = httpx.post(f"{explicit.url}/v2/repository/models/alpha/load", timeout=120)
    assert r.status_code == 503 and "previous version" in r.json()["error"]
    np.testing.assert_allclose(outputs(explicit.url, "alpha", x), before, 1e-6, 1e-6)


def test_control_is_loopback_only_unless_allowed():
    def request(host):
        return SimpleNamespace(client=SimpleNamespace(host=host))

    def runtime(allow):
        return SimpleNamespace(settings=SimpleNamespace(control_allow_remote=allow))

    check_control_allowed(request("127.0.0.1"), runtime(False))
    check_control_allowed(request("::1"), runtime(False))
    for host in ("10.1.2.3", "192.168.0.7", "testclient"):
        with pytest.raises(ControlForbidden):
            check_control_allowed(request(host), runtime(False))
    check_control_allowed(request("10.1.2.3"), runtime(True))


def test_without_explicit_control_there_is_no_load_route(server):
    assert httpx.post(server.url + "/v2/repository/models/tiny/load").status_code == 404
