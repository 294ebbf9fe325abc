"""RELIABILITY.md cases 6 to 10: bad, huge, foreign, animated and unusual images."""

from __future__ import annotations

import io

import httpx
import numpy as np
import pytest
from PIL import (
    EpsImagePlugin,
    FitsImagePlugin,
    GifImagePlugin,
    IcoImagePlugin,
    Image,
    Jpeg2KImagePlugin,
    MpoImagePlugin,
    PngImagePlugin,
    PpmImagePlugin,
    PsdImagePlugin,
    TiffImagePlugin,
)

from service.decode import Limits, decode_image
from service.modelspec import load_spec
from service.multipart import MultipartLimits
from tests.reliability import payloads
from tests.reliability.harness import (
    Bystanders,
    assert_error,
    http,
    png_bytes,
    predict_png,
    random_pngs,
    raw_output,
)

ALLOWED = ("PNG", "JPEG", "WEBP", "GIF", "BMP")


@pytest.fixture(scope="module")
def bystanders(server):
    return Bystanders(server.url, count=8, seed=2)


def post_image(url: str, data: bytes, content_type: str = "image/png") -> httpx.Response:
    return http.post(
        url + "/predict?raw=true", content=data, headers={"content-type": content_type}
    )


def answer_of(url: str, data: bytes, content_type: str = "image/png") -> np.ndarray:
    return raw_output(post_image(url, data, content_type))


def truncated_png() -> bytes:
    return random_pngs(1, size=64, seed=3)[0][:300]


@pytest.mark.parametrize(
    "data",
    [b"", b"\x89PNG\r\n\x1a\n", truncated_png(), np.random.default_rng(4).bytes(5000)],
    ids=["empty", "signature-only", "truncated", "random"],
)
@pytest.mark.parametrize("content_type", ["image/png", "image/jpeg", "application/octet-stream"])
def test_bad_bytes_get_a_json_400_or_422(server, data, content_type):
    """Case 6: whatever the declared type, unusable bytes are the client's error, never a 500."""
    error = assert_error(post_image(server.url, data, content_type), (400, 422))
    assert error["code"] in ("invalid_image", "unprocessable")


def test_bad_bytes_next_to_good_requests(server, bystanders):
    """Case 6 under load: a stream of garbage does not disturb concurrent good requests."""
    rng = np.random.default_rng(6)

    def hostile():
        return [predict_png(server.url, rng.bytes(2000)) for _ in range(20)]

    for response in bystanders.run(hostile):
        assert_error(response, (400, 422))


@pytest.mark.parametrize(
    "make",
    [payloads.png_bomb, payloads.png_header_bomb, payloads.gif_bomb],
    ids=["png-30k-1bit", "png-header-only", "gif-header"],
)
def test_decompression_bomb_is_refused_and_memory_stays_flat(server, bystanders, make):
    """Case 7: a few KB claiming 30k x 30k pixels: 413 from the pixel cap, RSS flat."""
    bomb = make()
    assert len(bomb) < 200_000
    rss_before = server.rss_bytes()

    def hostile():
        return [post_image(server.url, bomb, "application/octet-stream") for _ in range(4)]

    for response in bystanders.run(hostile):
        assert_error(response, (413, 422))
    # The 1-bit bomb alone is 112 MB unpacked (900 MB as 8-bit): any decode would show.
    assert server.rss_bytes() - rss_before < 30 << 20


def test_pixel_cap_is_below_pillows_own(server):
    """Case 7: 6000 x 6000 = 36 MP passes Pillow's bomb check (89 MP) but not the 25 MP cap."""
    bomb = payloads.png_header_bomb(6000, 6000)
    assert Image.MAX_IMAGE_PIXELS > 6000 * 6000
    error = assert_error(post_image(server.url, bomb), 413, "too_large")
    assert "25000000" in error["message"]


@pytest.mark.parametrize("fmt", sorted(payloads.foreign_formats()))
def test_format_outside_the_allow_list_gets_415(server, fmt):
    """Case 8: TIFF, PDF, EPS, PSD, FITS, ... are refused by their magic bytes."""
    data = payloads.foreign_formats()[fmt]
    for content_type in ("application/octet-stream", "image/png"):
        error = assert_error(post_image(server.url, data, content_type), 415)
        assert error["code"] == "unsupported_media_type"


