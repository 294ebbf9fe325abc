"""The decode fuzzers' seed corpus (valid bodies of every accepted kind) and their oracle."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np

from service.config import Settings
from service.decode import Decoder
from service.errors import ServiceError
from service.modelspec import load_spec
from service.runtime import limits_of
from tests.reliability import payloads

INPUT_SHAPE = (3, 16, 16)


def _seed_images() -> dict[str, bytes]:
    image = payloads.rgb(12, 20, seed=7)
    frames = payloads.palette_frames(3, 10, seed=8)
    return {
        "image/png": payloads.encode(image, "PNG"),
        "image/jpeg": payloads.encode(image, "JPEG", quality=80),
        "image/gif": payloads.animated("GIF", frames),
        "image/bmp": payloads.encode(image, "BMP"),
        "image/webp": payloads.encode(image, "WEBP", quality=80),
        "image/apng": payloads.animated("PNG", frames),
    }


IMAGES = _seed_images()


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


SEEDS: list[tuple[str, bytes]] = [
    *((kind if kind != "image/apng" else "image/png", data) for kind, data in IMAGES.items()),
    ("application/x-npy", _npy(np.random.default_rng(1).random((2, *INPUT_SHAPE), np.float32))),
    ("application/x-npy", _npy(np.ones(INPUT_SHAPE, np.float32))),
    (
        "application/json",
        json.dumps({"instances": [{"b64": base64.b64encode(IMAGES["image/png"]).decode()}]})
        .encode(),
    ),
    (
        "multipart/form-data; boundary=fz",
        b'--fz\r\nContent-Disposition: form-data; name="file"; filename="a"\r\n\r\n'
        + IMAGES["image/gif"]
        + b"\r\n--fz--\r\n",
    ),
]  # fmt: skip
CONTENT_TYPES = sorted({kind for kind, _ in SEEDS} | {"application/octet-stream", "text/plain"})


def make_decoder(model_dir: Path) -> Decoder:
    """The service's decoder for a model directory, with the default limits."""
    limits = limits_of(Settings(model=model_dir))
    return Decoder(load_spec(model_dir, INPUT_SHAPE), INPUT_SHAPE, limits)


def check_decode(decoder: Decoder, content_type: str, body: bytes) -> None:
    """The oracle: a typed 4xx error, or a finite float32 batch of the model's shape."""
    try:
        batch = decoder.decode(content_type, body)
    except ServiceError as error:
        assert 400 <= error.status < 500, (error.status, error.message)
        return
    assert batch.dtype == np.float32 and batch.shape[1:] == INPUT_SHAPE
    assert 1 <= len(batch) <= decoder.limits.max_images
    assert np.isfinite(batch).all()
