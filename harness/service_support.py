"""Helpers shared by the service tests: image builders and a running-app context.

(No tests here.)
"""

from __future__ import annotations

import contextlib
import io
import re
import struct
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image

from service.doors.http.app import create_app
from service.settings import Settings

FILENAME_RE = r"^[0-9a-f]{64}\.png$"


def make_settings(untrained_bundle: Path, tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "models_dir": untrained_bundle.parent,
        "upload_dir": tmp_path / "uploads",
        "max_batch_wait_ms": 2.0,
    }
    values.update(overrides)
    return Settings(**values)


#: What must never appear in an error a client sees: object reprs, tracebacks, server
#: paths, and the names of the libraries (and so versions) behind the decoders and models.
LEAK_RE = re.compile(
    r"object at 0x|Traceback|site-packages|\.py\b"
    r"|(?:^|[\s'\"(=])/(?:tmp|home|root|work|usr|opt|var)/"
    r"|\b(?:pydicom|pylibjpeg|openjpeg|libjpeg|gdcm|PIL|Pillow|numpy|onnxruntime|uvicorn|"
    r"starlette|tensorflow|keras)\b",
    re.IGNORECASE,
)
#: Every error response the running apps answered (the hygiene test checks it saw some).
ERRORS_SEEN: list[tuple[int, str]] = []


def error_leaks(text: str) -> list[str]:
    """The internals an error body gives away (empty when clean)."""
    return [match.group(0) for match in LEAK_RE.finditer(text)]


def check_error_hygiene(response: httpx.Response) -> None:
    """httpx response hook: every 4xx/5xx body must be free of internals."""
    if response.status_code < 400:
        return
    response.read()
    ERRORS_SEEN.append((response.status_code, response.text))
    leaks = error_leaks(response.text)
    assert not leaks, f"{response.status_code} error leaks {leaks}: {response.text[:300]}"


@contextlib.contextmanager
def running(settings: Settings, *, wait: bool = True) -> Iterator[tuple[TestClient, FastAPI]]:
    """The app with its lifespan running; by default waits until the bundle settled.

    Every error the client receives is checked by :func:`check_error_hygiene`.
    """
    app = create_app(settings)
    with TestClient(app) as client:
        client.event_hooks["response"].append(check_error_hygiene)
        if wait:
            assert app.state.services.engine.wait_until_settled(60), "engine did not settle"
        yield client, app


def assert_error(response: Any, status: int) -> dict[str, Any]:
    """Exact status and the ``{"detail": "..."}`` body every error must have."""
    assert response.status_code == status, (response.status_code, response.text[:500])
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert isinstance(body.get("detail"), str) and body["detail"], body
    return body


def assert_still_serving(client: TestClient) -> None:
    assert client.get("/health").status_code == 200
    r = client.post("/upload", files={"file": ("x.png", png_bytes(32, 24, seed=99), "image/png")})
    assert r.status_code in (200, 201), r.text


# ---------------------------------------------------------------------- images


def noise(width: int, height: int, *, seed: int = 0, channels: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = (height, width, channels) if channels else (height, width)
    return rng.integers(0, 256, size=shape, dtype=np.uint8)


def encode(image: Image.Image, fmt: str = "PNG", **params: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def png_bytes(width: int = 96, height: int = 80, *, seed: int = 0) -> bytes:
    """A grayscale PNG; different seeds give different pixels (and stored names)."""
    return encode(Image.fromarray(noise(width, height, seed=seed), mode="L"))


def png16_bytes(width: int = 64, height: int = 48) -> bytes:
    ramp = np.linspace(0, 65535, width * height).reshape(height, width).astype(np.uint16)
    image = Image.fromarray(ramp)
    assert image.mode.startswith("I;16")
    return encode(image)


def rgba_png_bytes() -> bytes:
    return encode(Image.fromarray(noise(40, 30, seed=3, channels=4), mode="RGBA"))


def palette_png_bytes() -> bytes:
    rgb = Image.fromarray(noise(40, 30, seed=4, channels=3), mode="RGB")
    return encode(rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16))


def cmyk_jpeg_bytes() -> bytes:
    return encode(Image.fromarray(noise(40, 30, seed=5, channels=4), mode="CMYK"), "JPEG")


def jpeg_with_exif_bytes() -> bytes:
    image = Image.fromarray(noise(60, 40, seed=6), mode="L")
    exif = Image.Exif()
    exif[0x010E] = "PATIENT NAME: DOE^JANE"  # ImageDescription
    exif[0x013B] = "Dr. Who"  # Artist
    return encode(image, "JPEG", exif=exif.tobytes(), comment=b"secret comment")


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data))
        + kind
        + data
        + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


def huge_header_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A tiny file whose IHDR (valid CRC) claims ``width`` x ``height`` pixels."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", idat)
        + png_chunk(b"IEND", b"")
    )


def dicom_bytes(width: int = 48, height: int = 40) -> bytes:
    """A minimal 16-bit MONOCHROME2 DICOM file built with pydicom."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # digital X-ray
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("x.dcm", {}, file_meta=meta, preamble=b"\x00" * 128)
    ds.PatientName = "DOE^JANE"
    ds.Rows, ds.Columns = height, width
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelRepresentation = 0
    pixels = (np.arange(width * height).reshape(height, width) % 4096).astype(np.uint16)
    ds.PixelData = pixels.tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def wait_for(predicate: Any, timeout: float = 10.0, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


# ------------------------------------------------------------------ a real server


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def server_process(models_dir: Path, upload_dir: Path, **env: str) -> Iterator[tuple[str, Any]]:
    """``bonexr serve`` in a subprocess (a real uvicorn), ready; yields (url, process)."""
    import os
    import subprocess
    import sys

    port = free_port()
    environment = {
        **os.environ,
        "BONEXR_MODELS_DIR": str(models_dir),
        "BONEXR_UPLOAD_DIR": str(upload_dir),
        "BONEXR_PORT": str(port),
        "BONEXR_LOG_LEVEL": "warning",
        **env,
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "bonexr.cli", "serve"],
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        if not wait_for(lambda: _ready(url), timeout=60, interval=0.2):
            raise AssertionError("the server did not become ready")
        yield url, process
    finally:
        process.terminate()
        process.wait(20)


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/ready", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
