"""``POST /predict`` and the health endpoints through a real uvicorn: every input form, checked
against the engine's own output for the same tensor."""

from __future__ import annotations

import base64
import io
import shutil
import subprocess

import httpx
import numpy as np
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from tests.service.conftest import MEAN, STD, metric, npy_bytes, random_batch

RTOL, ATOL = 1e-4, 1e-5


def random_image(seed: int, size=(16, 16), mode="RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "L": 1}[mode]
    pixels = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
    return Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels, mode)


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def expected_tensor(image: Image.Image) -> np.ndarray:
    """The model's input for an image already at the model's size: scaling only, in float64."""
    pixels = np.asarray(image.convert("RGB"), np.float64).transpose(2, 0, 1) / 255.0
    mean = np.array(MEAN).reshape(3, 1, 1)
    std = np.array(STD).reshape(3, 1, 1)
    return ((pixels - mean) / std).astype(np.float32)[None]


def post(server, content: bytes, content_type: str, **params) -> httpx.Response:
    headers = {"Content-Type": content_type}
    return httpx.post(
        server.url + "/predict", content=content, headers=headers, params=params, timeout=30
    )


def outputs(response: httpx.Response) -> np.ndarray:
    assert response.status_code == 200, response.text
    return np.array([r["output"] for r in response.json()["results"]], np.float32)


def test_health_and_model(server):
    assert httpx.get(server.url + "/healthz").json() == {"status": "alive"}
    assert httpx.get(server.url + "/readyz").status_code == 200
    info = httpx.get(server.url + "/model").json()
    assert info["name"] == "tiny"
    assert info["labels"][3] == "class-3"
    assert info["inputs"][0]["shape"][1:] == [3, 16, 16]
    assert info["service"]["max_batch_size"] == 32
    # the service's default: BLAS on one thread, the engine's own per-core split
    assert info["cpu_threading"] == "engine" == info["service"]["cpu_threading"]
    assert all("algorithm" in layer for layer in info["layers"])
    assert httpx.get(server.url + "/docs").status_code == 200
    assert "/predict" in httpx.get(server.url + "/openapi.json").json()["paths"]


def test_png_matches_engine(server, reference):
    image = random_image(1)
    response = post(server, encode(image, "PNG"), "image/png", raw="true", top_k=3)
    got = outputs(response)
    want = reference(expected_tensor(image))
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
    body = response.json()
    assert body["model"] == "tiny"
    predictions = body["results"][0]["predictions"]
    scores = np.exp(want[0] - want[0].max()) / np.exp(want[0] - want[0].max()).sum()
    best = np.argsort(-scores)[:3]
    assert [p["index"] for p in predictions] == best.tolist()
    assert [p["label"] for p in predictions] == [f"class-{i}" for i in best]
    np.testing.assert_allclose([p["score"] for p in predictions], scores[best], rtol=1e-4)


@pytest.mark.parametrize(
    ("fmt", "content_type", "options"),
    [
        ("BMP", "image/bmp", {}),
        ("WEBP", "image/webp", {"lossless": True}),
        ("PNG", "application/octet-stream", {}),
    ],
)
def test_lossless_formats_match_engine(server, reference, fmt, content_type, options):
    image = random_image(2)
    got = outputs(post(server, encode(image, fmt, **options), content_type, raw="true"))
    np.testing.assert_allclose(got, reference(expected_tensor(image)), rtol=RTOL, atol=ATOL)


def test_jpeg_and_gif_accepted(server):
    image = random_image(3, size=(40, 30))
    for fmt, content_type in (("JPEG", "image/jpeg"), ("GIF", "image/gif")):
        response = post(server, encode(image, fmt), content_type, top_k=10)
        assert response.status_code == 200, response.text
        scores = [p["score"] for p in response.json()["results"][0]["predictions"]]
        assert len(scores) == 10 and abs(sum(scores) - 1) < 1e-6


def test_multipart_several_files_in_order(server, reference):
    images = [random_image(10 + i) for i in range(3)]
    files = [("file", (f"{i}.png", encode(im, "PNG"), "image/png")) for i, im in enumerate(images)]
    response = httpx.post(
        server.url + "/predict", files=files, data={"note": "x"}, params={"raw": "true"}
    )
    got = outputs(response)
    want = reference(np.concatenate([expected_tensor(im) for im in images]))
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)


