"""Several models in one service, over real HTTP: a model repository, per-model routes, a model
that fails alone, per-model autotune caches, and one model's flood not starving another."""

from __future__ import annotations

import json
import subprocess
import sys
import threading

import httpx
import numpy as np
import onnxruntime as ort
import pytest

from tests.service.conftest import (
    REPO,
    Server,
    metric,
    npy_bytes,
    random_batch,
    wait_for,
)
from tests.service.models import write_model_dir

NPY = {"Content-Type": "application/x-npy"}
# name -> (channels, size, classes): three different input and output shapes.
SHAPES = {"gray": (1, 8, 4), "rgb": (3, 16, 10), "wide": (3, 24, 7)}


@pytest.fixture(scope="module")
def repository(tmp_path_factory):
    root = tmp_path_factory.mktemp("repository")
    for name, (channels, size, classes) in SHAPES.items():
        meta = {"labels": [f"class-{i}" for i in range(classes)]}
        if name == "wide":  # its own batch buckets; the others take the service's
            meta.update(batch_sizes=[1, 2, 4], max_batch_size=3)
        write_model_dir(root, name, channels=channels, size=size, classes=classes, meta=meta)
    broken = root / "broken"
    broken.mkdir()
    (broken / "model.onnx").write_bytes(b"not an onnx file at all")
    (root / "notes").mkdir()  # no model.onnx: not a model
    return root


