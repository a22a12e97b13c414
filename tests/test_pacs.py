"""bonexr as an AI node beside a real PACS: Debian's Orthanc on loopback.

Synthetic studies (two CR views, MONOCHROME2 and MONOCHROME1, plus a CT slice) are stored
in Orthanc, then sent to a real ``bonexr serve`` by C-STORE (``/modalities/{name}/store``)
and by DICOMweb (``/dicom-web/servers/{name}/stow``). The test finds bonexr's report and
heat maps in the same study in Orthanc (QIDO-RS), reads the report with highdicom, checks
it against ``/predict/study`` for the same pixels and validates every object with
``dciodvfy``. Then the faults: the PACS down while results are produced (delivered once
it is back, exactly once), bonexr restarted with a delivery pending, and the same
instances sent twice.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pydicom
import pytest

from harness.dicom_node_support import API_KEY, Bonexr, Study, radiograph, running, stow_body
from harness.orthanc_support import Orthanc, orthanc_missing_reason, start_orthanc, stop_all
from harness.service_support import wait_for
from service.doors.dicom.results import RESULTS_SERIES_DESCRIPTION, read_report

SR_MODALITY = "SR"


@pytest.fixture(scope="module", autouse=True)
def _needs_orthanc() -> None:
    reason = orthanc_missing_reason()
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(f"CI provides Orthanc (make test installs it): {reason}")
        pytest.skip(reason)


@pytest.fixture(scope="module")
def views(synthetic_small: Path) -> list[np.ndarray]:
    paths = sorted((synthetic_small / "train" / "XR_ELBOW").rglob("*.png"))[2:4]
    return [radiograph(p) for p in paths]


def make_study(views: list[np.ndarray]) -> tuple[Study, list[str], str]:
    study = Study()
    scored = [
        study.add(views[0], photometric="MONOCHROME2"),
        study.add(views[1], photometric="MONOCHROME1"),
    ]
    ct = study.add(np.full((48, 48), 1200, np.uint16), modality="CT", body_part="CHEST")
    return study, scored, ct


def results_in(orthanc: Orthanc, study_uid: str) -> list[dict[str, Any]]:
    return [
        i
        for i in orthanc.study_instances(study_uid)
        if i.get("SeriesDescription") == RESULTS_SERIES_DESCRIPTION
    ]


def wait_for_results(orthanc: Orthanc, study_uid: str, count: int, timeout: float = 90) -> float:
    """Seconds until ``count`` result objects are in the study (fails past ``timeout``)."""
    started = time.monotonic()
    assert wait_for(lambda: len(results_in(orthanc, study_uid)) >= count, timeout, 0.1), (
        f"{len(results_in(orthanc, study_uid))} of {count} result objects after {timeout} s\n"
        f"{orthanc.log_tail()}"
    )
    return time.monotonic() - started


def dciodvfy_errors(dataset: pydicom.Dataset, path: Path) -> list[str]:
    binary = shutil.which("dciodvfy")
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("CI provides dciodvfy (dicom3tools)")
        pytest.skip("dciodvfy (Debian dicom3tools) is not installed")
    dataset.save_as(path, enforce_file_format=True)
    done = subprocess.run([binary, str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (done.stdout + done.stderr).splitlines() if "Error" in line]


def check_results(
    orthanc: Orthanc,
    bonexr: Bonexr,
    study: Study,
    scored: list[str],
    ct: str,
    tmp_path: Path,
) -> dict[str, Any]:
    """The report and captures in the study say what ``/predict/study`` says."""
    found = results_in(orthanc, study.study_uid)
    reports = [i for i in found if i["Modality"] == SR_MODALITY]
    captures = [i for i in found if i["Modality"] != SR_MODALITY]
    assert len(reports) == 1 and len(captures) == 2, found
    sr = orthanc.retrieve_instance(
        study.study_uid, reports[0]["SeriesInstanceUID"], reports[0]["SOPInstanceUID"]
    )
    report = read_report(sr)

    names = []
    for sop in scored:
        upload = bonexr.api("POST", "/upload", files={"file": ("x.dcm", study.instances[sop])})
        assert upload.status_code in (200, 201), upload.text
        names.append(upload.json()["filename"])
    api = bonexr.api("POST", "/predict/study", json={"filenames": names}).json()
    assert report["probability"] == pytest.approx(api["abnormality_probability"], abs=1e-4)
    assert report["finding"] == api["result"]
    assert report["body_part"] == api["bone_type"]
    assert report["model_version"] == api["model"]["version"]
    assert report["not_for_diagnosis"] and "NOT FOR DIAGNOSIS" in report["not_for_diagnosis"]

    in_pacs = {i["SOPInstanceUID"] for i in orthanc.study_instances(study.study_uid)}
    views = {v["sop_instance_uid"]: v for v in report["views"]}
    assert set(views) == {*scored, ct} and set(views) <= in_pacs
    assert views[ct]["scored"] is False and "not eligible" in views[ct]["reason"]
    for item in sr.get("CurrentRequestedProcedureEvidenceSequence", []):
        for series in item.ReferencedSeriesSequence:
            for ref in series.ReferencedSOPSequence:
                assert ref.ReferencedSOPInstanceUID in in_pacs
    assert sr.PatientID == "PID-0042" and sr.AccessionNumber == "ACC-77"

    assert dciodvfy_errors(sr, tmp_path / "report.dcm") == []
    for number, item in enumerate(captures):
        capture = orthanc.retrieve_instance(
            study.study_uid, item["SeriesInstanceUID"], item["SOPInstanceUID"]
        )
        assert capture.SourceImageSequence[0].ReferencedSOPInstanceUID in scored
        assert dciodvfy_errors(capture, tmp_path / f"capture{number}.dcm") == []
    return report


def test_c_store_in_stow_back_into_the_same_study(
    untrained_bundle: Path, views: list[np.ndarray], tmp_path: Path
) -> None:
    orthanc = start_orthanc(tmp_path / "orthanc")
    bonexr = Bonexr(
        untrained_bundle.parent,
        tmp_path / "bonexr",
        BONEXR_RESULTS_DICOMWEB_URL=orthanc.dicomweb,
    )
    try:
        with running(bonexr):
            orthanc.set_modality("bonexr", "BONEXR", "127.0.0.1", bonexr.dicom_port)
            study, scored, ct = make_study(views)
            ids = [orthanc.upload(data) for data in study.instances.values()]
            started = time.monotonic()
            sent = orthanc.send_to_modality("bonexr", ids)
            assert sent.get("FailedInstancesCount", 0) == 0, sent
            wait_for_results(orthanc, study.study_uid, 3)
            print(f"\nC-STORE to report in the PACS: {time.monotonic() - started:.1f} s")
            check_results(orthanc, bonexr, study, scored, ct, tmp_path)
            # sent again, the same instances: no second report
            assert orthanc.send_to_modality("bonexr", ids).get("FailedInstancesCount", 0) == 0
            assert wait_for(
                lambda: bonexr.metric('bonexr_dicom_instances_total{outcome="eligible"') >= 4, 30
            )
            time.sleep(3)  # settle (1 s) and a delivery would have happened by now
            assert len(results_in(orthanc, study.study_uid)) == 3
        # the node's log names no patient and no study UID (it says a hash of the UID)
        log = bonexr.log_tail(100_000)
        assert "study " in log and " answered: " in log  # it did log the study
        for identifier in ("DOE^JANE", "DOE", "PID-0042", "ACC-77", study.study_uid):
            assert identifier not in log, identifier
    finally:
        bonexr.stop()
        stop_all(orthanc)


def test_stow_in_c_store_back_behind_an_api_key(
    untrained_bundle: Path, views: list[np.ndarray], tmp_path: Path
) -> None:
    orthanc = start_orthanc(tmp_path / "orthanc")
    bonexr = Bonexr(
        untrained_bundle.parent,
        tmp_path / "bonexr",
        BONEXR_RESULTS_DICOM=f"ORTHANC@127.0.0.1:{orthanc.dicom_port}",
    )
    try:
        with running(bonexr):
            study, scored, ct = make_study(views)
            ids = [orthanc.upload(data) for data in study.instances.values()]
            orthanc.set_dicomweb_server("bonexr", f"{bonexr.url}/dicom-web")
            with pytest.raises(httpx.HTTPStatusError):  # no key: refused
                orthanc.stow_to_server("bonexr", ids)
            orthanc.set_dicomweb_server(
                "bonexr", f"{bonexr.url}/dicom-web", headers={"X-API-Key": API_KEY}
            )
            started = time.monotonic()
            orthanc.stow_to_server("bonexr", ids)
            wait_for_results(orthanc, study.study_uid, 3)
            print(f"\nSTOW-RS to report in the PACS: {time.monotonic() - started:.1f} s")
            check_results(orthanc, bonexr, study, scored, ct, tmp_path)
    finally:
        bonexr.stop()
        stop_all(orthanc)


def test_results_wait_for_a_pacs_that_is_down_and_survive_a_restart(
    untrained_bundle: Path, views: list[np.ndarray], tmp_path: Path
) -> None:
    """The PACS goes down before the study is answered: the results wait on disk, retried;
    bonexr is restarted meanwhile; the PACS comes back and gets them once."""
    pacs_root = tmp_path / "pacs"
    pacs = start_orthanc(pacs_root)
    ports = (pacs.http_port, pacs.dicom_port)
    bonexr = Bonexr(
        untrained_bundle.parent,
        tmp_path / "bonexr",
        BONEXR_RESULTS_DICOMWEB_URL=pacs.dicomweb,
    )
    study, scored, ct = make_study(views)
    ids = [pacs.upload(data) for data in study.instances.values()]
    pacs.stop()  # down: the node answers, cannot deliver
    pending = 'bonexr_dicom_deliveries_pending{destination="dicomweb"}'
    try:
        with running(bonexr):
            body = stow_body(list(study.instances.values()))
            stored = bonexr.api("POST", "/dicom-web/studies", content=body[0],
                                headers={"content-type": body[1]})  # fmt: skip
            assert stored.status_code == 200, stored.text
            assert wait_for(lambda: bonexr.metric(pending) == 1, 60), bonexr.log_tail()
            retry = 'bonexr_dicom_delivery_attempts_total{destination="dicomweb",outcome="retry"}'
            assert wait_for(lambda: bonexr.metric(retry) >= 2, 30), bonexr.log_tail()
            status = bonexr.api("GET", "/ready").json()["dicom"]["destinations"][0]
            assert status["pending"] == 1 and "unreachable" in status["last_error"]
        # restarted with the delivery pending, the PACS still down
        with running(bonexr):
            assert bonexr.metric(pending) == 1
            pacs = start_orthanc(pacs_root, ports=ports)
            wait_for_results(pacs, study.study_uid, 3)
            assert wait_for(lambda: bonexr.metric(pending) == 0, 30)
            delivered = "bonexr_dicom_delivery_attempts_total{"
            assert bonexr.metric(delivered + 'destination="dicomweb",outcome="delivered"}') == 1
            time.sleep(2)
            check_results(pacs, bonexr, study, scored, ct, tmp_path)
        assert ids  # the originals were in the PACS all along (its storage survived)
    finally:
        bonexr.stop()
        stop_all(pacs)


AUTOROUTE = Path(__file__).resolve().parents[1] / "deploy" / "orthanc" / "bonexr-autoroute.lua"


def test_orthanc_auto_routes_new_radiograph_studies_with_the_documented_lua(
    untrained_bundle: Path, views: list[np.ndarray], tmp_path: Path
) -> None:
    """The Lua script of docs/dicom.md, as shipped: a study stored in Orthanc is routed to
    bonexr once stable (CR/DX series only), answered, and the results coming back do not
    start a loop (the study turns stable again; the same radiographs give no new report)."""
    bonexr = Bonexr(untrained_bundle.parent, tmp_path / "bonexr")
    orthanc = start_orthanc(
        tmp_path / "orthanc",
        modalities={"bonexr": ("BONEXR", "127.0.0.1", bonexr.dicom_port)},
        config_overrides={"LuaScripts": [str(AUTOROUTE)], "StableAge": 1},
    )
    bonexr.env["BONEXR_RESULTS_DICOMWEB_URL"] = orthanc.dicomweb
    try:
        with running(bonexr):
            study, scored, _ = make_study(views)
            for data in study.instances.values():
                orthanc.upload(data)
            wait_for_results(orthanc, study.study_uid, 3)
            report = read_report(
                orthanc.retrieve_instance(
                    study.study_uid,
                    *next(
                        (i["SeriesInstanceUID"], i["SOPInstanceUID"])
                        for i in results_in(orthanc, study.study_uid)
                        if i["Modality"] == SR_MODALITY
                    ),
                )
            )
            # the CT series is not routed: the report names the two radiographs only
            assert {v["sop_instance_uid"] for v in report["views"]} == set(scored)
            # the results made the study stable again: re-routed, no second report
            routed = 'bonexr_dicom_instances_total{outcome="eligible",via="c-store"}'
            assert wait_for(lambda: bonexr.metric(routed) >= 4, 30), orthanc.log_tail()
            time.sleep(3)
            assert len(results_in(orthanc, study.study_uid)) == 3
            assert "bonexr auto-routing" in orthanc.log_path.read_text()
    finally:
        bonexr.stop()
        stop_all(orthanc)
