"""Studies as a PACS holds them, for the DICOM node's tests (no tests here).

Synthetic MURA radiographs written as DICOM CR instances of one study (MONOCHROME2 and
MONOCHROME1, BodyPartExamined, the patient and study modules a PACS sends), a CT slice of
the same study, and STOW-RS request bodies.
"""

from __future__ import annotations

import io
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

CR_IMAGE = "1.2.840.10008.5.1.4.1.1.1"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"


@dataclass
class Study:
    """One study's UIDs and its instances (Part 10 bytes, by SOP Instance UID)."""

    study_uid: str = field(default_factory=generate_uid)
    series_uid: str = field(default_factory=generate_uid)
    instances: dict[str, bytes] = field(default_factory=dict)
    pixels: dict[str, np.ndarray] = field(default_factory=dict)
    other_series: str = field(default_factory=generate_uid)

    def add(
        self,
        pixels: np.ndarray,
        *,
        photometric: str = "MONOCHROME2",
        modality: str = "CR",
        body_part: str | None = "ELBOW",
    ) -> str:
        number = len(self.instances) + 1
        data, sop_uid = instance(
            pixels,
            study_uid=self.study_uid,
            series_uid=self.series_uid if modality == "CR" else self.other_series,
            number=number,
            photometric=photometric,
            modality=modality,
            body_part=body_part,
        )
        self.instances[sop_uid] = data
        self.pixels[sop_uid] = pixels
        return sop_uid


def instance(
    pixels: np.ndarray,
    *,
    study_uid: str,
    series_uid: str,
    number: int,
    photometric: str = "MONOCHROME2",
    modality: str = "CR",
    body_part: str | None = "ELBOW",
) -> tuple[bytes, str]:
    """A CR (or, with ``modality="CT"``, a CT) instance of 12-bit ``pixels`` (uint16;
    MONOCHROME1 stores them inverted, as such a detector would)."""
    sop_class = CT_IMAGE if modality == "CT" else CR_IMAGE
    sop_uid = generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("x.dcm", {}, file_meta=meta, preamble=b"\x00" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, sop_uid
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
    ds.PatientName, ds.PatientID = "DOE^JANE", "PID-0042"
    ds.PatientBirthDate, ds.PatientSex = "19700101", "F"
    ds.StudyDate, ds.StudyTime, ds.StudyID = "20261204", "101500", "1"
    ds.AccessionNumber, ds.ReferringPhysicianName = "ACC-77", "REF^DOC"
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = modality, 1, number
    if body_part:
        ds.BodyPartExamined = body_part
    ds.Laterality = "L"
    ds.PatientOrientation = ""
    codes = np.asarray(pixels, dtype=np.uint16)
    if photometric == "MONOCHROME1":
        codes = (4095 - codes).astype(np.uint16)
    ds.Rows, ds.Columns = codes.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    if modality == "CT":
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
    ds.PixelData = np.ascontiguousarray(codes).tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue(), sop_uid


def radiograph(path: Path) -> np.ndarray:
    """A synthetic MURA PNG as 12-bit detector codes (MONOCHROME2 sense)."""
    with Image.open(path) as image:
        grey = np.asarray(image.convert("L"), dtype=np.uint16)
    return (grey * 16).astype(np.uint16)


def stow_body(parts: list[bytes], *, content_type: str = "application/dicom") -> tuple[bytes, str]:
    """A STOW-RS request body and its Content-Type header."""
    boundary = uuid.uuid4().hex
    chunks = []
    for data in parts:
        chunks.append(f"--{boundary}\r\nContent-Type: {content_type}\r\n\r\n".encode())
        chunks.append(data + b"\r\n")
    chunks.append(f"--{boundary}--\r\n".encode())
    header = f'multipart/related; type="application/dicom"; boundary={boundary}'
    return b"".join(chunks), header
