"""DICOM read like a viewer renders it, and safely (decoding issue: findings 2, 4, 5).

Pixel expectations are computed independently of the code under test: the DICOM
standard's window formulas (PS3.3 C.11.2.1.2) written out here in NumPy.
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from pydicom.uid import (
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
    RLELossless,
)

from bonexr.errors import ImageTooLargeError, UndecodableImageError, UnsupportedFormatError
from bonexr.imaging import decode_upload
from tests.dicom_support import deflated_bomb, dicom_file, rescaled_and_raw_window


def gray(data: bytes, **limits: int) -> np.ndarray:
    return np.asarray(decode_upload(data, **limits).image)


def ramp(
    dtype: type = np.uint16, high: int = 4095, shape: tuple[int, int] = (40, 48)
) -> np.ndarray:
    count = shape[0] * shape[1]
    return np.linspace(0, high, count).round().astype(dtype).reshape(shape)


def linear_exact(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """PS3.3 C.11.2.1.3.2 LINEAR_EXACT mapped to 0..255."""
    return np.clip(np.round(((values - center) / width + 0.5) * 255.0), 0, 255).astype(np.uint8)


def stretch(values: np.ndarray) -> np.ndarray:
    values = values.astype(np.float64)
    lo, hi = values.min(), values.max()
    return np.round((values - lo) * (255.0 / (hi - lo))).astype(np.uint8)


# -------------------------------------------------------------- modality LUT + window


def radiograph_codes() -> np.ndarray:
    """Stored codes of a CR-like image: 20% air, 10% soft tissue, 70% bone."""
    codes = np.full((50, 40), 1500, dtype=np.uint16)  # bone: 1500*2-1024 = 1976 HU-like
    codes[:10] = 12  # air: -1000
    codes[10:15] = 537  # soft tissue: +50
    return codes


def test_rescale_is_applied_before_the_window() -> None:
    # Window in rescaled units (center 500, width 1000 -> -0..1000 visible).
    data = dicom_file(
        radiograph_codes(),
        RescaleSlope=2,
        RescaleIntercept=-1024,
        WindowCenter=500,
        WindowWidth=1000,
        VOILUTFunction="LINEAR_EXACT",
    )
    pixels = gray(data)
    assert np.mean(pixels == 0) == pytest.approx(0.2)  # air black
    assert np.mean(pixels == 255) == pytest.approx(0.7)  # bone white
    expected = linear_exact(radiograph_codes() * 2.0 - 1024, 500, 1000)
    np.testing.assert_array_equal(pixels, expected)


def test_rescaled_window_equals_the_same_window_on_raw_values() -> None:
    codes = ramp(high=4095, shape=(64, 64))
    rescaled, raw = rescaled_and_raw_window(codes)
    np.testing.assert_array_equal(gray(rescaled), gray(raw))
    np.testing.assert_array_equal(gray(raw), linear_exact(codes.astype(float), 1012, 1500))


def test_default_linear_window_follows_the_standard() -> None:
    codes = ramp(high=4095)
    center, width = 2048.0, 2000.0
    data = dicom_file(codes, bits_stored=12, WindowCenter=center, WindowWidth=width)
    x = codes.astype(np.float64)
    # PS3.3 C.11.2.1.2.1 (LINEAR), output range 0..4095 -> 0..255
    y = ((x - (center - 0.5)) / (width - 1) + 0.5) * 4095
    y = np.clip(y, 0, 4095)
    expected = np.round(y * 255.0 / 4095).astype(np.uint8)
    assert np.abs(gray(data).astype(int) - expected).max() <= 1


def test_without_a_window_the_image_is_stretched_over_its_own_range() -> None:
    codes = ramp(high=3000)
    np.testing.assert_array_equal(gray(dicom_file(codes, bits_stored=12)), stretch(codes))


# ------------------------------------------------------------- photometric and depth


@pytest.mark.parametrize(
    ("dtype", "high", "bits_stored"),
    [(np.uint8, 255, 8), (np.uint16, 4095, 12), (np.uint16, 65535, 16), (np.int16, 2000, 16)],
)
def test_bit_depths(dtype: type, high: int, bits_stored: int) -> None:
    codes = ramp(dtype, high)
    if np.dtype(dtype).kind == "i":
        codes = (codes.astype(np.int32) - 1000).astype(dtype)  # negative values too
    np.testing.assert_array_equal(gray(dicom_file(codes, bits_stored=bits_stored)), stretch(codes))


def test_monochrome1_is_inverted_so_bone_is_bright() -> None:
    codes = radiograph_codes()
    mono2 = gray(dicom_file(codes, photometric="MONOCHROME2"))
    mono1 = gray(dicom_file(codes, photometric="MONOCHROME1"))
    np.testing.assert_array_equal(mono1, 255 - mono2)


def test_colour_uses_pillows_luma_weights() -> None:
    from PIL import Image

    rgb = np.random.default_rng(3).integers(0, 256, (40, 48, 3), dtype=np.uint8)
    expected = np.asarray(Image.fromarray(rgb, "RGB").convert("L"))
    np.testing.assert_array_equal(gray(dicom_file(rgb, photometric="RGB")), expected)


# ------------------------------------------------------------------- compression


@pytest.mark.parametrize("syntax", [RLELossless, JPEG2000Lossless, JPEGLosslessSV1])
def test_lossless_compression_decodes_to_the_uncompressed_pixels(syntax: str) -> None:
    codes = (ramp(high=4095) * 7 % 4096).astype(np.uint16)
    plain = gray(dicom_file(codes, bits_stored=12))
    np.testing.assert_array_equal(gray(dicom_file(codes, bits_stored=12, compress=syntax)), plain)


def test_jpeg_baseline_decodes_close_to_the_original() -> None:
    rgb = np.repeat(ramp(np.uint8, 255)[..., None], 3, axis=2)
    decoded = gray(dicom_file(rgb, photometric="RGB", compress=JPEGBaseline8Bit))
    assert np.abs(decoded.astype(int) - ramp(np.uint8, 255).astype(int)).mean() < 2


def test_undecodable_transfer_syntax_is_415_without_naming_packages() -> None:
    from pydicom import dcmread
    from pydicom.filebase import DicomBytesIO
    from pydicom.uid import MPEG2MPML

    ds = dcmread(DicomBytesIO(dicom_file(ramp(np.uint8, 255), compress=RLELossless)))
    ds.file_meta.TransferSyntaxUID = MPEG2MPML  # a video syntax: no image decoder exists
    buffer = DicomBytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    data = buffer.getvalue()
    with pytest.raises(UnsupportedFormatError) as info:
        decode_upload(data)
    message = str(info.value)
    assert "cannot be decoded" in message
    for word in ("pydicom", "pylibjpeg", "gdcm", "pillow", "numpy", "version"):
        assert word not in message.lower()


# ------------------------------------------------------------------- multi-frame


def test_multi_frame_uses_the_first_frame_with_a_warning() -> None:
    frames = np.stack([ramp(high=4095), ramp(high=4095)[::-1], ramp(high=100)])
    decoded = decode_upload(dicom_file(frames, bits_stored=12, frames=True))
    np.testing.assert_array_equal(np.asarray(decoded.image), stretch(frames[0]))
    assert decoded.warnings == ("multi-frame DICOM (3 frames): only the first frame was used",)


@pytest.mark.parametrize("compress", [None, RLELossless])
def test_multi_frame_rgb_decodes(compress: str | None) -> None:
    rgb = np.random.default_rng(5).integers(0, 256, (3, 40, 48, 3), dtype=np.uint8)
    decoded = decode_upload(dicom_file(rgb, photometric="RGB", frames=True, compress=compress))
    assert decoded.image.size == (48, 40) and decoded.image.mode == "L"
    assert "first frame" in decoded.warnings[0]


# ------------------------------------------------------------------------- bombs


def test_deflated_bomb_is_refused_before_it_is_inflated() -> None:
    bomb = deflated_bomb(frames=50, rows=2048, cols=2048)  # 400 MB of pixels declared
    assert len(bomb) < 450_000
    tracemalloc.start()
    try:
        with pytest.raises(ImageTooLargeError) as info:
            decode_upload(bomb, max_decoded_bytes=256 * 2**20)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert "50 frame(s) of 2048x2048" in str(info.value)
    assert "decoded-memory budget" in str(info.value)
    assert peak < 300 * 2**20, f"{peak / 2**20:.0f} MB traced while refusing the bomb"


def test_deflated_file_within_the_budget_decodes() -> None:
    from pydicom import dcmread
    from pydicom.filebase import DicomBytesIO
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    codes = ramp(high=4095)
    ds = dcmread(DicomBytesIO(dicom_file(codes, bits_stored=12)))
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    buffer = DicomBytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    assert b"1.2.840.10008.1.2.1.99" in buffer.getvalue()[:400]
    np.testing.assert_array_equal(gray(buffer.getvalue()), stretch(codes))


def test_frames_count_toward_the_budget() -> None:
    frames = np.zeros((20, 256, 256), dtype=np.uint16)  # 2.5 MB decoded in all
    data = dicom_file(frames, frames=True)
    decode_upload(data, max_decoded_bytes=3 * 2**20)
    with pytest.raises(ImageTooLargeError, match="20 frame"):
        decode_upload(data, max_decoded_bytes=2 * 2**20)


def test_rle_declaring_more_than_the_budget_is_refused() -> None:
    codes = np.zeros((1024, 1024), dtype=np.uint16)  # compresses to almost nothing
    data = dicom_file(codes, compress=RLELossless)
    assert len(data) < 100_000
    with pytest.raises(ImageTooLargeError, match="decoded-memory budget"):
        decode_upload(data, max_decoded_bytes=1 * 2**20)


def test_large_private_element_is_not_loaded() -> None:
    blob = bytes(range(256)) * (8 * 4096)  # 8 MB
    data = dicom_file(ramp(high=4095), bits_stored=12)
    from pydicom import dcmread
    from pydicom.filebase import DicomBytesIO

    ds = dcmread(DicomBytesIO(data))
    block = ds.private_block(0x0011, "VENDOR BLOB", create=True)
    block.add_new(0x01, "OB", blob)
    buffer = DicomBytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    big = buffer.getvalue()
    tracemalloc.start()
    try:
        decoded = gray(big)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    np.testing.assert_array_equal(decoded, stretch(ramp(high=4095)))
    assert peak < len(blob) / 2, f"{peak / 2**20:.1f} MB traced for an 8 MB private element"


# ------------------------------------------------------------------- header facts


def test_body_part_examined_is_reported_sanitised() -> None:
    data = dicom_file(ramp(high=4095), bits_stored=12, BodyPartExamined="Elbow<script>")
    assert decode_upload(data).body_part == "ELBOWSCRIPT"
    assert decode_upload(dicom_file(ramp(high=4095), bits_stored=12)).body_part is None


@pytest.mark.parametrize(
    "mangle",
    [
        lambda data: data[: len(data) - 1000],  # pixel data cut short
        lambda data: data[:300],  # header cut short
    ],
)
def test_truncated_dicom_is_undecodable(mangle: object) -> None:
    data = dicom_file(ramp(high=4095, shape=(64, 64)), bits_stored=12)
    with pytest.raises(UndecodableImageError):
        decode_upload(mangle(data))  # type: ignore[operator]