def test_npy_batch_single_and_fortran(server, reference):
    x = random_batch(5, seed=4)
    np.testing.assert_allclose(
        outputs(post(server, npy_bytes(x), "application/x-npy", raw="true")),
        reference(x),
        rtol=RTOL,
        atol=ATOL,
    )
    single = outputs(post(server, npy_bytes(x[2]), "application/x-npy", raw="true"))
    np.testing.assert_allclose(single, reference(x[2:3]), rtol=RTOL, atol=ATOL)
    fortran = np.asfortranarray(x)
    got = outputs(post(server, npy_bytes(fortran), "application/x-npy", raw="true"))
    np.testing.assert_allclose(got, reference(x), rtol=RTOL, atol=ATOL)


def test_json_base64(server, reference):
    images = [random_image(20), random_image(21)]
    body = {"instances": [{"b64": base64.b64encode(encode(im, "PNG")).decode()} for im in images]}
    response = httpx.post(server.url + "/predict", json=body, params={"raw": "true"})
    want = reference(np.concatenate([expected_tensor(im) for im in images]))
    np.testing.assert_allclose(outputs(response), want, rtol=RTOL, atol=ATOL)


def test_top_k_and_raw_parameters(server):
    data = npy_bytes(random_batch(1, seed=5))
    result = post(server, data, "application/x-npy").json()["results"][0]
    assert len(result["predictions"]) == 5 and "output" not in result
    many = post(server, data, "application/x-npy", top_k=1000).json()["results"][0]
    assert len(many["predictions"]) == 10
    bad = post(server, data, "application/x-npy", top_k=0)
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_parameter"


def test_metrics_names_and_bounded_labels(server):
    for path in ("/nope", "/a/b/c?x=1", "/predict/../../etc/passwd", "/v3/models"):
        response = httpx.get(server.url + path)
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "not_found"
    post(server, npy_bytes(random_batch(2, seed=6)), "application/x-npy")
    text = server.metrics()
    for name in (
        "gemmserve_request_duration_seconds_bucket",
        "gemmserve_queue_wait_seconds_bucket",
        "gemmserve_batch_size_bucket",
        "gemmserve_inference_duration_seconds_bucket",
        "gemmserve_queue_depth",
        "gemmserve_images_total",
    ):
        assert f"\n{name}" in text, name
    assert "# TYPE gemmserve_requests_rejected_total counter" in text
    assert metric(text, "gemmserve_request_duration_seconds_count", route="/predict") >= 1
    routes = set()
    for line in text.splitlines():
        if line.startswith("gemmserve_request_duration_seconds_count"):
            routes.add(line.split('route="')[1].split('"')[0])
    assert "unmatched" in routes
    assert all(r == "unmatched" or not r.startswith(("/nope", "/a/", "/v3")) for r in routes)


def test_metrics_exposition_parses(server):
    """The exposition parses, and passes `promtool check metrics` where promtool is installed."""
    text = server.metrics()
    families = {f.name: f.type for f in text_string_to_metric_families(text)}
    assert families["gemmserve_batch_size"] == "histogram"
    assert families["gemmserve_requests_rejected"] == "counter"
    assert families["gemmserve_queue_depth"] == "gauge"
    assert families["gemmserve_autotune_choices"] == "gauge"
    promtool = shutil.which("promtool")
    if promtool:
        run = subprocess.run(
            [promtool, "check", "metrics"], input=text, capture_output=True, text=True
        )
        assert run.returncode == 0, run.stdout + run.stderr


DEEP = 200_000  # far past the JSON parser's nesting limit


@pytest.mark.parametrize(
    "path, body",
    [
        ("/predict", b'{"instances": ' + b"[" * DEEP + b"]" * DEEP + b"}"),
        ("/predict", b"[" * DEEP),  # unterminated as well
        ("/v2/models/tiny/infer", b'{"inputs": ' + b"[" * DEEP + b"]" * DEEP + b"}"),
        ("/v2/models/tiny/infer", b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", '
         b'"data": ' + b"[" * 900 + b"1" + b"]" * 900 + b"}]}"),
    ],
    ids=["predict-200k", "predict-unterminated", "v2-200k", "v2-data-900"],
)  # fmt: skip
def test_deeply_nested_json_is_a_4xx_not_a_500(server, path, body):
    response = httpx.post(
        server.url + path, content=body, headers={"content-type": "application/json"}
    )
    assert 400 <= response.status_code < 500, (response.status_code, response.text[:300])
    error = response.json()["error"]
    assert isinstance(error, dict if path == "/predict" else str)
    assert "Traceback" not in response.text
    assert httpx.get(server.url + "/readyz").status_code == 200  # the worker lives on
