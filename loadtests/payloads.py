"""Request bodies for the load tests, generated in memory (Pillow, NumPy): nothing is downloaded.

Good payloads carry images the way clients send them (PNG of varying size, multipart uploads,
``.npy`` tensors, KServe v2 JSON tensors). Bad payloads are the inputs a healthy service must refuse
with a 4xx; each names the statuses RELIABILITY.md allows for it.
"""

from __future__ import annotations

import base64
import io
import json
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw
from urllib3.filepost import encode_multipart_formdata

# Side lengths of the generated PNGs: thumbnails, the model's own size, phone-photo crops.
PNG_SIDES = (8, 28, 64, 128, 256)


@dataclass(frozen=True)
class ModelShape:
    """What a client needs to know of the served model (from ``GET /model``)."""

    name: str
    input_name: str
    chw: tuple[int, int, int]
    classes: int

    @classmethod
    def from_info(cls, info: dict) -> ModelShape:
        """Build from the JSON of ``GET /model``."""
        channels, height, width = (int(d) for d in info["inputs"][0]["shape"][1:])
        return cls(
            name=info["name"],
            input_name=info["inputs"][0]["name"],
            chw=(channels, height, width),
            classes=int(info["outputs"][0]["shape"][-1]),
        )


@dataclass(frozen=True)
class Body:
    """One HTTP request body and its content type."""

    content_type: str
    data: bytes
    images: int  # images the service should answer for
    headers: tuple[tuple[str, str], ...] = ()  # more request headers


@dataclass(frozen=True)
class BadInput:
    """A request the service must refuse with one of ``statuses``."""

    name: str
    path: str
    body: Body
    statuses: frozenset[int]


def scribble(rng: np.random.Generator, width: int, height: int, mode: str) -> Image.Image:
    """Dark strokes on light paper, like a photographed handwritten digit."""
    image = Image.new(mode, (width, height), "white")
    draw = ImageDraw.Draw(image)
    ink = "black" if mode == "L" else tuple(int(v) for v in rng.integers(0, 90, 3))
    stroke = max(1, min(width, height) // 8)
    points = [(float(rng.uniform(0, width)), float(rng.uniform(0, height))) for _ in range(4)]
    draw.line(points, fill=ink, width=stroke)
    return image


def encode_png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def png_pool(seed: int, per_side: int = 8) -> list[bytes]:
    """PNGs of every size in ``PNG_SIDES`` (grey and colour, some non-square)."""
    rng = np.random.default_rng(seed)
    pool = []
    for side in PNG_SIDES:
        for n in range(per_side):
            width = side if n % 2 else max(1, int(side * rng.uniform(0.5, 1.5)))
            pool.append(encode_png(scribble(rng, width, side, "L" if n % 3 else "RGB")))
    return pool


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def png_body(png: bytes) -> Body:
    return Body("image/png", png, 1)


def multipart_body(pngs: list[bytes]) -> Body:
    """A ``multipart/form-data`` upload with one ``file`` part per image."""
    fields = [("file", (f"img{n}.png", png, "image/png")) for n, png in enumerate(pngs)]
    data, content_type = encode_multipart_formdata(fields)
    return Body(content_type, data, len(pngs))


def npy_body(rng: np.random.Generator, shape: ModelShape, count: int) -> Body:
    """``application/x-npy`` float32 (N, C, H, W) in the model's input range."""
    tensor = rng.random((count, *shape.chw), dtype=np.float32)
    return Body("application/x-npy", npy_bytes(tensor), count)


def kserve_body(rng: np.random.Generator, shape: ModelShape, count: int, binary=False) -> Body:
    """A KServe v2 inference request with one FP32 input: JSON numbers, or (``binary``) the
    binary-tensor extension both ways, as Triton's clients send it."""
    tensor = rng.random((count, *shape.chw), dtype=np.float32)
    spec = {"name": shape.input_name, "shape": list(tensor.shape), "datatype": "FP32"}
    if not binary:
        request = {"inputs": [{**spec, "data": tensor.ravel().round(4).tolist()}]}
        return Body("application/json", json.dumps(request).encode(), count)
    spec["parameters"] = {"binary_data_size": tensor.nbytes}
    header = json.dumps({"inputs": [spec], "parameters": {"binary_data_output": True}}).encode()
    length = (("Inference-Header-Content-Length", str(len(header))),)
    return Body("application/octet-stream", header + tensor.tobytes(), count, length)


def b64_body(pngs: list[bytes]) -> Body:
    """JSON ``{"instances": [{"b64": ...}]}``."""
    instances = [{"b64": base64.b64encode(png).decode()} for png in pngs]
    return Body("application/json", json.dumps({"instances": instances}).encode(), len(pngs))


def tiff_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (8, 8), 128).save(buffer, format="TIFF")
    return buffer.getvalue()


def bad_inputs(shape: ModelShape, seed: int) -> list[BadInput]:
    """Inputs a healthy service refuses; the statuses are those RELIABILITY.md allows."""
    rng = np.random.default_rng(seed)
    png = encode_png(scribble(rng, 32, 32, "L"))
    c, h, w = shape.chw
    nan = rng.random((1, c, h, w), dtype=np.float32)
    nan[0, 0, 0, 0] = np.nan
    infer = f"/v2/models/{shape.name}/infer"

    def bad(name: str, content_type: str, data: bytes, *statuses: int, path="/predict"):
        return BadInput(name, path, Body(content_type, data, 0), frozenset(statuses))

    return [
        bad("random bytes", "image/png", rng.bytes(512), 400, 422),
        bad("truncated png", "image/png", png[: len(png) // 2], 400, 422),
        bad("empty body", "image/png", b"", 400, 422),
        bad("text/plain", "text/plain", b"hello", 415),
        bad("tiff", "image/tiff", tiff_bytes(), 415),
        bad("tiff as png", "image/png", tiff_bytes(), 415),
        bad("npy wrong shape", "application/x-npy", npy_bytes(nan[:, :, :-1]), 422),
        bad("npy nan", "application/x-npy", npy_bytes(nan), 422),
        bad("npy int64", "application/x-npy", npy_bytes(np.ones((c, h, w), np.int64)), 422),
        bad("bad base64", "application/json", b'{"instances": [{"b64": "@@@"}]}', 400),
        bad("no file part", *_no_file_part(png), 422),
        bad("v2 bad json", "application/json", b"{nope", 400, path=infer),
        bad("v2 unknown model", "application/json", b"{}", 404, path="/v2/models/nope/infer"),
    ]


def _no_file_part(png: bytes) -> tuple[str, bytes]:
    data, content_type = encode_multipart_formdata([("other", ("a.png", png, "image/png"))])
    return content_type, data
