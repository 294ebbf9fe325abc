"""Load-test payloads: well formed, and answered by a real service as the users expect."""

from __future__ import annotations

import io
import json

import httpx
import numpy as np
import pytest
from PIL import Image

from loadtests.payloads import (
    PNG_SIDES,
    b64_body,
    bad_inputs,
    kserve_body,
    multipart_body,
    npy_body,
    png_body,
    png_pool,
)
from service.multipart import MultipartLimits, parse_files


def test_png_pool_covers_every_size_in_grey_and_colour():
    pool = png_pool(seed=1, per_side=3)
    images = [Image.open(io.BytesIO(png)) for png in pool]
    assert {im.format for im in images} == {"PNG"}
    assert {im.height for im in images} == set(PNG_SIDES)
    assert {im.mode for im in images} == {"L", "RGB"}
    # Drawn strokes, not blank paper: each image has ink.
    assert all(np.asarray(im.convert("L")).min() < 128 for im in images)


def test_multipart_body_parses_back_to_the_same_images():
    pngs = png_pool(seed=2, per_side=1)
    body = multipart_body(pngs)
    limits = MultipartLimits(max_files=64, max_fields=16, max_headers=16)
    assert parse_files(body.data, body.content_type, "file", limits) == pngs
    assert body.images == len(pngs)


def test_tensor_bodies_hold_random_float32_of_the_model_shape(shape):
    rng = np.random.default_rng(3)
    npy = npy_body(rng, shape, 5)
    array = np.load(io.BytesIO(npy.data), allow_pickle=False)
    assert array.dtype == np.float32 and array.shape == (5, *shape.chw)
    assert array.std() > 0.1
    v2 = json.loads(kserve_body(rng, shape, 3).data)["inputs"][0]
    assert v2["shape"] == [3, *shape.chw] and len(v2["data"]) == 3 * int(np.prod(shape.chw))


def test_every_bad_input_is_refused_with_its_status_and_a_json_error(service, shape):
    bad = bad_inputs(shape, seed=4)
    assert len({b.name for b in bad}) == len(bad)
    with httpx.Client(base_url=service.url, timeout=30) as client:
        for item in bad:
            answer = client.post(
                item.path, content=item.body.data, headers={"content-type": item.body.content_type}
            )
            assert answer.status_code in item.statuses, (item.name, answer.text)
            assert "error" in answer.json(), item.name


@pytest.mark.parametrize("kind", ["png", "multipart", "npy", "b64"])
def test_good_bodies_get_one_result_per_image(service, shape, kind):
    rng = np.random.default_rng(5)
    pngs = png_pool(seed=6, per_side=1)
    body = {
        "png": lambda: png_body(pngs[-1]),
        "multipart": lambda: multipart_body(pngs[:4]),
        "npy": lambda: npy_body(rng, shape, 6),
        "b64": lambda: b64_body(pngs[:3]),
    }[kind]()
    answer = httpx.post(
        service.url + "/predict",
        content=body.data,
        headers={"content-type": body.content_type},
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    results = answer.json()["results"]
    assert len(results) == body.images
    assert all(0 <= r["predictions"][0]["index"] < shape.classes for r in results)


@pytest.mark.parametrize("binary", [False, True])
def test_kserve_body_is_answered_with_one_row_per_image(service, shape, binary):
    body = kserve_body(np.random.default_rng(7), shape, 4, binary)
    answer = httpx.post(
        f"{service.url}/v2/models/{shape.name}/infer",
        content=body.data,
        headers={"content-type": body.content_type, **dict(body.headers)},
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    split = int(answer.headers.get("inference-header-content-length", len(answer.content)))
    output = json.loads(answer.content[:split])["outputs"][0]
    assert output["shape"] == [4, shape.classes]
    values = len(output["data"]) if not binary else (len(answer.content) - split) // 4
    assert values == 4 * shape.classes
