"""The DICOM node in process: STOW-RS and C-STORE in, settling, the answer, the outbox.

The app runs on the random-init bundle with a real Storage SCP on a loopback port; results
go to a C-STORE destination on a closed port, so they stay in the outbox where the test
reads them. The same flows against a real PACS are in ``tests/test_pacs.py``.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from harness.dicom_node_support import Study, radiograph, stow_body
from harness.service_support import assert_error, free_port, make_settings, running, wait_for
from service.doors.dicom.results import read_report

STOW = "/dicom-web/studies"


@pytest.fixture(scope="module")
def views(synthetic_small: Path) -> list[np.ndarray]:
    paths = sorted((synthetic_small / "train" / "XR_ELBOW").rglob("*.png"))[:2]
    return [radiograph(p) for p in paths]


@pytest.fixture
def node_app(untrained_bundle: Path, tmp_path: Path) -> Iterator[tuple[TestClient, FastAPI, int]]:
    port = free_port()
    settings = make_settings(
        untrained_bundle,
        tmp_path,
        dicom_port=port,
        dicom_host="127.0.0.1",
        dicom_allowed_aets="ORTHANC,MODALITY",
        study_settle_s=0.5,
        results_dicom=f"NOWHERE@127.0.0.1:{free_port()}",
        delivery_retry_s=60,
    )
    with running(settings) as (client, app):
        yield client, app, port


def _pending(app: FastAPI) -> list[Path]:
    outbox = app.state.dicom_node.outbox
    return [job.folder for job in outbox.jobs()] if outbox.folder.is_dir() else []


def _report(app: FastAPI) -> tuple[dict[str, Any], list[pydicom.Dataset]]:
    (folder,) = _pending(app)
    objects = [pydicom.dcmread(p) for p in sorted(folder.glob("*.dcm"))]
    return read_report(objects[0]), objects


def _stow(client: TestClient, parts: list[bytes], **kw: Any) -> Any:
    body, content_type = stow_body(parts, **kw)
    return client.post(STOW, content=body, headers={"content-type": content_type})


def test_a_stow_study_is_answered_once_settled_like_predict_study(
    node_app: tuple[TestClient, FastAPI, int], views: list[np.ndarray]
) -> None:
    client, app, _ = node_app
    study = Study()
    first = study.add(views[0], photometric="MONOCHROME2")
    second = study.add(views[1], photometric="MONOCHROME1")
    ct = study.add(np.full((32, 32), 1000, np.uint16), modality="CT", body_part="CHEST")
    answer = _stow(client, list(study.instances.values()))
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "application/dicom+json"
    taken = answer.json()["00081199"]["Value"]
    assert [t["00081155"]["Value"][0] for t in taken] == [first, second, ct]
    assert wait_for(lambda: len(_pending(app)) == 1, timeout=60)
    report, objects = _report(app)

    # the same pixels through the API give the same finding and probability
    names = []
    for sop in (first, second):
        upload = client.post("/upload", files={"file": ("x.dcm", study.instances[sop])})
        assert upload.status_code in (200, 201), upload.text
        names.append(upload.json()["filename"])
    api = client.post("/predict/study", json={"filenames": names}).json()
    assert report["probability"] == pytest.approx(api["abnormality_probability"], abs=1e-4)
    expected = api["result"]  # one word for it at every door
    assert report["finding"] == expected
    assert report["threshold"] == pytest.approx(api["threshold"], abs=1e-6)
    assert report["body_part"] == api["bone_type"]
    assert report["model_version"] == api["model"]["version"]
    by_sop = {v["sop_instance_uid"]: v for v in report["views"]}
    assert set(by_sop) == {first, second, ct}
    assert by_sop[ct]["scored"] is False and "Modality is CT" in by_sop[ct]["reason"]
    for sop, view in zip((first, second), api["views"], strict=True):
        assert by_sop[sop]["probability"] == pytest.approx(view["abnormality_probability"], 1e-4)
    # one secondary capture per scored view, in a series of its own (Modality is a series
    # attribute: SR for the report, OT for the captures), in the source study
    captures = [o for o in objects[1:]]
    assert len(captures) == 2
    assert len({c.SeriesInstanceUID for c in captures}) == 1
    for capture in captures:
        assert capture.StudyInstanceUID == study.study_uid
        assert capture.SeriesInstanceUID != objects[0].SeriesInstanceUID
        assert capture.PatientID == "PID-0042" and capture.BurnedInAnnotation == "YES"
    assert {c.SourceImageSequence[0].ReferencedSOPInstanceUID for c in captures} == {
        first,
        second,
    }

    # recorded in the worklist like an API study, the CT slice refused with its reason
    items = client.get("/worklist").json()["items"]
    (item,) = [i for i in items if i["source"] == "dicom"]  # beside the API's own record
    assert item["refused_views"] == 1
    recorded = client.get(f"/worklist/{item['id']}").json()
    assert recorded["abnormality_probability"] == pytest.approx(report["probability"], abs=1e-9)
    rows = {v["sop_instance_uid"]: v for v in recorded["views"]}
    assert rows[ct]["refused"] and "Modality is CT" in rows[ct]["reason"]
    assert rows[first]["filename"] == names[0] and rows[first]["heatmap_url"]

    # re-sent as is: no second report; with one view more: a new one
    assert _stow(client, [study.instances[first]]).status_code == 200
    metrics = app.state.services.metrics
    before = metrics.dicom_studies.labels("answered")._value.get()
    node = app.state.dicom_node
    assert wait_for(lambda: not node.inbox.due(node.predictor.engine.model_version), timeout=30)
    wait_for(lambda: False, timeout=1.5)  # well past the settle time
    assert len(_pending(app)) == 1
    assert metrics.dicom_studies.labels("answered")._value.get() == before
    study.add(views[1], photometric="MONOCHROME2")
    assert _stow(client, [list(study.instances.values())[-1]]).status_code == 200
    assert wait_for(lambda: len(_pending(app)) == 2, timeout=60)


def test_pending_results_are_counted_in_metrics_and_ready(
    node_app: tuple[TestClient, FastAPI, int], views: list[np.ndarray]
) -> None:
    client, app, port = node_app
    study = Study()
    study.add(views[0])
    assert _stow(client, list(study.instances.values())).status_code == 200
    assert wait_for(lambda: len(_pending(app)) == 1, timeout=60)
    assert wait_for(
        lambda: (
            'bonexr_dicom_delivery_attempts_total{destination="dicom",outcome="retry"}'
            in client.get("/metrics").text
        ),
        timeout=30,
    )
    text = client.get("/metrics").text
    assert 'bonexr_dicom_deliveries_pending{destination="dicom"} 1.0' in text
    assert 'bonexr_dicom_instances_total{outcome="eligible",via="stow"} 1.0' in text
    ready = client.get("/ready").json()["dicom"]
    assert ready["listener"] == f"BONEXR@127.0.0.1:{port}"
    (destination,) = ready["destinations"]
    assert destination["name"] == "dicom" and destination["pending"] == 1
    assert "association" in destination["last_error"]
    job = json.loads((_pending(app)[0] / "job.json").read_text())
    assert job["attempts"] >= 1 and job["next_attempt"] > job.get("last", 0)


def test_c_store_from_an_allowed_ae_is_received(
    node_app: tuple[TestClient, FastAPI, int], views: list[np.ndarray]
) -> None:
    _, app, port = node_app
    study = Study()
    sop = study.add(views[0])
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context("1.2.840.10008.5.1.4.1.1.1")
    ae.add_requested_context(Verification)
    association = ae.associate("127.0.0.1", port, ae_title="BONEXR")
    assert association.is_established
    try:
        assert association.send_c_echo().Status == 0
        dataset = pydicom.dcmread(io.BytesIO(study.instances[sop]))
        assert association.send_c_store(dataset).Status == 0
    finally:
        association.release()
    record = app.state.dicom_node.inbox.get(study.study_uid)
    assert record is not None and list(record.instances) == [sop]


def test_an_ae_title_not_in_the_allowlist_is_rejected(
    node_app: tuple[TestClient, FastAPI, int],
) -> None:
    _, _, port = node_app
    ae = AE(ae_title="INTRUDER")
    ae.add_requested_context(Verification)
    association = ae.associate("127.0.0.1", port, ae_title="BONEXR")
    assert association.is_rejected and not association.is_established


def test_stow_refuses_what_is_not_a_dicom_study(
    node_app: tuple[TestClient, FastAPI, int], views: list[np.ndarray]
) -> None:
    client, app, _ = node_app
    study = Study()
    study.add(views[0])
    good = next(iter(study.instances.values()))
    body, content_type = stow_body([good])
    headers = {"content-type": content_type}
    broken = client.post(STOW, content=body[: len(body) // 2], headers=headers)
    assert_error(broken, 400)
    garbled = client.post(STOW, content=b"no boundary here", headers={"content-type": content_type})
    assert_error(garbled, 400)
    png = _stow(client, [good, b"\x89PNG\r\n\x1a\n" + b"\x00" * 200], content_type="image/png")
    assert_error(png, 415)
    fake = _stow(client, [good, b"\x00" * 300])
    assert "not a DICOM file" in assert_error(fake, 415)["detail"]
    wrong = client.post(STOW, content=body, headers={"content-type": "application/json"})
    assert_error(wrong, 415)
    # nothing of the refused requests was kept
    assert app.state.dicom_node.inbox.get(study.study_uid) is None


def test_an_instance_without_uids_fails_alone(
    node_app: tuple[TestClient, FastAPI, int], views: list[np.ndarray]
) -> None:
    client, _, _ = node_app
    study = Study()
    sop = study.add(views[0])
    dataset = pydicom.dcmread(io.BytesIO(study.instances[sop]))
    del dataset.StudyInstanceUID
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    mixed = _stow(client, [study.instances[sop], buffer.getvalue()])
    assert mixed.status_code == 202
    failed = mixed.json()["00081198"]["Value"]
    assert failed[0]["00081197"]["Value"] == [0xA900]
    alone = _stow(client, [buffer.getvalue()])
    assert alone.status_code == 409


def test_retention_removes_received_instances_but_keeps_undelivered_results(
    node_app: tuple[TestClient, FastAPI, int], views: list[np.ndarray]
) -> None:
    client, app, _ = node_app
    study = Study()
    study.add(views[0])
    assert _stow(client, list(study.instances.values())).status_code == 200
    assert wait_for(lambda: len(_pending(app)) == 1, timeout=60)
    node = app.state.dicom_node
    instances = list((node.root / "instances").iterdir())
    assert len(instances) == 1
    removed = node.sweep(3600, now=time.time() + 7200)
    assert removed >= 2  # the instance and the study record
    assert not list((node.root / "instances").iterdir())
    assert node.inbox.get(study.study_uid) is None
    assert len(_pending(app)) == 1  # the result still waits for its destination


def test_an_instance_without_pixels_is_taken_and_reported_not_eligible(
    node_app: tuple[TestClient, FastAPI, int], views: list[np.ndarray]
) -> None:
    """A key-object note or report of another system in the study: kept, never scored."""
    client, app, _ = node_app
    study = Study()
    sop = study.add(views[0])
    dataset = pydicom.dcmread(io.BytesIO(study.instances[sop]))
    del dataset.PixelData
    dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = (
        pydicom.uid.generate_uid()
    )
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    assert _stow(client, [study.instances[sop], buffer.getvalue()]).status_code == 200
    record = app.state.dicom_node.inbox.get(study.study_uid)
    assert record is not None
    refused = record.instances[str(dataset.SOPInstanceUID)]
    assert refused.filename is None and "no image" in str(refused.refusal)
    assert record.instances[sop].refusal is None and record.instances[sop].filename
