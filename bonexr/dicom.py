"""DICOM decoding the way a PACS viewer renders a radiograph, and safely.

Untrusted files are read in this order, each step bounded:

1. **Header only**, pixel data deferred: ``stop_before_pixels`` and ``defer_size`` (a large
   private element is never copied). A *deflated* dataset (the whole body is zlib data) is
   inflated incrementally: only a bounded prefix for the header, so a 400 KB file that
   inflates to gigabytes is refused before it is inflated.
2. **Declared size** (frames x rows x columns x samples x bytes per sample) checked against
   the decoded-memory budget, before any pixel is decoded.
3. **First frame only** decoded (``pydicom.pixels.pixel_array(index=0)``), through the
   installed decoders (JPEG baseline, JPEG lossless, JPEG-LS, JPEG 2000, RLE).
4. **Display pipeline**: modality LUT (rescale slope/intercept) -> VOI LUT or window ->
   8-bit stretch -> MONOCHROME1 inversion; colour becomes grayscale with Pillow's luma
   weights. A multi-frame file yields its first frame and a warning.

Only ``BodyPartExamined`` and ``Modality`` leave this module from the header (neither is
identifying; both sanitised); error messages name the problem, never a library, version or object.
"""

from __future__ import annotations

import io
import re
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from bonexr.errors import ImageTooLargeError, UndecodableImageError, UnsupportedFormatError
from bonexr.pixels import to_uint8

#: Deflated Explicit VR Little Endian: the dataset after the file meta is raw deflate data.
DEFLATED_TRANSFER_SYNTAX = "1.2.840.10008.1.2.1.99"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
#: Non-pixel header bytes we are willing to inflate from a deflated file to find its size.
MAX_HEADER_BYTES = 1 << 20
#: Values larger than this are left unread while parsing the header.
DEFER_SIZE = 4096


@dataclass(frozen=True)
class DicomImage:
    """The first frame as 8-bit grayscale, what the header named, what the caller must know."""

    image: Image.Image
    body_part: str | None
    warnings: tuple[str, ...]
    modality: str | None = None


