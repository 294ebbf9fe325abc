"""model.json and image preprocessing (in-process): defaults from the ONNX shape, resize policies,
inversion and scaling, each checked against pixels computed here by hand."""

from __future__ import annotations

import io
import json

import numpy as np
import onnx
import pytest
from PIL import Image

from service.decode import Limits, decode_image
from service.modelspec import load_spec
from service.multipart import MultipartLimits
from tests.service.models import build_cnn

LIMITS = Limits(
    max_image_pixels=1_000_000,
    allowed_formats=("PNG",),
    max_images=4,
    max_item_bytes=1 << 20,
    multipart=MultipartLimits(max_files=4, max_fields=4, max_headers=4),
)


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def spec_for(tmp_path, channels: int, size: int, meta: dict | None):
    directory = tmp_path / "m"
    directory.mkdir()
    onnx.save(build_cnn(channels, size, 10, seed=1), directory / "model.onnx")
    if meta is not None:
        (directory / "model.json").write_text(json.dumps(meta))
    return load_spec(directory, (channels, size, size))


def test_defaults_come_from_the_onnx_input(tmp_path):
    path = tmp_path / "plain-net.onnx"
    onnx.save(build_cnn(1, 8, 10, seed=2), path)
    spec = load_spec(path, (1, 8, 8))
    assert spec.name == "plain-net" and spec.labels is None and spec.label(3) == "3"
    assert (spec.color_mode, spec.size_hw, spec.resize) == ("L", (8, 8), "stretch")
    assert spec.mean == (0.0,) and spec.std == (1.0,) and spec.output == "logits"
    rgb = spec_for(tmp_path, 3, 16, {"name": "custom", "labels": ["a"] * 10})
    assert (rgb.name, rgb.color_mode, rgb.label(0)) == ("custom", "RGB", "a")


@pytest.mark.parametrize(
    "meta",
    [
        {"preprocess": {"size": [9, 9]}},
        {"preprocess": {"color_mode": "RGB"}},
        {"preprocess": {"std": [0.0]}},
        {"preprocess": {"resize": "zoom"}},
    ],
)
def test_model_json_that_does_not_fit_is_refused(tmp_path, meta):
    with pytest.raises(ValueError):
        spec_for(tmp_path, 1, 8, meta)


def test_stretch_nearest_recovers_an_upscaled_image(tmp_path):
    spec = spec_for(tmp_path, 1, 8, {"preprocess": {"resample": "nearest"}})
    pixels = np.random.default_rng(3).integers(0, 256, (8, 8), dtype=np.uint8)
    big = Image.fromarray(pixels, "L").resize((16, 16), Image.Resampling.NEAREST)
    x = decode_image(png(big), spec, LIMITS)[0]
    np.testing.assert_allclose(x, pixels / 255.0, rtol=1e-6, atol=1e-7)


def test_pad_letterboxes_with_the_background_and_invert(tmp_path):
    meta = {"preprocess": {"resize": "pad", "background": 255, "invert": True}}
    spec = spec_for(tmp_path, 1, 8, meta)
    wide_black = Image.new("L", (16, 8), 0)  # 2:1, so 8x4 in the middle, white bands above/below
    x = decode_image(png(wide_black), spec, LIMITS)[0]
    np.testing.assert_array_equal(x[[0, 1, 6, 7]], 0.0)  # background 255, inverted
    np.testing.assert_array_equal(x[2:6], 1.0)  # black ink, inverted


def test_center_crop_keeps_the_middle(tmp_path):
    spec = spec_for(tmp_path, 1, 8, {"preprocess": {"resize": "center-crop"}})
    stripes = np.repeat(np.array([0, 128, 255], np.uint8), 8)[None].repeat(8, axis=0)
    x = decode_image(png(Image.fromarray(stripes, "L")), spec, LIMITS)[0]
    np.testing.assert_allclose(x, 128 / 255.0)


def test_per_channel_mean_and_std(tmp_path):
    mean, std = [0.1, 0.2, 0.3], [0.5, 0.25, 2.0]
    spec = spec_for(tmp_path, 3, 8, {"preprocess": {"mean": mean, "std": std}})
    pixels = np.random.default_rng(4).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    x = decode_image(png(Image.fromarray(pixels, "RGB")), spec, LIMITS)
    want = (pixels.transpose(2, 0, 1) / 255.0 - np.reshape(mean, (3, 1, 1))) / np.reshape(
        std, (3, 1, 1)
    )
    np.testing.assert_allclose(x, want, rtol=1e-6, atol=1e-6)