@pytest.fixture(scope="module")
def multi(repository, tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache") / "autotune"
    args = ["--model-repository", str(repository), "--default-model", "rgb"]
    srv = Server([*args, "--autotune-cache", str(cache)]).wait_ready()
    srv.cache = cache
    srv.args = args
    yield srv
    srv.stop()


def onnxruntime_outputs(path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def fresh_input(name: str, n: int) -> np.ndarray:
    channels, size, _ = SHAPES[name]
    rng = np.random.default_rng()
    return rng.standard_normal((n, channels, size, size)).astype(np.float32)


def test_three_models_of_different_shapes_answer_as_onnxruntime(multi, repository):
    for name in SHAPES:
        x = fresh_input(name, 3)
        want = onnxruntime_outputs(repository / name / "model.onnx", x)
        r = httpx.post(
            f"{multi.url}/models/{name}/predict?raw=true", content=npy_bytes(x), headers=NPY
        )
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["model"] == name and len(body["results"]) == 3
        got = np.array([res["output"] for res in body["results"]], np.float32)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
        best = [res["predictions"][0]["index"] for res in body["results"]]
        assert best == want.argmax(axis=1).tolist()

        tensor = {"name": "x", "shape": list(x.shape), "datatype": "FP32",
                  "data": x.reshape(-1).tolist()}  # fmt: skip
        r = httpx.post(f"{multi.url}/v2/models/{name}/infer", json={"inputs": [tensor]})
        assert r.status_code == 200, r.text
        out = r.json()["outputs"][0]
        assert out["shape"] == list(want.shape)
        np.testing.assert_allclose(np.array(out["data"]).reshape(want.shape), want, 1e-4, 1e-4)


def test_default_model_answers_predict_and_model(multi, repository):
    x = fresh_input("rgb", 2)
    want = onnxruntime_outputs(repository / "rgb" / "model.onnx", x)
    body = httpx.post(f"{multi.url}/predict?raw=1", content=npy_bytes(x), headers=NPY).json()
    assert body["model"] == "rgb"
    np.testing.assert_allclose([r["output"] for r in body["results"]], want, 1e-4, 1e-4)
    info = httpx.get(multi.url + "/model").json()
    assert info["name"] == "rgb" and info["inputs"][0]["shape"] == ["N", 3, 16, 16]
    detail = httpx.get(multi.url + "/models/gray").json()
    assert detail["name"] == "gray" and detail["state"] == "ready"
    assert detail["inputs"][0]["shape"] == ["N", 1, 8, 8]
    # Weights: conv 8x1x3x3 + 8, fc 4x8 + 4 float32 (the engine may keep more, re-laid).
    assert detail["memory"]["weights_bytes"] >= 4 * (8 * 9 + 8 + 4 * 8 + 4)
    assert detail["memory"]["workspace_bytes"] > 0
    assert detail["batch_sizes"] == [1, 2, 4, 8, 16, 32]
    assert httpx.get(multi.url + "/models/wide").json()["batch_sizes"] == [1, 2, 3]


def test_models_lists_every_state_and_the_broken_model_fails_alone(multi):
    listing = httpx.get(multi.url + "/models").json()
    states = {m["name"]: m["state"] for m in listing["models"]}
    assert listing["default"] == "rgb"
    assert states == {"broken": "failed", "gray": "ready", "rgb": "ready", "wide": "ready"}
    broken = next(m for m in listing["models"] if m["name"] == "broken")
    assert broken["reason"]  # says why
    r = httpx.post(multi.url + "/models/broken/predict", content=npy_bytes(fresh_input("rgb", 1)),
                   headers=NPY)  # fmt: skip
    assert r.status_code == 503
    assert r.json()["error"]["code"] == "model_unavailable"
    assert "failed to load" in r.json()["error"]["message"]
    index = httpx.post(multi.url + "/v2/repository/index").json()
    assert {e["name"]: e["state"] for e in index} == {
        "broken": "UNAVAILABLE", "gray": "READY", "rgb": "READY", "wide": "READY"
    }  # fmt: skip
    assert httpx.get(multi.url + "/readyz").status_code == 200
    assert httpx.get(multi.url + "/v2/models/gray/ready").status_code == 200
    assert httpx.get(multi.url + "/v2/models/broken/ready").status_code == 503


def test_unknown_model_is_a_404_json_error(multi):
    body = npy_bytes(fresh_input("rgb", 1))
    r = httpx.post(multi.url + "/models/nope/predict", content=body, headers=NPY)
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    assert httpx.get(multi.url + "/models/nope").status_code == 404
    r = httpx.get(multi.url + "/v2/models/nope")
    assert r.status_code == 404 and "nope" in r.json()["error"]
    r = httpx.post(multi.url + "/v2/models/nope/infer", json={"inputs": []})
    assert r.status_code == 404


def test_metrics_carry_the_model_label_of_served_models_only(multi):
    x = npy_bytes(fresh_input("gray", 2))
    assert httpx.post(multi.url + "/models/gray/predict", content=x, headers=NPY).is_success
    httpx.post(multi.url + "/models/unknown-name/predict", content=x, headers=NPY)
    route = "/models/{name}/predict"
    # A request is counted just after its answer is sent: wait for it.
    wait_for(multi, "gemmserve_request_duration_seconds_count", lambda v: v > 0, route=route,
             model="gray")  # fmt: skip
    text = multi.metrics()
    assert metric(text, "gemmserve_images_total", model="gray") >= 2
    assert metric(text, "gemmserve_request_duration_seconds_count", route=route, model="") >= 1
    assert 'model="unknown-name"' not in text  # label values: served models only


def test_each_model_has_its_own_cache_file_and_a_restart_tunes_nothing(multi, repository):
    files = sorted(p.name for p in multi.cache.iterdir())
    assert [f.split("-")[0] for f in files] == ["gray", "rgb", "wide"]
    again = Server([*multi.args, "--autotune-cache", str(multi.cache)]).wait_ready()
    try:
        text = again.metrics()
    finally:
        again.stop()
    for name in SHAPES:
        assert metric(text, "gemmserve_autotune_choices", source="misses", model=name) == 0
        assert metric(text, "gemmserve_autotune_choices", source="hits", model=name) > 0


@pytest.mark.parametrize(
    "case, expected",
    [
        ("duplicate", "two models named 'same'"),
        ("default", "default model 'missing' is not among the models"),
        ("bad-json", "unreadable model.json"),
        ("bad-batching", "exceeds the largest"),
    ],
)
def test_bad_repository_entries_stop_the_service_at_start(tmp_path, case, expected):
    root = tmp_path / "repo"
    write_model_dir(root, "one", meta={"name": "same"} if case == "duplicate" else None)
    write_model_dir(root, "two", meta={"name": "same"} if case == "duplicate" else None)
    if case == "bad-json":
        (root / "two" / "model.json").write_text("{not json")
    if case == "bad-batching":
        (root / "two" / "model.json").write_text('{"batch_sizes": [1, 2], "max_batch_size": 8}')
    args = ["--model-repository", str(root)]
    if case == "default":
        args += ["--default-model", "missing"]
    done = subprocess.run(
        [sys.executable, "-m", "service", *args, "--device", "cpu"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and expected in done.stderr, done.stderr


@pytest.fixture
def pair(tmp_path):
    """Two models of the tiny shape, each batch held ``delay`` ms, batches of at most 4."""
    for name in ("alpha", "beta"):
        write_model_dir(tmp_path / "repo", name, meta={})
    hold = tmp_path / "hold"
    args = ["--model-repository", str(tmp_path / "repo"), "--max-batch-size", "4"]
    args += ["--max-delay-ms", "0", "--max-concurrency", "200"]
    srv = Server(args, faults=["--delay-ms", "100"], hold_file=hold).wait_ready()
    yield srv
    srv.stop()


def test_a_flood_on_one_model_does_not_starve_another(pair):
    """While alpha's engine batch is held, 32 alpha images queue up, then one beta request. Once
    released, beta runs next (fair share of engine time), not after alpha's whole queue: when
    beta's answer comes back, alpha has run only a few of its 32 queued images."""
    from tests.service.conftest import SLOW

    url = pair.url
    answers: dict[str, list[int]] = {"alpha": [], "beta": []}

    def post(name: str, x: np.ndarray) -> None:
        r = httpx.post(f"{url}/models/{name}/predict", content=npy_bytes(x), headers=NPY,
                       timeout=60)  # fmt: skip
        answers[name].append(r.status_code)

    pair.hold_file.touch()
    blocker_x = random_batch(1)
    blocker_x[0, 0, 0, 0] = SLOW
    threads = [threading.Thread(target=post, args=("alpha", blocker_x))]
    threads[0].start()
    wait_for(pair, "gemmserve_batch_running_images", lambda v: v == 1)
    flood = [threading.Thread(target=post, args=("alpha", random_batch(4))) for _ in range(8)]
    for t in flood:
        t.start()
    wait_for(pair, "gemmserve_queue_depth", lambda v: v == 32)
    beta = threading.Thread(target=post, args=("beta", random_batch(1)))
    beta.start()
    wait_for(pair, "gemmserve_queue_depth", lambda v: v == 33)
    depths = pair.metrics()
    assert metric(depths, "gemmserve_model_queue_depth", model="alpha") == 32
    assert metric(depths, "gemmserve_model_queue_depth", model="beta") == 1
    pair.hold_file.unlink()
    beta.join(60)
    alpha_run = metric(pair.metrics(), "gemmserve_images_total", model="alpha")
    for t in [*threads, *flood]:
        t.join(60)
    assert answers["beta"] == [200]
    assert answers["alpha"] == [200] * 9
    # The held image plus at most a few batches of 4 (the scrape's own time); a queue served in
    # arrival order would have run all 33 alpha images before beta's.
    assert alpha_run <= 1 + 4 * 3, alpha_run
    final = pair.metrics()
    assert metric(final, "gemmserve_images_total", model="alpha") == 33
    assert metric(final, "gemmserve_images_total", model="beta") == 1


def test_repository_index_and_models_are_in_the_openapi_schema(multi):
    paths = httpx.get(multi.url + "/openapi.json").json()["paths"]
    for path in ("/models", "/models/{name}", "/models/{name}/predict", "/v2/repository/index"):
        assert path in paths, path
    assert json.dumps(paths["/models/{name}/predict"]["post"]["responses"]).count("404") >= 1
