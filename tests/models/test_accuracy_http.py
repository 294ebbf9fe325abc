"""Held-out accuracy of the bundled model measured the way a user sees it: PNGs POSTed over HTTP."""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import onnxruntime as ort
from PIL import Image

from tests.models.conftest import DIGITS_DIR, MIN_ACCURACY, digits_data

CLIENT_THREADS = 8


def predict(client: httpx.Client, png: bytes, query: str = "top_k=1") -> dict:
    response = client.post(f"/predict?{query}", content=png, headers={"Content-Type": "image/png"})
    assert response.status_code == 200, response.text
    (result,) = response.json()["results"]
    return result


def test_held_out_accuracy_through_http(digits_server, held_out_pngs, split):
    # Concurrent single-image requests, so the answers also come through the batcher.
    with (
        httpx.Client(base_url=digits_server.url, timeout=30) as client,
        ThreadPoolExecutor(CLIENT_THREADS) as pool,
    ):
        results = list(pool.map(lambda png: predict(client, png), held_out_pngs))
    labels = np.array([int(r["predictions"][0]["label"]) for r in results])
    accuracy = float(np.mean(labels == split.held_out_labels))
    print(f"held-out accuracy (HTTP, {len(labels)} PNGs): {accuracy:.4f}")
    assert accuracy >= MIN_ACCURACY


def test_service_preprocessing_matches_model_json(digits_server, held_out_pngs, model_json):
    """The raw logits over HTTP equal onnxruntime on model.json's preprocessing of the same PNG."""
    session = ort.InferenceSession(
        str(DIGITS_DIR / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    picks = np.random.default_rng().choice(len(held_out_pngs), 12, replace=False)
    with httpx.Client(base_url=digits_server.url, timeout=30) as client:
        for index in picks:
            png = held_out_pngs[index]
            got = predict(client, png, "raw=true")["output"]
            x = digits_data.to_tensor(png, model_json["preprocess"])
            np.testing.assert_allclose(got, session.run(None, {"input": x})[0][0], atol=1e-3)


def _drawn_variants(png: bytes) -> dict[str, bytes]:
    """The same digit as other clients send it: ink as alpha on a transparent canvas, a taller
    canvas with white margins, RGB."""
    gray = Image.open(io.BytesIO(png)).convert("L")
    ink = Image.eval(gray, lambda p: 255 - p)  # alpha: opaque where the ink is dark
    transparent = Image.new("LA", gray.size, 0)
    transparent.putalpha(ink)
    tall = Image.new("L", (gray.width, gray.height * 3 // 2), 255)
    tall.paste(gray, (0, gray.height // 4))
    variants = {"transparent": transparent, "tall": tall, "rgb": gray.convert("RGB")}
    encoded = {}
    for name, image in variants.items():
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        encoded[name] = buffer.getvalue()
    return encoded


def test_other_renderings_of_a_digit_keep_their_label(digits_server, held_out_pngs, split):
    """Alpha on a transparent canvas, extra white margin, RGB: the same answer as the plain PNG."""
    with httpx.Client(base_url=digits_server.url, timeout=30) as client:
        for index in range(0, len(held_out_pngs), 36):
            expected = predict(client, held_out_pngs[index])["predictions"][0]["label"]
            for name, png in _drawn_variants(held_out_pngs[index]).items():
                got = predict(client, png)["predictions"][0]["label"]
                assert got == expected, f"{name} rendering of held-out image {index}"