FOREIGN_PARSERS = [
    TiffImagePlugin.TiffImageFile,
    EpsImagePlugin.EpsImageFile,
    PsdImagePlugin.PsdImageFile,
    FitsImagePlugin.FitsImageFile,
    IcoImagePlugin.IcoImageFile,
    PpmImagePlugin.PpmImageFile,
    Jpeg2KImagePlugin.Jpeg2KImageFile,
]


@pytest.fixture
def decode_args(model_dir):
    spec = load_spec(model_dir, (3, 16, 16))
    limits = Limits(25_000_000, ALLOWED, 64, 1 << 24, MultipartLimits(64, 16, 16))
    return spec, limits


def test_foreign_parsers_never_run(monkeypatch, decode_args):
    """Case 8: the decoder only names the format; no foreign plugin's ``_open`` is entered."""
    entered = []
    for cls in FOREIGN_PARSERS:
        monkeypatch.setattr(cls, "_open", lambda self, cls=cls: entered.append(cls.__name__))
    for fmt, data in payloads.foreign_formats().items():
        with pytest.raises(Exception) as info:
            decode_image(data, *decode_args)
        assert getattr(info.value, "status", None) == 415, (fmt, info.value)
    assert entered == []


def frames_and_first_png(count: int) -> tuple[list[Image.Image], bytes]:
    frames = payloads.palette_frames(count, 16, seed=count)
    return frames, png_bytes(np.asarray(frames[0].convert("RGB")))


@pytest.mark.parametrize("fmt", ["GIF", "PNG"], ids=["gif", "apng"])
def test_many_frames_answer_as_the_first_frame(server, bystanders, fmt):
    """Case 9: a 300-frame GIF / APNG is answered as its first frame alone."""
    frames, first = frames_and_first_png(300)
    animation = payloads.animated(fmt, frames, duration=10, loop=0)
    expected = answer_of(server.url, first)
    second = answer_of(server.url, png_bytes(np.asarray(frames[1].convert("RGB"))))
    assert not np.allclose(expected, second, atol=1e-3), "frames must answer differently"
    got = bystanders.run(lambda: answer_of(server.url, animation, f"image/{fmt.lower()}"))
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_mpo_answers_as_its_first_image(server):
    """Case 9: a 40-image MPO (multi-picture JPEG) answers as the JPEG of its first image."""
    frames = [payloads.rgb(16, 16, seed=90 + i) for i in range(40)]
    mpo = payloads.animated("MPO", frames, quality=95)
    first = payloads.encode(frames[0], "JPEG", quality=95)
    assert Image.open(io.BytesIO(mpo)).format == "MPO"
    got = answer_of(server.url, mpo, "image/jpeg")
    np.testing.assert_allclose(got, answer_of(server.url, first, "image/jpeg"), atol=1e-5)
    assert not np.allclose(got, answer_of(server.url, payloads.encode(frames[1], "JPEG")))


def test_no_seek_past_the_first_frame(monkeypatch, decode_args):
    """Case 9: decoding never seeks to a later frame (no frame-by-frame work)."""
    seeks = []
    for cls in (
        GifImagePlugin.GifImageFile,
        PngImagePlugin.PngImageFile,
        MpoImagePlugin.MpoImageFile,
    ):
        for name in ("seek", "_seek"):  # _seek: what n_frames and is_animated walk with
            if name not in vars(cls):
                continue
            original = vars(cls)[name]

            def seek(self, frame, *args, original=original, **kwargs):
                seeks.append(frame)
                return original(self, frame, *args, **kwargs)

            monkeypatch.setattr(cls, name, seek)
    frames = payloads.palette_frames(50, 16, seed=9)
    for fmt in ("GIF", "PNG"):
        decode_image(payloads.animated(fmt, frames, duration=10), *decode_args)
    decode_image(payloads.animated("MPO", [f.convert("RGB") for f in frames]), *decode_args)
    assert [frame for frame in seeks if frame != 0] == []


