"""Studies as a PACS holds them, for the DICOM node's tests (no tests here).

Synthetic MURA radiographs written as DICOM CR instances of one study (MONOCHROME2 and
MONOCHROME1, BodyPartExamined, the patient and study modules a PACS sends), a CT slice of
the same study, STOW-RS request bodies, and ``bonexr serve`` in a subprocess with the node
on (also used by ``bench/pacs_bench.py``).
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from harness.service_support import free_port, wait_for

CR_IMAGE = "1.2.840.10008.5.1.4.1.1.1"
API_KEY = "pacs-secret"
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


class Bonexr:
    """``bonexr serve`` in a subprocess with the DICOM node on; restartable on its folders."""

    def __init__(self, models_dir: Path, root: Path, **env: str) -> None:
        self.port, self.dicom_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.env = {
            **os.environ,
            "BONEXR_MODELS_DIR": str(models_dir),
            "BONEXR_UPLOAD_DIR": str(root / "uploads"),
            "BONEXR_DICOM_DIR": str(root / "dicom"),
            "BONEXR_PORT": str(self.port),
            "BONEXR_DICOM_PORT": str(self.dicom_port),
            "BONEXR_DICOM_HOST": "127.0.0.1",
            "BONEXR_DICOM_ALLOWED_AETS": "ORTHANC",
            "BONEXR_STUDY_SETTLE_S": "1",
            "BONEXR_DELIVERY_RETRY_S": "0.5",
            "BONEXR_DELIVERY_RETRY_MAX_S": "1",
            "BONEXR_API_KEYS": API_KEY,
            "BONEXR_LOG_LEVEL": "info",
            **env,
        }
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = (self.root / "bonexr.log").open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bonexr.cli", "serve"],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        assert wait_for(self.ready, timeout=120, interval=0.2), self.log_tail()

    def ready(self) -> bool:
        try:
            return httpx.get(f"{self.url}/ready", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(30)
        self.process = None

    def log_tail(self, lines: int = 40) -> str:
        path = self.root / "bonexr.log"
        return "\n".join(path.read_text().splitlines()[-lines:]) if path.is_file() else ""

    def api(self, method: str, path: str, **kw: Any) -> httpx.Response:
        headers = {"X-API-Key": API_KEY, **kw.pop("headers", {})}
        return httpx.request(method, f"{self.url}{path}", headers=headers, timeout=60, **kw)

    def metric(self, line_start: str) -> float:
        for line in httpx.get(f"{self.url}/metrics", timeout=10).text.splitlines():
            if line.startswith(line_start):
                return float(line.rsplit(" ", 1)[1])
        return 0.0


@contextlib.contextmanager
def running(bonexr: Bonexr) -> Iterator[Bonexr]:
    bonexr.start()
    try:
        yield bonexr
    finally:
        bonexr.stop()
