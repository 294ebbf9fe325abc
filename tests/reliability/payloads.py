"""Hostile and unusual inputs, built in memory: bombs, foreign formats, animations, odd modes."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image

RNG_SEED = 20261125


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def rgb(height: int, width: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")


def _chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def png_bomb(width: int = 30_000, height: int = 30_000, bit_depth: int = 1) -> bytes:
    """A PNG that claims ``width x height`` pixels; its IDAT inflates to the full image (all zero
    rows), so whatever decodes it must allocate the lot. 1-bit 30k x 30k: about 110 KB."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, 0, 0, 0, 0)
    row = b"\0" * (1 + (width * bit_depth + 7) // 8)
    packer = zlib.compressobj(9)
    rows = row * 1000
    idat = b"".join(packer.compress(rows) for _ in range(height // 1000))
    idat += packer.compress(row * (height % 1000)) + packer.flush()
    head = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr)
    return head + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def png_header_bomb(width: int = 30_000, height: int = 30_000) -> bytes:
    """A few hundred bytes: a PNG header claiming a huge 8-bit image, with one row of data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * (1 + width), 9)
    head = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr)
    return head + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def gif_bomb(width: int = 30_000, height: int = 30_000) -> bytes:
    """A GIF whose logical screen and frame claim ``width x height``."""
    data = bytearray(encode(Image.new("P", (1, 1)), "GIF"))
    data[6:10] = struct.pack("<HH", min(width, 65535), min(height, 65535))
    # The image descriptor (0x2C) follows the header, colour table and extension blocks.
    at = data.index(b"\x2c", 13)
    data[at + 5 : at + 9] = struct.pack("<HH", min(width, 65535), min(height, 65535))
    return bytes(data)


def foreign_formats() -> dict[str, bytes]:
    """Files of formats outside the allow-list, each recognisable by its magic bytes."""
    image = rgb(8, 8, RNG_SEED)
    fits_header = b"".join(
        card.ljust(80).encode()
        for card in ("SIMPLE  = T", "BITPIX  = 8", "NAXIS   = 2", "NAXIS1  = 8", "NAXIS2  = 8")
    )
    fits = (fits_header + b"END".ljust(80)).ljust(2880) + bytes(64).ljust(2880, b"\0")
    psd = (
        b"8BPS"
        + struct.pack(">H6xHIIHH", 1, 3, 8, 8, 8, 3)
        + struct.pack(">III", 0, 0, 0)
        + struct.pack(">H", 0)
        + bytes(8 * 8 * 3)
    )
    return {
        "TIFF": encode(image, "TIFF"),
        "PDF": encode(image, "PDF"),
        "EPS": encode(image, "EPS"),
        "PSD": psd,
        "FITS": fits,
        "ICO": encode(image, "ICO"),
        "PPM": encode(image, "PPM"),
        "JPEG2000": encode(image, "JPEG2000"),
        "SVG": b'<svg xmlns="http://www.w3.org/2000/svg" width="8" height="8"/>',
    }


def animated(fmt: str, frames: list[Image.Image], **options) -> bytes:
    """A many-frame GIF or APNG of ``frames``."""
    return encode(frames[0], fmt, save_all=True, append_images=frames[1:], **options)


def palette_frames(count: int, size: int, seed: int) -> list[Image.Image]:
    """Frames in one shared 256-colour palette, so GIF stores them without loss."""
    rng = np.random.default_rng(seed)
    palette = rng.integers(0, 256, 768, dtype=np.uint8).tobytes()
    frames = []
    for _ in range(count):
        frame = Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8), "P")
        frame.putpalette(palette)
        frames.append(frame)
    return frames


def with_exif_orientation(image: Image.Image, orientation: int) -> bytes:
    """A JPEG whose EXIF says how to turn the stored pixels upright."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(image, "JPEG", quality=95, exif=exif.tobytes())


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=True)
    return buffer.getvalue()
