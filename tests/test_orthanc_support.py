"""The real-Orthanc harness (harness/orthanc_support.py) works: start, REST upload, QIDO-RS,
WADO-RS, C-STORE and STOW-RS to a second Orthanc, start-failure reporting, port retry.

Tests of the harness only. Skipped where Orthanc or its DICOMweb plugin is missing, except
under ``CI=1``, where that is a failure (the CI image installs them on purpose).
"""

from __future__ import annotations

import io
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from harness import orthanc_support
from harness.orthanc_support import Orthanc, orthanc_missing_reason, start_orthanc, stop_all

CR_SOP_CLASS = UID("1.2.840.10008.5.1.4.1.1.1")  # Computed Radiography Image Storage


def _require_orthanc() -> None:
    reason = orthanc_missing_reason()
    if reason is None:
        return
    if os.environ.get("CI") == "1":
        pytest.fail(f"CI=1 but the Orthanc harness cannot run: {reason}")
    pytest.skip(reason)


def make_cr(series_description: str = "harness check") -> tuple[bytes, Dataset]:
    """A tiny, valid CR file (32x32 uint16, MONOCHROME2, explicit VR little endian)."""
    pixels = (np.arange(32 * 32, dtype=np.uint16).reshape(32, 32) * 37) % 4096
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CR_SOP_CLASS
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CR_SOP_CLASS
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientName = "Harness^Test"
    ds.PatientID = "HARNESS-1"
    ds.Modality = "CR"
    ds.SeriesDescription = series_description
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue(), ds


@pytest.fixture(scope="module")
def launched() -> Iterator[list[Orthanc]]:
    """Every server this module starts, stopped together at the end (one ~3.5 s shutdown)."""
    _require_orthanc()
    servers: list[Orthanc] = []
    try:
        yield servers
    finally:
        stop_all(*servers)
        leaked = [s.process.pid for s in servers if s.process.poll() is None]
        assert not leaked, f"Orthanc processes still running: {leaked}"


@pytest.fixture(scope="module")
def peer(launched: list[Orthanc], tmp_path_factory: pytest.TempPathFactory) -> Orthanc:
    """The receiving end: a second Orthanc with AET PEER."""
    server = start_orthanc(tmp_path_factory.mktemp("orthanc-peer"), aet="PEER")
    launched.append(server)
    return server


@pytest.fixture(scope="module")
def pacs(
    launched: list[Orthanc], peer: Orthanc, tmp_path_factory: pytest.TempPathFactory
) -> Orthanc:
    """The Orthanc under test, with the peer registered at start (config file route)."""
    server = start_orthanc(
        tmp_path_factory.mktemp("orthanc-pacs"),
        modalities={"PEER": ("PEER", "127.0.0.1", peer.dicom_port)},
        dicomweb_servers={"PEER": {"Url": peer.dicomweb}},
    )
    launched.append(server)
    return server


def _sop_uids(server: Orthanc, study_uid: str) -> set[str]:
    return {item["SOPInstanceUID"] for item in server.study_instances(study_uid)}


def test_started_server_is_private_and_configured(pacs: Orthanc) -> None:
    system = pacs.get("/system")
    assert system["DicomAet"] == "ORTHANC" == pacs.aet
    assert system["HttpPort"] == pacs.http_port
    assert system["DicomPort"] == pacs.dicom_port
    assert pacs.url == f"http://127.0.0.1:{pacs.http_port}"
    assert pacs.dicomweb == pacs.url + "/dicom-web"
    assert (pacs.root / "orthanc.json").is_file()
    assert (pacs.root / "db").is_dir()
    assert "Orthanc has started" in pacs.log_tail(200)
    assert pacs.get("/modalities") == ["PEER"]
    assert pacs.get("/dicom-web/servers") == ["PEER"]


