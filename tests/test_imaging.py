"""The shared decode/preprocess path: formats, modes, limits, letterboxing."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from bonexr.errors import ImageTooLargeError, UndecodableImageError, UnsupportedFormatError
from bonexr.imaging import (
    decode_image,
    encode_png,
    model_input,
    prepare_pixels,
    preprocess_bytes,
    sniff_format,
)


def _encode(image: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def test_sniff_by_magic_bytes_not_name() -> None:
    gray = Image.new("L", (16, 16), 128)
    assert sniff_format(_encode(gray)).name == "PNG"
    assert sniff_format(_encode(gray, "JPEG")).name == "JPEG"
    assert sniff_format(_encode(gray, "WEBP")).name == "WEBP"
    assert sniff_format(b"\x00" * 128 + b"DICM" + b"\x00" * 16).name == "DICOM"
    assert sniff_format(b"hello, I am a text file pretending to be a .png") is None


@pytest.mark.parametrize(
    ("mode", "fill", "expected"),
    [
        ("L", 200, 200),
        ("RGB", (200, 200, 200), 200),
        ("RGBA", (200, 200, 200, 255), 200),
        ("RGBA", (200, 200, 200, 0), 0),  # fully transparent -> black background
        ("LA", (200, 255), 200),
    ],
)
def test_modes_become_8bit_gray(mode: str, fill, expected: int) -> None:
    image = decode_image(_encode(Image.new(mode, (20, 10), fill)))
    assert image.mode == "L"
    assert image.size == (20, 10)
    assert int(np.asarray(image)[5, 5]) == expected


def test_palette_cmyk_and_16bit_are_accepted() -> None:
    palette = Image.new("RGB", (16, 16), (90, 90, 90)).convert("P")
    assert decode_image(_encode(palette)).mode == "L"
    cmyk = Image.new("CMYK", (16, 16), (0, 0, 0, 100))
    assert decode_image(_encode(cmyk, "JPEG")).mode == "L"
    ramp = np.tile(np.arange(0, 65536, 4096, dtype=np.uint16), (16, 1))
    sixteen = decode_image(_encode(Image.fromarray(ramp)))
    values = np.asarray(sixteen)
    assert values.min() == 0 and values.max() == 255  # stretched over its own range


def test_bad_bytes_raise_precise_errors() -> None:
    with pytest.raises(UndecodableImageError):
        decode_image(b"")
    with pytest.raises(UnsupportedFormatError):
        decode_image(b"just text")
    png = _encode(Image.new("L", (64, 64), 9))
    with pytest.raises(UndecodableImageError):
        decode_image(png[: len(png) // 2])
    with pytest.raises(UndecodableImageError):
        decode_image(_encode(Image.new("L", (1, 1))))
    with pytest.raises(ImageTooLargeError):
        decode_image(_encode(Image.new("L", (100, 100))), max_pixels=5_000)


def test_letterbox_keeps_aspect_and_centres() -> None:
    wide = Image.new("L", (200, 100), 255)
    pixels = prepare_pixels(wide, 64)
    assert pixels.shape == (64, 64) and pixels.dtype == np.uint8
    assert pixels[0].max() == 0 and pixels[-1].max() == 0  # black bars top and bottom
    assert pixels[32].min() == 255  # image band in the middle, full width
    assert (pixels[:, 0] == 255).sum() == 32  # the band is 32 px high (aspect 2:1)


def test_model_input_shape_and_range() -> None:
    pixels = preprocess_bytes(_encode(Image.new("L", (30, 40), 77)), 32)
    batch = model_input(pixels)
    assert batch.shape == (1, 32, 32, 1) and batch.dtype == np.float32
    assert batch.max() == 77.0
    assert model_input(np.stack([pixels, pixels])).shape == (2, 32, 32, 1)


def test_encode_png_drops_metadata() -> None:
    image = Image.new("L", (16, 16), 50)
    exif = Image.Exif()
    exif[0x010E] = "patient name"
    jpeg = _encode(image.convert("RGB"), "JPEG", exif=exif.tobytes())
    assert b"patient name" in jpeg
    clean = encode_png(decode_image(jpeg))
    assert b"patient name" not in clean
    reopened = Image.open(io.BytesIO(clean))
    assert not reopened.info.get("exif") and reopened.mode == "L"


def _radiograph_like(width: int = 512, height: int = 384) -> Image.Image:
    """Smooth bright "bones" on a dark, noisy background (how real uploads compress)."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    pixels = 30 + 12 * np.random.default_rng(5).normal(size=(height, width))
    for cx, cy, rx, ry in ((0.3, 0.5, 0.08, 0.4), (0.65, 0.45, 0.1, 0.35)):
        inside = ((xx / width - cx) / rx) ** 2 + ((yy / height - cy) / ry) ** 2
        pixels += 170 * np.exp(-inside * 2)
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8), mode="L")


@pytest.mark.parametrize("progressive", [False, True])
@pytest.mark.parametrize("cut", [0.3, 0.5, 0.8])
def test_a_jpeg_cut_short_with_an_end_marker_appended_is_refused(
    progressive: bool, cut: float
) -> None:
    """The probe's file: half a JPEG plus FF D9. It passes the old entropy bound and
    Pillow decodes it without complaint (the rest is flat grey); it must be a 422."""
    from bonexr import jpeg

    whole = _encode(_radiograph_like(), "JPEG", quality=90, progressive=progressive)
    assert decode_image(whole).size == (512, 384)
    cut_short = whole[: int(len(whole) * cut)] + b"\xff\xd9"
    assert jpeg.incomplete_reason(cut_short) is None  # the byte-count bound cannot see it
    Image.open(io.BytesIO(cut_short)).load()  # nor can Pillow
    with pytest.raises(UndecodableImageError, match="incomplete"):
        decode_image(cut_short)


def test_a_complete_jpeg_with_bytes_after_its_end_marker_is_accepted() -> None:
    """Trailers after the EOI (some scanners write them) are not a cut scan."""
    whole = _encode(_radiograph_like(), "JPEG", quality=75, optimize=True)
    assert decode_image(whole + b"\x00" * 64).size == (512, 384)
