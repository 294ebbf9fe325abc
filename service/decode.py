"""Request bodies to model input: images, ``.npy`` tensors, JSON base64 and multipart uploads.

Everything here is blocking and runs in the decode thread pool, never on the event loop. Only the
service's typed errors leave these functions: a bad input fails alone, before it can join a batch.
"""

from __future__ import annotations

import binascii
import functools
import io
import json
import math
import tokenize
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from service.errors import (
    InvalidImage,
    MalformedRequest,
    PayloadTooLarge,
    ServiceError,
    UnprocessableInput,
    UnsupportedMediaType,
)
from service.modelspec import ModelSpec
from service.multipart import MultipartLimits, parse_files

IMAGE_TYPES = {
    "image/png",
    "image/jpeg",
    "image/jpg",
    "image/webp",
    "image/gif",
    "image/bmp",
    "image/x-ms-bmp",
    "application/octet-stream",
}
NPY_TYPES = {"application/x-npy", "application/npy"}
NPY_MAGIC = b"\x93NUMPY"
# Formats Pillow cannot open (so it has no magic check for them): named so they get 415, not 400.
FOREIGN_MAGIC = {b"%PDF-": "PDF", b"<svg": "SVG", b"<?xml": "XML"}


@dataclass(frozen=True)
class Limits:
    """Decoding limits, taken from the settings."""

    max_image_pixels: int
    allowed_formats: tuple[str, ...]
    max_images: int
    max_item_bytes: int
    multipart: MultipartLimits


def media_type(content_type: str | None) -> str:
    """``"Image/PNG; q=1"`` -> ``"image/png"``."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def sniff_format(data: bytes) -> str | None:
    """Name the image format from its magic bytes alone (no parser runs)."""
    Image.init()
    head = data[:32]
    for magic, name in FOREIGN_MAGIC.items():
        if head.startswith(magic):
            return name
    for name, (_, accept) in Image.OPEN.items():
        try:
            if accept and accept(head):
                return name
        except Exception:  # noqa: BLE001, S112 - a plugin's prefix check failing means "not this one"
            continue
    return None


def open_image(data: bytes, limits: Limits) -> Image.Image:
    """Open (header only) an allowed format and check the pixel cap before any pixel is decoded."""
    if not data:
        raise InvalidImage("empty image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=list(limits.allowed_formats))
    except UnidentifiedImageError:
        found = sniff_format(data)
        if found and found not in limits.allowed_formats:
            allowed = ", ".join(limits.allowed_formats)
            raise UnsupportedMediaType(f"image format {found} is not allowed ({allowed})") from None
        raise InvalidImage("not a recognizable image") from None
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        raise PayloadTooLarge("image has too many pixels") from None
    except (OSError, ValueError, EOFError) as exc:  # a plugin that chokes on a corrupt header
        raise InvalidImage(f"cannot open image: {type(exc).__name__}") from None
    width, height = image.size
    if width * height > limits.max_image_pixels:
        raise PayloadTooLarge(
            f"image is {width}x{height} = {width * height} pixels, limit {limits.max_image_pixels}"
        )
    if width < 1 or height < 1:
        raise UnprocessableInput(f"image is {width}x{height}")
    return image


def _flatten_alpha(image: Image.Image, background: int) -> Image.Image:
    rgba = image.convert("RGBA")
    canvas = Image.new("RGBA", rgba.size, (background, background, background, 255))
    return Image.alpha_composite(canvas, rgba).convert("RGB")


def _to_8bit(image: Image.Image) -> Image.Image:
    """Integer/float modes (16-bit PNG, 32-bit TIFF-like) scaled into 0..255 grey."""
    pixels = np.asarray(image, dtype=np.float64)
    if image.mode.startswith("I;16") or (image.mode == "I" and pixels.max(initial=0) > 255):
        pixels = pixels / 257.0
    return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), "L")


def normalize_mode(image: Image.Image, color_mode: str, background: int) -> Image.Image:
    """Any decoded mode (palette+alpha, CMYK, 16-bit, 1-bit, ...) to ``L`` or ``RGB``."""
    if image.mode in ("I", "F") or image.mode.startswith("I;"):
        image = _to_8bit(image)
    elif image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (
        image.mode == "P" and "transparency" in image.info
    ):
        image = _flatten_alpha(image, background)
    return image if image.mode == color_mode else image.convert(color_mode)


def fit_size(image: Image.Image, spec: ModelSpec) -> Image.Image:
    """Resize to the model's (H, W) with the model's policy (none when it is that size)."""
    height, width = spec.size_hw
    if image.size == (width, height):
        return image
    method = getattr(Image.Resampling, spec.resample.upper())
    if spec.resize == "pad":
        fill = spec.background if image.mode == "L" else (spec.background,) * 3
        return ImageOps.pad(image, (width, height), method=method, color=fill)
    if spec.resize == "center-crop":
        return ImageOps.fit(image, (width, height), method=method)
    return image.resize((width, height), method)


@functools.lru_cache(maxsize=64)
def _affine(
    mean: tuple[float, ...], std: tuple[float, ...], invert: bool
) -> tuple[np.ndarray, np.ndarray]:
    """``scale``, ``offset`` (C, 1, 1) with ``pixels * scale + offset`` equal to
    ``((255 - p if invert else p) / 255 - mean) / std``: one pass over the pixels, not four."""
    mean64 = np.asarray(mean, np.float64).reshape(-1, 1, 1)
    std64 = np.asarray(std, np.float64).reshape(-1, 1, 1)
    scale, offset = 1.0 / (255.0 * std64), -mean64 / std64
    if invert:
        scale, offset = -scale, offset + 255.0 * (1.0 / (255.0 * std64))
    return scale.astype(np.float32), offset.astype(np.float32)


def to_tensor(image: Image.Image, spec: ModelSpec) -> np.ndarray:
    """Pixels to float32 (C, H, W): optional inversion, then ``(p / 255 - mean) / std``."""
    pixels = np.asarray(image, dtype=np.float32)
    pixels = pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)
    scale, offset = _affine(tuple(spec.mean), tuple(spec.std), spec.invert)
    tensor = pixels * scale
    tensor += offset
    return np.ascontiguousarray(tensor, dtype=np.float32)


def decode_image(data: bytes, spec: ModelSpec, limits: Limits) -> np.ndarray:
    """One encoded image to the model's float32 (C, H, W) input. First frame only."""
    image = open_image(data, limits)
    try:
        if image.format == "JPEG":
            # Let libjpeg decode at a reduced scale when the target is much smaller.
            side = max(spec.size_hw)
            image.draft(spec.color_mode, (side, side))
        image.load()
        ImageOps.exif_transpose(image, in_place=True)  # in place: no copy when upright
        image = normalize_mode(image, spec.color_mode, spec.background)
        return to_tensor(fit_size(image, spec), spec)
    except ServiceError:
        raise
    except Exception as exc:  # noqa: BLE001 - any parser failure on client bytes is the client's 400
        raise InvalidImage(f"cannot decode {image.format} image: {type(exc).__name__}") from None