def test_cmyk_jpeg_is_converted(server):
    """Case 10: CMYK JPEG answers as Pillow's RGB rendering of the same pixels."""
    cmyk = payloads.rgb(16, 16, seed=10).convert("CMYK")
    jpeg = payloads.encode(cmyk, "JPEG", quality=95)
    reference = png_bytes(np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB")))
    expected = answer_of(server.url, reference)
    np.testing.assert_allclose(answer_of(server.url, jpeg, "image/jpeg"), expected, atol=1e-4)


def test_16_bit_png_is_scaled_to_8_bit(server):
    """Case 10: a 16-bit grey PNG of v * 257 answers as the 8-bit grey PNG of v."""
    rng = np.random.default_rng(11)
    grey = rng.integers(0, 256, (16, 16), dtype=np.uint16)
    wide = payloads.encode(Image.fromarray(grey * 257), "PNG")
    assert Image.open(io.BytesIO(wide)).mode.startswith("I")
    narrow = png_bytes(grey.astype(np.uint8))
    np.testing.assert_allclose(
        answer_of(server.url, wide), answer_of(server.url, narrow), rtol=1e-4, atol=1e-5
    )


def test_palette_with_transparency_is_flattened(server):
    """Case 10: palette+alpha PNG: transparent pixels take the background, others their colour."""
    frame = payloads.palette_frames(1, 16, seed=12)[0]
    frame.info["transparency"] = 7
    data = payloads.encode(frame, "PNG", transparency=7)
    pixels = np.asarray(frame.convert("RGB")).copy()
    pixels[np.asarray(frame) == 7] = 0
    assert (np.asarray(frame) == 7).any()
    np.testing.assert_allclose(
        answer_of(server.url, data), answer_of(server.url, png_bytes(pixels)), rtol=1e-4, atol=1e-5
    )


def test_one_pixel_image_answers_as_a_flat_image(server):
    """Case 10: 1 x 1 is stretched to the model's size: the same as a flat 16 x 16 image."""
    colour = np.array([[[200, 30, 90]]], np.uint8)
    flat = np.broadcast_to(colour, (16, 16, 3)).copy()
    np.testing.assert_allclose(
        answer_of(server.url, png_bytes(colour)),
        answer_of(server.url, png_bytes(flat)),
        rtol=1e-4,
        atol=1e-5,
    )


@pytest.mark.parametrize("shape", [(1, 100_000), (100_000, 1)], ids=["1x100000", "100000x1"])
def test_extreme_aspect_ratio_is_answered(server, shape):
    """Case 10: a 1 x 100000 strip is resized like any other image (or refused with 422)."""
    rng = np.random.default_rng(13)
    data = png_bytes(rng.integers(0, 256, (*shape, 3), dtype=np.uint8))
    response = post_image(server.url, data)
    if response.status_code != 200:
        assert_error(response, 422)
        return
    output = raw_output(response)
    assert output.shape == (10,) and np.isfinite(output).all()


@pytest.mark.parametrize("orientation,turn", [(3, Image.Transpose.ROTATE_180),
                                              (6, Image.Transpose.ROTATE_270),
                                              (8, Image.Transpose.ROTATE_90)])  # fmt: skip
def test_exif_orientation_is_applied(server, orientation, turn):
    """Case 10: an EXIF-rotated JPEG answers as its upright pixels, not as stored."""
    stored = payloads.rgb(16, 24, seed=14 + orientation)
    jpeg = payloads.with_exif_orientation(stored, orientation)
    decoded = Image.open(io.BytesIO(jpeg)).convert("RGB")
    upright = answer_of(server.url, png_bytes(np.asarray(decoded.transpose(turn))))
    as_stored = answer_of(server.url, png_bytes(np.asarray(decoded)))
    got = answer_of(server.url, jpeg, "image/jpeg")
    np.testing.assert_allclose(got, upright, rtol=1e-4, atol=1e-4)
    assert not np.allclose(got, as_stored, atol=1e-3)
