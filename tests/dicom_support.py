"""DICOM files built for the tests: any geometry, photometric, LUT and transfer syntax.

(No tests here.) Compressed variants use real encoders: pydicom's own RLE encoder,
OpenJPEG (through pydicom) for JPEG 2000, libjpeg-turbo (``imagecodecs``) for JPEG
lossless, Pillow for JPEG baseline.
"""

from __future__ import annotations

import io
import struct
import zlib
from typing import Any

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
    generate_uid,
)

DX_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation


def _meta(syntax: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DX_SOP_CLASS
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = syntax
    return meta


def _image_dataset(
    shape: tuple[int, ...],
    *,
    photometric: str,
    bits_allocated: int,
    bits_stored: int,
    signed: bool,
    syntax: str,
    elements: dict[str, Any],
) -> FileDataset:
    ds = FileDataset("x.dcm", {}, file_meta=_meta(syntax), preamble=b"\x00" * 128)
    ds.SOPClassUID = DX_SOP_CLASS
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.PatientName = "DOE^JANE"
    ds.PatientID = "ID-12345"
    ds.Rows, ds.Columns = shape[-3:-1] if photometric == "RGB" else shape[-2:]
    ds.SamplesPerPixel = 3 if photometric == "RGB" else 1
    if photometric == "RGB":
        ds.PlanarConfiguration = 0
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits_allocated, bits_stored, bits_stored - 1
    ds.PixelRepresentation = 1 if signed else 0
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    return ds


def dicom_file(
    pixels: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    bits_stored: int | None = None,
    frames: bool = False,
    compress: str | None = None,
    **elements: Any,
) -> bytes:
    """A DICOM file holding ``pixels``: ``(rows, cols)``, ``(rows, cols, 3)`` for RGB, with
    ``frames=True`` a leading frame axis. ``compress``: a transfer syntax UID pydicom can
    encode (RLE, JPEG 2000) or JPEG lossless / baseline (encoded here)."""
    pixels = np.asarray(pixels)
    signed = pixels.dtype.kind == "i"
    bits_allocated = pixels.dtype.itemsize * 8
    ds = _image_dataset(
        pixels.shape,
        photometric=photometric,
        bits_allocated=bits_allocated,
        bits_stored=bits_stored or bits_allocated,
        signed=signed,
        syntax=ExplicitVRLittleEndian,
        elements=elements,
    )
    if frames:
        ds.NumberOfFrames = pixels.shape[0]
    if compress == JPEGLosslessSV1:
        import imagecodecs

        ds.file_meta.TransferSyntaxUID = JPEGLosslessSV1
        ds.PixelData = encapsulate(
            [
                imagecodecs.jpeg8_encode(
                    frame, lossless=True, predictor=1, bitspersample=ds.BitsStored
                )
                for frame in (pixels if frames else [pixels])
            ]
        )
    elif compress == JPEGBaseline8Bit:
        ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
        buffers = []
        for frame in pixels if frames else [pixels]:
            buffer = io.BytesIO()
            Image.fromarray(frame).save(buffer, format="JPEG", quality=95)
            buffers.append(buffer.getvalue())
        if photometric == "RGB":
            ds.PhotometricInterpretation = "YBR_FULL_422"
        ds.PixelData = encapsulate(buffers)
    else:
        ds.PixelData = np.ascontiguousarray(pixels).tobytes()
        if compress:
            ds.compress(compress)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def rescaled_and_raw_window(codes: np.ndarray) -> tuple[bytes, bytes]:
    """Two 12-bit files a viewer renders identically: one with a modality LUT (slope 2,
    intercept -1024) and a window in rescaled units (centre 1000, width 3000), one with the
    same window expressed in stored codes ((1000 + 1024) / 2, 3000 / 2)."""
    exact = {"VOILUTFunction": "LINEAR_EXACT", "bits_stored": 12}
    rescaled = dicom_file(
        codes, RescaleSlope=2, RescaleIntercept=-1024, WindowCenter=1000, WindowWidth=3000, **exact
    )
    raw = dicom_file(codes, WindowCenter=1012, WindowWidth=1500, **exact)
    return rescaled, raw


def deflated_bomb(frames: int = 50, rows: int = 2048, cols: int = 2048) -> bytes:
    """A small deflated DICOM whose pixel data inflates to frames x rows x cols x 16 bit of
    zeros; written by streaming the deflate so the test never holds the inflated data."""
    ds = Dataset()
    ds.SOPClassUID = DX_SOP_CLASS
    ds.SOPInstanceUID = generate_uid()
    ds.Rows, ds.Columns, ds.NumberOfFrames = rows, cols, frames
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    write_dataset(body, ds)
    length = frames * rows * cols * 2
    pixel_header = struct.pack("<HH", 0x7FE0, 0x0010) + b"OW\x00\x00" + struct.pack("<I", length)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    out = [compressor.compress(body.getvalue() + pixel_header)]
    chunk = bytes(16 * 1024 * 1024)
    left = length
    while left:
        out.append(compressor.compress(chunk[: min(left, len(chunk))]))
        left -= min(left, len(chunk))
    out.append(compressor.flush())
    meta = DicomBytesIO()
    write_file_meta_info(meta, _meta(DeflatedExplicitVRLittleEndian), enforce_standard=True)
    return b"\x00" * 128 + b"DICM" + meta.getvalue() + b"".join(out)
