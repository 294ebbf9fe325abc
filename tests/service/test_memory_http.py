"""A model that would not fit is refused before it is loaded, over real HTTP: with a memory limit
that holds a small model but not a large one, the small one serves onnxruntime's answers and the
large one fails with its estimate and what is left, at start-up and on an explicit load (507)."""

from __future__ import annotations

import httpx
import numpy as np
import onnxruntime as ort
import pytest

from service.memory import estimate
from tests.service.conftest import Server, npy_bytes, random_batch
from tests.service.models import write_model_dir

NPY = {"Content-Type": "application/x-npy"}
LIMIT_MIB = 8  # the small model's estimate is about 1.4 MiB, the large one's about 92 MiB


@pytest.fixture(scope="module")
def limited(tmp_path_factory):
    root = tmp_path_factory.mktemp("repo")
    write_model_dir(root, "small", size=16)
    write_model_dir(root, "large", size=128)
    args = ["--model-repository", str(root), "--model-control", "explicit"]
    srv = Server([*args, "--memory-limit-mib", str(LIMIT_MIB)])
    try:
        srv.wait_ready(300)  # a first start compiles the CPU kernels
    except RuntimeError:
        srv.stop()  # no server left behind when it never became ready
        raise
    srv.root = root
    yield srv
    srv.stop()


def small_answers_match_onnxruntime(srv: Server) -> None:
    x = random_batch(3)
    r = httpx.post(f"{srv.url}/models/small/predict?raw=1", content=npy_bytes(x), headers=NPY)
    assert r.status_code == 200, r.text
    got = np.array([res["output"] for res in r.json()["results"]], np.float32)
    session = ort.InferenceSession(str(srv.root / "small" / "model.onnx"))
    np.testing.assert_allclose(got, session.run(None, {"x": x})[0], 1e-4, 1e-4)


def test_the_estimates_straddle_the_limit(limited):
    small = estimate(limited.root / "small" / "model.onnx", 32).total_bytes
    large = estimate(limited.root / "large" / "model.onnx", 32).total_bytes
    assert small < LIMIT_MIB * 2**20 < large


def test_the_large_model_is_refused_at_start_and_the_small_one_serves(limited):
    url = limited.url
    listing = {m["name"]: m for m in httpx.get(f"{url}/models").json()["models"]}
    assert listing["small"]["state"] == "ready" and listing["large"]["state"] == "failed"
    reason = listing["large"]["reason"]
    assert "ModelTooLarge" in reason and "needs an estimated" in reason
    assert f"memory limit of {LIMIT_MIB} MiB" in reason
    x = np.random.default_rng().standard_normal((1, 3, 128, 128)).astype(np.float32)
    r = httpx.post(f"{url}/models/large/predict", content=npy_bytes(x), headers=NPY)
    assert r.status_code == 503 and r.json()["error"]["code"] == "model_unavailable"
    assert "memory limit" in r.json()["error"]["message"]
    small_answers_match_onnxruntime(limited)
    # The estimate errs high: the engine's actual weights and workspace fit inside it.
    memory = httpx.get(f"{url}/models/small").json()["memory"]
    assert memory["weights_bytes"] + memory["workspace_bytes"] <= memory["estimated_bytes"]


def test_an_explicit_load_of_the_large_model_is_refused_and_the_small_one_keeps_serving(limited):
    url = limited.url
    r = httpx.post(f"{url}/v2/repository/models/large/load", timeout=120)
    assert r.status_code == 507, r.text
    error = r.json()["error"]  # Triton's shape on the control routes: the message alone
    assert "ModelTooLarge" in error and "needs an estimated" in error
    assert f"memory limit of {LIMIT_MIB} MiB" in error
    states = {m["name"]: m["state"] for m in httpx.get(f"{url}/models").json()["models"]}
    assert states == {"large": "failed", "small": "ready"}
    small_answers_match_onnxruntime(limited)
    # A reload of the small one still fits: its old version's memory is counted beside it.
    assert httpx.post(f"{url}/v2/repository/models/small/load", timeout=120).status_code == 200
    small_answers_match_onnxruntime(limited)