def decode_dicom(data: bytes, *, max_pixels: int, max_decoded_bytes: int) -> DicomImage:
    """Decode untrusted DICOM bytes; raises the ``bonexr.errors`` image errors."""
    try:
        import pydicom
    except ImportError as exc:  # pragma: no cover - pydicom is a service dependency
        raise UnsupportedFormatError("DICOM support is not installed on this server") from exc
    _quiet(pydicom)
    data = _inflate_if_deflated(data, max_decoded_bytes)
    header = _read_header(pydicom, data)
    rows, cols, frames, samples, bits = _geometry(header)
    if rows * cols > max_pixels:
        raise ImageTooLargeError(
            f"image is {cols}x{rows} = {rows * cols:,} pixels; the limit is {max_pixels:,}"
        )
    declared = rows * cols * frames * samples * max(1, bits // 8)
    check_budget(declared, max_decoded_bytes, what=f"{frames} frame(s) of {cols}x{rows}")
    frame = _first_frame(pydicom, data)
    warnings: list[str] = []
    if frames > 1:
        warnings.append(f"multi-frame DICOM ({frames} frames): only the first frame was used")
    return DicomImage(
        _display(frame, header), _body_part(header), tuple(warnings), _modality(header)
    )


def _quiet(pydicom: Any) -> None:
    """Stop pydicom validating values while reading: its warnings quote header values
    (a malformed PatientName would reach the log). Values are never used here except
    BodyPartExamined, which is sanitised. Process-wide, as pydicom's setting is."""
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE


def check_budget(estimate: int, budget: int, *, what: str) -> None:
    """Refuse an image whose decoded size (from its header) exceeds the memory budget."""
    if estimate > budget:
        raise ImageTooLargeError(
            f"{what} would take {estimate / 2**20:,.0f} MB decoded; the decoded-memory budget "
            f"is {budget / 2**20:,.0f} MB"
        )


# ---------------------------------------------------------------------------- header


def _inflate_if_deflated(data: bytes, budget: int) -> bytes:
    """For a deflated file, return it re-written as Explicit VR Little Endian; other files
    are returned unchanged.

    Only the first :data:`MAX_HEADER_BYTES` are inflated to read the declared geometry,
    which is checked against ``budget`` before anything more is inflated; the rest is
    inflated in chunks and never beyond what the header declared (plus the header).
    """
    meta_end = _file_meta_end(data)
    if DEFLATED_TRANSFER_SYNTAX.encode() not in data[132:meta_end]:
        return data
    meta = _with_transfer_syntax(data[:meta_end], EXPLICIT_VR_LITTLE_ENDIAN)
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        head = inflater.decompress(data[meta_end:], MAX_HEADER_BYTES)
        declared = _declared_bytes(meta + head, budget)
        chunks, size, limit = [head], len(head), declared + MAX_HEADER_BYTES
        while not inflater.eof and size <= limit:
            tail = inflater.unconsumed_tail
            if not tail:
                chunks.append(inflater.flush())
                break
            chunk = inflater.decompress(tail, min(16 << 20, limit + 1 - size))
            chunks.append(chunk)
            size += len(chunk)
    except zlib.error as exc:
        raise UndecodableImageError("the deflated DICOM data is corrupt") from exc
    if size > limit:
        raise UndecodableImageError("the deflated DICOM data is longer than its header declares")
    return meta + b"".join(chunks)


def _declared_bytes(head: bytes, budget: int) -> int:
    """Decoded size the header declares; refuses it over ``budget``."""
    import pydicom

    rows, cols, frames, samples, bits = _geometry(_read_header(pydicom, head, partial=True))
    declared = rows * cols * frames * samples * max(1, bits // 8)
    check_budget(declared, budget, what=f"{frames} frame(s) of {cols}x{rows}")
    return declared


def _file_meta_end(data: bytes) -> int:
    """Offset where the file meta group (0002,xxxx) ends, from its group length element."""
    if data[132:136] != b"\x02\x00\x00\x00" or data[136:138] != b"UL":
        return 132  # no group length: pydicom will cope or complain
    group_length = int.from_bytes(data[140:144], "little")
    return 144 + group_length


def _with_transfer_syntax(meta: bytes, uid: str) -> bytes:
    """Rewrite the file meta's TransferSyntaxUID (0002,0010) element, fixing lengths."""
    import pydicom
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_file_meta_info

    try:
        file_meta = pydicom.dcmread(io.BytesIO(meta), stop_before_pixels=True).file_meta
    except Exception as exc:
        raise UndecodableImageError("the DICOM file meta information is corrupt") from exc
    file_meta.TransferSyntaxUID = pydicom.uid.UID(uid)
    out = DicomBytesIO()
    write_file_meta_info(out, file_meta, enforce_standard=True)
    return meta[:128] + b"DICM" + out.getvalue()


def _read_header(pydicom: Any, data: bytes, *, partial: bool = False) -> Any:
    try:
        return pydicom.dcmread(
            io.BytesIO(data), stop_before_pixels=True, defer_size=DEFER_SIZE, force=partial
        )
    except Exception as exc:
        raise UndecodableImageError("cannot read the DICOM header: the file is corrupt") from exc


def _geometry(header: Any) -> tuple[int, int, int, int, int]:
    """Rows, columns, frames, samples per pixel and bits allocated, validated."""
    try:
        rows, cols = int(header.Rows), int(header.Columns)
        frames = int(header.get("NumberOfFrames", 1) or 1)
        samples = int(header.get("SamplesPerPixel", 1) or 1)
        bits = int(header.get("BitsAllocated", 8) or 8)
    except (AttributeError, TypeError, ValueError) as exc:
        raise UndecodableImageError("the DICOM file has no image (no rows/columns)") from exc
    if min(rows, cols, frames, samples, bits) < 1 or samples not in (1, 3):
        raise UndecodableImageError(
            f"the DICOM image geometry is invalid ({cols}x{rows}, {frames} frame(s), "
            f"{samples} sample(s) per pixel)"
        )
    return rows, cols, frames, samples, bits


def _modality(header: Any) -> str | None:
    value = str(header.get("Modality", "") or "").strip().upper()
    value = re.sub(r"[^A-Z0-9]", "", value)[:16]
    return value or None


def _body_part(header: Any) -> str | None:
    value = str(header.get("BodyPartExamined", "") or "").strip().upper()
    value = re.sub(r"[^A-Z0-9 _-]", "", value)[:32]
    return value or None


# ---------------------------------------------------------------------------- pixels


def _first_frame(pydicom: Any, data: bytes) -> tuple[np.ndarray, Any]:
    """The first frame's stored values (YCbCr converted to RGB) and the full dataset."""
    from pydicom.pixels import pixel_array

    try:
        dataset = pydicom.dcmread(io.BytesIO(data), defer_size=DEFER_SIZE)
    except Exception as exc:
        raise UndecodableImageError("cannot read the DICOM file: it is corrupt") from exc
    if "PixelData" not in dataset and "FloatPixelData" not in dataset:
        raise UndecodableImageError("the DICOM file holds no pixel data")
    syntax = dataset.file_meta.get("TransferSyntaxUID")
    try:
        frame = pixel_array(dataset, index=0)
    except NotImplementedError as exc:
        name = getattr(syntax, "name", "this transfer syntax")
        raise UnsupportedFormatError(f"DICOM pixel data in {name} cannot be decoded here") from exc
    except Exception as exc:
        raise UndecodableImageError(
            "cannot decode the DICOM pixel data: it is corrupt or truncated"
        ) from exc
    return np.asarray(frame), dataset


def _has_voi(dataset: Any) -> bool:
    """A VOI LUT or window is present: its output range, not the image's, maps to 0..255."""
    return "VOILUTSequence" in dataset or ("WindowCenter" in dataset and "WindowWidth" in dataset)


def _display(frame_and_dataset: tuple[np.ndarray, Any], header: Any) -> Image.Image:
    """Modality LUT -> VOI LUT/window -> 8-bit -> MONOCHROME1 inversion; colour -> luma."""
    from pydicom.pixels.processing import apply_modality_lut, apply_voi_lut

    pixels, dataset = frame_and_dataset
    photometric = str(header.get("PhotometricInterpretation", "MONOCHROME2")).upper()

    def display_values(stored: np.ndarray) -> np.ndarray:
        return np.asarray(apply_voi_lut(apply_modality_lut(stored, dataset), dataset, index=0))

    try:
        if pixels.ndim == 3:  # colour (RGB after pixel_array's YCbCr conversion)
            rgb = pixels if pixels.dtype == np.uint8 else to_uint8(pixels)
            return Image.fromarray(np.ascontiguousarray(rgb[..., :3]), mode="RGB").convert("L")
        if pixels.ndim != 2:
            raise UndecodableImageError("the DICOM frame is not a 2-D image")
        # evaluated once per stored code and applied as a table (see bonexr.pixels)
        gray = to_uint8(pixels, display_values, over_output_range=_has_voi(dataset))
    except UndecodableImageError:
        raise
    except Exception as exc:
        raise UndecodableImageError("the DICOM display values (LUT/window) are invalid") from exc
    if photometric == "MONOCHROME1":
        gray = 255 - gray  # MONOCHROME1 stores bone dark; radiographs show bone bright
    return Image.fromarray(gray, mode="L")