def check_tensor(array: np.ndarray, input_shape: tuple[int, ...], max_images: int) -> np.ndarray:
    """Validate a client tensor: float, (N, C, H, W) or (C, H, W) matching the model, all finite."""
    if array.dtype.kind != "f":
        raise UnprocessableInput(f"tensor dtype {array.dtype} is not a float type (float32)")
    if array.ndim == len(input_shape):
        array = array[None]
    if array.ndim != len(input_shape) + 1 or tuple(array.shape[1:]) != tuple(input_shape):
        expected = ", ".join(str(d) for d in input_shape)
        raise UnprocessableInput(
            f"tensor shape {tuple(array.shape)} does not match (N, {expected}) or ({expected})"
        )
    if not 1 <= array.shape[0] <= max_images:
        raise UnprocessableInput(f"tensor holds {array.shape[0]} images; 1..{max_images} allowed")
    if not np.isfinite(array).all():
        raise UnprocessableInput("tensor contains NaN or Inf")
    return np.ascontiguousarray(array, dtype=np.float32)


def _parse_npy_header(head: bytes) -> tuple[tuple[int, ...], bool, np.dtype]:
    """Shape, Fortran order and dtype from the magic and header of a ``.npy`` file."""
    stream = io.BytesIO(head)
    try:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            return np.lib.format.read_array_header_1_0(stream)
        if version == (2, 0):
            return np.lib.format.read_array_header_2_0(stream)
        raise ValueError(f"unsupported .npy version {version}")
    except (ValueError, SyntaxError, TypeError, EOFError, tokenize.TokenError) as exc:
        raise MalformedRequest(f"bad .npy header: {exc}") from None


# NumPy's header parser compiles the header (a Python literal) each time, ~150 us; a client
# sends the same header with every request, so short ones are parsed once.
_cached_npy_header = functools.lru_cache(maxsize=256)(_parse_npy_header)
CACHED_NPY_HEADER_BYTES = 256


