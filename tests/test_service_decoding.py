"""Hostile and clinical files through the running service (decoding issue, findings 2-8).

Each test reproduces one probe of the adversarial review: the exact status, a plain
message, nothing stored when refused, and the server still serving.
"""

from __future__ import annotations

import errno
import io
import os
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from pydicom.uid import JPEGLosslessSV1, RLELossless

from harness.service_support import (
    ERRORS_SEEN,
    assert_error,
    assert_still_serving,
    error_leaks,
    make_settings,
    png_bytes,
    running,
)
from tests.dicom_support import deflated_bomb, dicom_file, rescaled_and_raw_window


def upload(client: TestClient, data: bytes, name: str = "scan.dcm") -> httpx.Response:
    return client.post("/upload", files={"file": (name, data, "application/octet-stream")})


def stored(client: TestClient) -> list[str]:
    folder = client.app.state.services.settings.upload_dir  # type: ignore[attr-defined]
    return sorted(os.listdir(folder)) if folder.is_dir() else []


def jpeg(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def ramp(shape: tuple[int, int] = (60, 80)) -> np.ndarray:
    return (np.arange(shape[0] * shape[1]).reshape(shape) % 4096).astype(np.uint16)


# ------------------------------------------------------------------------ DICOM


def test_dicom_reports_body_part_and_nothing_else_from_the_header(client: TestClient) -> None:
    data = dicom_file(ramp(), bits_stored=12, BodyPartExamined="ELBOW")
    r = upload(client, data)
    assert r.status_code in (200, 201), r.text
    body = r.json()
    assert body["format"] == "DICOM" and body["body_part_examined"] == "ELBOW"
    assert "DOE" not in r.text and "ID-12345" not in r.text
    p = client.post("/predict", json={"filename": body["filename"]})
    assert p.status_code == 200, p.text


@pytest.mark.parametrize("syntax", [RLELossless, JPEGLosslessSV1])
def test_compressed_clinical_dicom_is_accepted(client: TestClient, syntax: str) -> None:
    plain = upload(client, dicom_file(ramp(), bits_stored=12)).json()["filename"]
    r = upload(client, dicom_file(ramp(), bits_stored=12, compress=syntax))
    assert r.status_code in (200, 201), r.text
    assert r.json()["filename"] == plain  # lossless: the very same stored pixels


def test_multi_frame_rgb_dicom_is_not_a_500(client: TestClient) -> None:
    rgb = np.random.default_rng(1).integers(0, 256, (2, 40, 48, 3), dtype=np.uint8)
    r = upload(client, dicom_file(rgb, photometric="RGB", frames=True))
    assert r.status_code in (200, 201), r.text
    assert r.json()["warnings"] == ["multi-frame DICOM (2 frames): only the first frame was used"]


def test_rescaled_and_raw_window_dicoms_store_the_same_pixels(client: TestClient) -> None:
    rescaled, raw = rescaled_and_raw_window(ramp((64, 64)))
    a, b = upload(client, rescaled).json(), upload(client, raw).json()
    assert a["filename"] == b["filename"]  # same pixels, so the same prediction
    pa = client.post("/predict", json={"filename": a["filename"]}).json()
    pb = client.post("/predict", json={"filename": b["filename"]}).json()
    assert pa["abnormality_probability"] == pb["abnormality_probability"]


def test_deflated_dicom_bomb_is_413_before_inflating(client: TestClient) -> None:
    before = stored(client)
    detail = assert_error(upload(client, deflated_bomb()), 413)["detail"]
    assert "50 frame(s) of 2048x2048" in detail and "decoded-memory budget" in detail
    assert stored(client) == before
    assert_still_serving(client)


# ------------------------------------------------------------ corrupt and truncated


def test_corrupt_jpeg_declaring_a_huge_image_is_422(client: TestClient) -> None:
    small = jpeg(np.random.default_rng(2).integers(0, 256, (64, 64), dtype=np.uint8))
    sof = small.index(b"\xff\xc0")
    forged = bytearray(small)
    forged[sof + 5 : sof + 9] = (7000).to_bytes(2, "big") * 2  # height, width
    before = stored(client)
    detail = assert_error(upload(client, bytes(forged), "x.jpg"), 422)["detail"]
    assert "incomplete" in detail
    assert stored(client) == before
    assert_still_serving(client)


@pytest.mark.parametrize("kind", ["jpeg", "png", "dicom"])
def test_truncated_files_are_422(client: TestClient, kind: str) -> None:
    rng = np.random.default_rng(3)
    data = {
        "jpeg": lambda: jpeg(rng.integers(0, 256, (120, 160), dtype=np.uint8)),
        "png": lambda: png_bytes(160, 120, seed=4),
        "dicom": lambda: dicom_file(ramp((120, 160)), bits_stored=12),
    }[kind]()
    assert_error(upload(client, data[: int(len(data) * 0.7)]), 422)
    assert_still_serving(client)


# --------------------------------------------------------------------- the request


def test_repeated_file_field_is_400(client: TestClient) -> None:
    files = [("file", ("a.png", png_bytes(seed=5), "image/png"))] * 2
    files[1] = ("file", ("b.png", png_bytes(seed=6), "image/png"))
    before = stored(client)
    detail = assert_error(client.post("/upload", files=files), 400)["detail"]
    assert "exactly one 'file'" in detail
    assert stored(client) == before


# ------------------------------------------------------------------------ store


def test_full_store_is_507_and_leaves_no_file(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_space(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    before = stored(client)
    monkeypatch.setattr(os, "fsync", no_space)
    detail = assert_error(upload(client, png_bytes(seed=7), "x.png"), 507)["detail"]
    monkeypatch.undo()
    assert "full" in detail
    assert stored(client) == before  # no partial or temp file
    assert_still_serving(client)


def test_missing_store_is_503_and_not_ready(untrained_bundle: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the upload folder should be")
    settings = make_settings(untrained_bundle, tmp_path, upload_dir=blocker / "uploads")
    with running(settings) as (client, _):
        assert "upload store" in assert_error(client.get("/ready"), 503)["detail"]
        assert client.head("/ready").status_code == 503
        detail = assert_error(upload(client, png_bytes(seed=8), "x.png"), 503)["detail"]
        assert "not writable" in detail
        assert client.get("/health").status_code == 200


def test_read_only_store_is_503_and_not_ready(
    untrained_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tempfile

    real_mkstemp = tempfile.mkstemp

    def read_only(*args: object, **kwargs: object) -> tuple[int, str]:
        if Path(str(kwargs.get("dir", ""))).name == "uploads":
            raise OSError(errno.EROFS, "Read-only file system")
        return real_mkstemp(*args, **kwargs)  # type: ignore[call-overload, no-any-return]

    with running(make_settings(untrained_bundle, tmp_path)) as (client, _):
        assert client.get("/ready").status_code == 200
        monkeypatch.setattr(tempfile, "mkstemp", read_only)
        assert "not writable" in assert_error(client.get("/ready"), 503)["detail"]
        assert_error(upload(client, png_bytes(seed=9), "x.png"), 503)
        monkeypatch.undo()
        assert client.get("/ready").status_code == 200


# ------------------------------------------------------------------ error hygiene


def test_error_scanner_catches_leaks() -> None:
    assert error_leaks("cannot identify image file <_io.BytesIO object at 0x7f3a>")
    assert error_leaks("no decoder: pylibjpeg 2.1, gdcm")
    assert error_leaks("open('/tmp/abc/x.png') failed")
    assert not error_leaks("image is 7000x7000 = 49,000,000 pixels; the limit is 50,000,000")


def test_errors_provoked_here_were_scanned(client: TestClient) -> None:
    # the hygiene hook of harness.service_support.running saw this module's errors
    assert_error(upload(client, b"\x00" * 200, "x.bin"), 415)
    statuses = {status for status, _ in ERRORS_SEEN}
    assert {400, 413, 415, 422} <= statuses, statuses


def test_dicom_body_part_disagreeing_with_the_router_is_a_warning(client: TestClient) -> None:
    codes = ramp((64, 80))
    hand = upload(client, dicom_file(codes, bits_stored=12, BodyPartExamined="HAND")).json()
    answer = client.post("/predict", json={"filename": hand["filename"]}).json()
    said = [w for w in answer["warnings"] if "BodyPartExamined" in w]
    if answer["bone_type"] == "Hand":
        assert said == []
    else:
        assert said == [
            f"{hand['filename']}: the DICOM header says BodyPartExamined HAND; "
            f"the router says {answer['bone_type']}"
        ]
    study = client.post("/predict/study", json={"filenames": [hand["filename"]]}).json()
    assert [w for w in study["warnings"] if "BodyPartExamined" in w] == said
    # the same pixels named as the routed part: no warning; the record goes with the upload
    agreeing = dicom_file(codes, bits_stored=12, BodyPartExamined=answer["bone_type"].upper())
    same = upload(client, agreeing).json()
    assert same["filename"] == hand["filename"]
    answer = client.post("/predict", json={"filename": same["filename"]}).json()
    assert not [w for w in answer["warnings"] if "BodyPartExamined" in w]
    folder = client.app.state.services.settings.upload_dir  # type: ignore[attr-defined]
    assert (folder / f"{same['filename']}.bodypart").is_file()
    assert client.delete(f"/uploads/{same['filename']}").status_code == 204
    assert not (folder / f"{same['filename']}.bodypart").exists()
