"""The digits data set, its fixed train/held-out split, and PNG renderings of its images.

Shared by `train_digits.py`, `examples/make_examples.py` and the accuracy tests, so every one of
them sees the same held-out images. Needs NumPy, Pillow and scikit-learn; never PyTorch.

scikit-learn's digits are the UCI "optdigits" set: 32x32 binary bitmaps of handwriting, each 4x4
block counted into one pixel, so a pixel v is in 0..16 and the ink is light on a black background.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

SPLIT_SEED = 20240917
HELD_OUT_FRACTION = 0.2
# A pixel of the data set counts the ink in a 4x4 block of the original bitmap.
MAX_PIXEL_VALUE = 16


@dataclass(frozen=True)
class Split:
    """Images as (N, 8, 8) float32 in 0..16 and labels as (N,) int64."""

    train_images: np.ndarray
    train_labels: np.ndarray
    held_out_images: np.ndarray
    held_out_labels: np.ndarray


def load_split() -> Split:
    """The stratified split used for training and for every accuracy measurement."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = digits.images.astype(np.float32)
    labels = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        images,
        labels,
        test_size=HELD_OUT_FRACTION,
        random_state=SPLIT_SEED,
        stratify=labels,
    )
    return Split(x_train, y_train, x_test, y_test)


def render_png(image: np.ndarray, scale: int = 4) -> bytes:
    """One 8x8 sample as a user would send it: dark ink on white, upscaled `scale`x, PNG bytes.

    Nearest-neighbour upscaling keeps each pixel a uniform block, so box resampling back to 8x8
    and inverting recovers the sample (to within 1/255).
    """
    gray = np.rint(255.0 - image * (255.0 / MAX_PIXEL_VALUE)).astype(np.uint8)
    picture = Image.fromarray(gray, mode="L")
    picture = picture.resize(
        (gray.shape[1] * scale, gray.shape[0] * scale), Image.Resampling.NEAREST
    )
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def to_tensor(png: bytes, preprocess: dict) -> np.ndarray:
    """A reference reading of model.json's "preprocess" block: image bytes -> float32 (1, C, H, W).

    Independent of the service's own implementation, so the two can be checked against each other.
    """
    picture = ImageOps.exif_transpose(Image.open(io.BytesIO(png)))
    picture = picture.convert(preprocess.get("color_mode", "L"))
    height, width = preprocess["size"]
    resample = Image.Resampling[preprocess.get("resample", "bilinear").upper()]
    resize = preprocess.get("resize", "stretch")
    if resize == "pad":
        fill = preprocess.get("background", 0)
        picture = ImageOps.pad(picture, (width, height), method=resample, color=fill)
    elif resize == "center-crop":
        picture = ImageOps.fit(picture, (width, height), method=resample)
    else:
        picture = picture.resize((width, height), resample)
    pixels = np.asarray(picture, dtype=np.float32)
    if preprocess.get("invert", False):
        pixels = 255.0 - pixels
    pixels = pixels.reshape(height, width, -1).transpose(2, 0, 1)
    mean = np.asarray(preprocess.get("mean", [0.0]), dtype=np.float32).reshape(-1, 1, 1)
    std = np.asarray(preprocess.get("std", [1.0]), dtype=np.float32).reshape(-1, 1, 1)
    return ((pixels / 255.0 - mean) / std)[None].astype(np.float32)