def test_upload_then_qido_and_wado(pacs: Orthanc) -> None:
    data, ds = make_cr("qido wado")
    orthanc_id = pacs.upload(data)
    assert pacs.get(f"/instances/{orthanc_id}")["MainDicomTags"]["SOPInstanceUID"] == (
        ds.SOPInstanceUID
    )
    assert pacs.upload(data) == orthanc_id  # "AlreadyStored" is not an error

    found = pacs.study_instances(ds.StudyInstanceUID)
    assert len(found) == 1, found
    item = found[0]
    assert item["SOPInstanceUID"] == ds.SOPInstanceUID
    assert item["SOPClassUID"] == CR_SOP_CLASS
    assert item["SeriesInstanceUID"] == ds.SeriesInstanceUID
    assert item["Modality"] == "CR"
    assert item["SeriesDescription"] == "qido wado"
    assert pacs.study_instances(generate_uid()) == []

    back = pacs.retrieve_instance(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    assert back.SOPInstanceUID == ds.SOPInstanceUID
    assert back.PatientName == "Harness^Test"
    np.testing.assert_array_equal(back.pixel_array, ds.pixel_array)
    # The harness's Accept fix keeps QIDO from logging a spurious error per query.
    assert "Unsupported return MIME type" not in pacs.log_tail(500)


def test_c_store_to_modality_reaches_peer(pacs: Orthanc, peer: Orthanc) -> None:
    data, ds = make_cr("c-store")
    orthanc_id = pacs.upload(data)
    assert _sop_uids(peer, ds.StudyInstanceUID) == set()

    answer = pacs.send_to_modality("PEER", [orthanc_id])
    assert answer["InstancesCount"] == 1, answer
    assert answer["FailedInstancesCount"] == 0, answer
    assert _sop_uids(peer, ds.StudyInstanceUID) == {ds.SOPInstanceUID}, peer.log_tail()

    # The run-time route (PUT /modalities/{name}), checked with a C-ECHO.
    pacs.set_modality("PEER-RT", "PEER", "127.0.0.1", peer.dicom_port)
    assert pacs.get("/modalities/PEER-RT/configuration")["Port"] == peer.dicom_port
    assert pacs.client.post("/modalities/PEER-RT/echo", json={}).status_code == 200


def test_stow_to_dicomweb_server_reaches_peer(pacs: Orthanc, peer: Orthanc) -> None:
    data, ds = make_cr("stow")
    orthanc_id = pacs.upload(data)
    study_id = pacs.get(f"/instances/{orthanc_id}/study")["ID"]
    assert _sop_uids(peer, ds.StudyInstanceUID) == set()

    # The run-time route (PUT /dicom-web/servers/{name}), with a header as an API key would be.
    pacs.set_dicomweb_server("PEER-RT", peer.dicomweb, headers={"X-API-Key": "not-checked"})
    servers = pacs.get("/dicom-web/servers?expand")
    assert servers["PEER-RT"]["Url"] == peer.dicomweb + "/"
    assert servers["PEER-RT"]["HttpHeaders"] == ["X-API-Key"]  # names only: values are secret
    assert servers["PEER"]["Url"] == peer.dicomweb + "/"
    answer = pacs.stow_to_server("PEER-RT", [study_id])
    assert int(answer["InstancesCount"]) == 1, answer  # the plugin answers a string
    assert _sop_uids(peer, ds.StudyInstanceUID) == {ds.SOPInstanceUID}, peer.log_tail()

    # ...and the server registered in the start-time config, by instance id.
    data2, ds2 = make_cr("stow 2")
    pacs.stow_to_server("PEER", [pacs.upload(data2)])
    assert _sop_uids(peer, ds2.StudyInstanceUID) == {ds2.SOPInstanceUID}, peer.log_tail()


def test_start_failure_reports_the_log(launched: list[Orthanc], tmp_path: Path) -> None:
    """A configuration Orthanc rejects (a modality without host and port): a clear error
    carrying Orthanc's own reason from the log, after a single attempt."""
    try:
        server = start_orthanc(
            tmp_path / "broken",
            config_overrides={"DicomModalities": {"BAD": ["ONLY-AET"]}},
            timeout=30,
        )
    except RuntimeError as exc:
        message = str(exc)
    else:
        launched.append(server)
        pytest.fail("Orthanc started with a malformed DicomModalities entry")
    assert "Orthanc exited with status" in message
    assert "log tail" in message
    assert "Bad file format" in message  # Orthanc's words, from the log
    log = (tmp_path / "broken" / "orthanc.log").read_text()
    assert "=== attempt 2" not in log  # only port collisions are retried


def test_port_collision_is_retried(
    launched: list[Orthanc], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first attempt gets a DICOM port another socket holds; the harness retries."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy_port = taken.getsockname()[1]
        real_free_port = orthanc_support._free_port
        handed_out: list[int] = []

        def rigged() -> int:
            # Second call of the first attempt: the DICOM port (its bind fails before the
            # HTTP server starts, so that attempt ends in ~0.5 s rather than ~1.5 s).
            port = busy_port if len(handed_out) == 1 else real_free_port()
            handed_out.append(port)
            return port

        monkeypatch.setattr(orthanc_support, "_free_port", rigged)
        server = start_orthanc(tmp_path / "retry", timeout=30)
        launched.append(server)
    assert busy_port not in (server.http_port, server.dicom_port)
    assert len(handed_out) == 4  # two ports per attempt, two attempts
    log = server.log_path.read_text()
    assert "=== attempt 2" in log
    assert "The TCP port of the DICOM server is privileged or already in use" in log