def _npy_header_end(data: bytes) -> int:
    """Where a ``.npy`` header ends (the whole body when its length field is unreadable)."""
    size_bytes = {1: 2, 2: 4}.get(data[6] if len(data) > 6 else 0)
    if size_bytes is None or len(data) < 8 + size_bytes:
        return len(data)
    return 8 + size_bytes + int.from_bytes(data[8 : 8 + size_bytes], "little")


def read_npy(data: bytes) -> np.ndarray:
    """Parse ``.npy`` bytes without pickle and without trusting the header's size claims."""
    if not data.startswith(NPY_MAGIC):
        raise MalformedRequest("body is not a .npy file (bad magic)")
    end = _npy_header_end(data)
    head = data[:end]
    parse = _cached_npy_header if len(head) <= CACHED_NPY_HEADER_BYTES else _parse_npy_header
    shape, fortran, dtype = parse(head)
    if dtype.hasobject or dtype.fields is not None or dtype.kind != "f" or dtype.itemsize != 4:
        raise UnprocessableInput(f".npy dtype {dtype} is not accepted (float32 only)")
    payload = memoryview(data)[end:]
    count = math.prod(shape)  # Python integers: a lying shape cannot overflow to match the body
    if count * dtype.itemsize != len(payload):
        raise MalformedRequest(
            f".npy header says {shape} ({count * dtype.itemsize} bytes), body has {len(payload)}"
        )
    array = np.frombuffer(payload, dtype=dtype).reshape(shape, order="F" if fortran else "C")
    return array.astype(np.float32)


def parse_json(body: bytes, what: str) -> object:
    """``json.loads`` with every parser failure a 400: bad syntax or encoding, and nesting too
    deep for the parser (``RecursionError``; a body of 200,000 ``[`` is one)."""
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MalformedRequest(f"{what}: {exc}") from None
    except RecursionError:
        raise MalformedRequest(f"{what}: nested too deeply") from None


def b64_images(body: bytes, limits: Limits) -> list[bytes]:
    """``{"instances": [{"b64": "..."}]}`` to raw image bytes (sizes checked before decoding)."""
    payload = parse_json(body, "invalid JSON")
    instances = payload.get("instances") if isinstance(payload, dict) else None
    if not isinstance(instances, list) or not instances:
        raise UnprocessableInput('JSON body must be {"instances": [{"b64": "..."}, ...]}')
    if len(instances) > limits.max_images:
        raise PayloadTooLarge(f"{len(instances)} instances; at most {limits.max_images}")
    blobs = []
    for n, instance in enumerate(instances):
        text = instance.get("b64") if isinstance(instance, dict) else None
        if not isinstance(text, str):
            raise UnprocessableInput(f'instances[{n}] has no "b64" string')
        if len(text) * 3 // 4 > limits.max_item_bytes:
            raise PayloadTooLarge(f"instances[{n}] is longer than {limits.max_item_bytes} bytes")
        try:
            blobs.append(binascii.a2b_base64(text.encode("ascii"), strict_mode=True))
        except (binascii.Error, UnicodeEncodeError) as exc:
            raise MalformedRequest(f"instances[{n}] is not valid base64: {exc}") from None
    return blobs


class Decoder:
    """Turns one ``POST /predict`` body into an (N, C, H, W) float32 batch for one model."""

    def __init__(self, spec: ModelSpec, input_shape: tuple[int, ...], limits: Limits):
        self.spec = spec
        self.input_shape = tuple(input_shape)
        self.limits = limits

    def images(self, blobs: list[bytes]) -> np.ndarray:
        """Several encoded images to one batch."""
        if len(blobs) > self.limits.max_images:
            raise PayloadTooLarge(f"{len(blobs)} images; at most {self.limits.max_images}")
        return np.stack([decode_image(blob, self.spec, self.limits) for blob in blobs])

    def tensor(self, array: np.ndarray) -> np.ndarray:
        """Validate a client-supplied tensor against the model input."""
        return check_tensor(array, self.input_shape, self.limits.max_images)

    def decode(self, content_type: str | None, body: bytes) -> np.ndarray:
        """Dispatch on the media type; 415 for anything not accepted."""
        kind = media_type(content_type)
        if kind in IMAGE_TYPES:
            return self.images([body])
        if kind in NPY_TYPES:
            return self.tensor(read_npy(body))
        if kind == "application/json":
            return self.images(b64_images(body, self.limits))
        if kind == "multipart/form-data":
            files = parse_files(body, content_type or "", "file", self.limits.multipart)
            if not files:
                raise UnprocessableInput('multipart body has no "file" part')
            return self.images(files)
        raise UnsupportedMediaType(
            f"content type {kind or '(none)'!r} is not accepted; send an image, "
            "multipart/form-data, application/x-npy or application/json"
        )
