"""The hospital-facing surfaces under attack and failure (issue 37's probe, as tests):
results counted delivered only when the PACS stored them, roles for destructive actions,
secrets never shown, intake judged per instance, exports that a spreadsheet cannot run,
cursors that cannot crash a page."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydantic import ValidationError
from pydicom.dataset import Dataset

from harness.dicom_node_support import Study, stow_body
from harness.service_support import assert_error, make_settings, running
from service.doors.dicom.destinations import check_stow_answer, without_credentials
from service.doors.dicom.outbox import DeliveryError
from service.settings import Settings

KEYS = "alice:key-a,bob:key-b,pacs:key-p"
ALICE, BOB, PACS = ({"X-API-Key": k} for k in ("key-a", "key-b", "key-p"))


def _answer(referenced: list[str], failed: list[str] = ()) -> Dataset:  # type: ignore[assignment]
    """A STOW-RS answer as dicomweb-client returns it."""
    answer = Dataset()
    for keyword, uids in (("ReferencedSOPSequence", referenced), ("FailedSOPSequence", failed)):
        items = []
        for uid in uids:
            item = Dataset()
            item.ReferencedSOPInstanceUID = uid
            items.append(item)
        if items:
            setattr(answer, keyword, items)
    return answer


def test_a_stow_answer_that_stored_nothing_is_not_delivered() -> None:
    """The probe's Orthanc answered 200 with both sequences empty and stored nothing."""
    check_stow_answer(_answer(["1.2.3", "1.2.4"]), ["1.2.3", "1.2.4"])
    with pytest.raises(DeliveryError) as silent:
        check_stow_answer(_answer([]), ["1.2.3", "1.2.4"])
    assert silent.value.permanent and "2 of 2" in silent.value.detail
    with pytest.raises(DeliveryError) as partly:
        check_stow_answer(_answer(["1.2.3"]), ["1.2.3", "1.2.4"])
    assert partly.value.permanent and "1 of 2" in partly.value.detail
    with pytest.raises(DeliveryError) as listed:
        check_stow_answer(_answer(["1.2.3"], failed=["1.2.4"]), ["1.2.3", "1.2.4"])
    assert not listed.value.permanent  # a listed failure may be "out of resources": retried


def test_the_pacs_credential_is_never_shown(untrained_bundle: Path, tmp_path: Path) -> None:
    url = "http://pacs-user:s3cret-pass@127.0.0.1:9/dicom-web"
    assert without_credentials(url) == "http://***@127.0.0.1:9/dicom-web"
    assert without_credentials("http://pacs:8042/dicom-web") == "http://pacs:8042/dicom-web"
    settings = make_settings(
        untrained_bundle, tmp_path, dicom_dir=tmp_path / "dicom", results_dicomweb_url=url
    )
    with running(settings) as (client, _):
        shown = client.get("/ready").text + client.get("/metrics").text
    assert "s3cret-pass" not in shown and "pacs-user" not in shown
    assert "***@127.0.0.1:9" in shown


def _keyed(untrained_bundle: Path, tmp_path: Path) -> Settings:
    return make_settings(
        untrained_bundle,
        tmp_path,
        api_keys=KEYS,
        admin_keys="alice",
        integration_keys="pacs",
        dicom_dir=tmp_path / "dicom",
    )


def _recorded(client: object, headers: dict[str, str]) -> str:
    from harness.service_support import png_bytes

    upload = client.post("/upload", files={"file": ("x.png", png_bytes(seed=3))}, headers=headers)  # type: ignore[attr-defined]
    name = upload.json()["filename"]
    answer = client.post("/predict/study", json={"filenames": [name]}, headers=headers)  # type: ignore[attr-defined]
    return str(answer.json()["record_id"])


def test_only_an_admin_deletes_and_an_integration_key_only_sends(
    untrained_bundle: Path, tmp_path: Path
) -> None:
    with running(_keyed(untrained_bundle, tmp_path)) as (client, _):
        study = _recorded(client, BOB)
        body = assert_error(client.delete(f"/worklist/{study}", headers=BOB), 403)
        assert body["code"] == "forbidden"
        assert client.get(f"/worklist/{study}", headers=BOB).status_code == 200  # still there
        for path in ("/worklist", f"/worklist/{study}", "/worklist/export.csv", "/audit"):
            assert assert_error(client.get(path, headers=PACS), 403)["code"] == "forbidden"
        # the integration key reaches the STOW-RS door (a body that is not DICOM: 415, not 403)
        sent = client.post(
            "/dicom-web/studies", content=b"x", headers={**PACS, "content-type": "text/plain"}
        )
        assert sent.status_code == 415
        assert client.delete(f"/worklist/{study}", headers=ALICE).status_code == 204
        actions = [
            (e["key_name"], e["action"], e["outcome"])
            for e in client.get("/audit", headers=ALICE).json()["items"]
        ]
        assert ("bob", "delete", "403") in actions and ("alice", "delete", "ok") in actions


@pytest.mark.parametrize(
    ("keys", "roles", "message"),
    [
        ("alice:k1,alice:k2", {}, "names a key twice"),
        ("alice:k1,bob:k1", {}, "the same key"),
        ("alice:k1", {"admin_keys": "mallory"}, "names no key"),
        ("alice:k1", {"integration_keys": "nobody"}, "names no key"),
        ("alice:k1", {"admin_keys": "alice", "integration_keys": "alice"}, "both admin"),
    ],
)
def test_keys_are_checked_at_start(keys: str, roles: dict[str, str], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Settings(api_keys=keys, **roles)


def test_the_export_neutralises_formulas_in_review_notes(
    untrained_bundle: Path, tmp_path: Path
) -> None:
    note = '=HYPERLINK("http://evil.example","click")'
    with running(_keyed(untrained_bundle, tmp_path)) as (client, _):
        study = _recorded(client, ALICE)
        review = {"reader_result": "normal", "note": note}
        assert client.post(f"/worklist/{study}/review", json=review, headers=ALICE).is_success
        exported = client.get("/worklist/export.csv", headers=ALICE).text
    (row,) = list(csv.DictReader(io.StringIO(exported)))
    assert row["note"] == "'" + note  # shown as text, never run


@pytest.mark.parametrize(
    "cursor",
    [
        "²",  # a digit to str.isdigit, not to int()
        "9" * 18 + "0",  # past SQLite's integers
    ],
)
def test_crafted_audit_cursors_are_400(untrained_bundle: Path, tmp_path: Path, cursor: str) -> None:
    with running(_keyed(untrained_bundle, tmp_path)) as (client, _):
        body = assert_error(client.get("/audit", params={"cursor": cursor}, headers=ALICE), 400)
    assert body["code"] == "invalid_cursor"


def test_crafted_worklist_cursors_are_400(untrained_bundle: Path, tmp_path: Path) -> None:
    import base64
    import json

    def cursor(key: list[object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(key).encode()).decode().rstrip("=")

    crafted = [
        cursor([10**40, 0.5, "2026-01-01T00:00:00", "x"]),  # overflows the database
        cursor([0, 1e308 * 10, "2026-01-01T00:00:00", "x"]),  # infinity
        cursor([0, 0.5, "not a time", "x"]),
    ]
    with running(_keyed(untrained_bundle, tmp_path)) as (client, _):
        for value in crafted:
            body = assert_error(
                client.get("/worklist", params={"cursor": value}, headers=ALICE), 400
            )
            assert body["code"] == "invalid_cursor"


def test_stow_refuses_a_huge_header_per_instance_and_takes_the_rest(
    untrained_bundle: Path, tmp_path: Path
) -> None:
    """The probe's 60000 x 60000 header answered 413 for the whole request."""
    study = Study()
    good = [study.add(np.full((64, 64), v, np.uint16)) for v in (500, 900)]
    huge = pydicom.dcmread(io.BytesIO(study.instances[good[1]]))
    huge.Rows = huge.Columns = 60000
    huge.SOPInstanceUID = pydicom.uid.generate_uid()  # (good[1] + ".9" is over 64 characters)
    buffer = io.BytesIO()
    huge.save_as(buffer, enforce_file_format=True)
    parts = [study.instances[good[0]], buffer.getvalue(), study.instances[good[1]]]
    body, content_type = stow_body(parts)
    with running(make_settings(untrained_bundle, tmp_path, dicom_dir=tmp_path / "d")) as (
        client,
        _,
    ):
        answer = client.post(
            "/dicom-web/studies", content=body, headers={"content-type": content_type}
        )
    assert answer.status_code == 202, answer.text
    payload = answer.json()
    assert [t["00081155"]["Value"][0] for t in payload["00081199"]["Value"]] == good
    (failed,) = payload["00081198"]["Value"]
    assert failed["00081155"]["Value"] == [huge.SOPInstanceUID]
    assert failed["00081197"]["Value"] == [0xC000]


def test_the_report_and_the_captures_are_separate_series(
    untrained_bundle: Path, tmp_path: Path, synthetic_small: Path
) -> None:
    """Modality is a series attribute: the SR (SR) and the captures (OT) may not share one."""
    from harness.dicom_node_support import radiograph
    from harness.service_support import free_port, wait_for

    paths = sorted((synthetic_small / "train" / "XR_HAND").rglob("*.png"))[:2]
    study = Study()
    for path in paths:
        study.add(radiograph(path))
    settings = make_settings(
        untrained_bundle,
        tmp_path,
        dicom_port=free_port(),
        dicom_host="127.0.0.1",
        study_settle_s=0.3,
        results_dicom=f"NOWHERE@127.0.0.1:{free_port()}",
        delivery_retry_s=60,
    )
    body, content_type = stow_body(list(study.instances.values()))
    with running(settings) as (client, app):
        client.post("/dicom-web/studies", content=body, headers={"content-type": content_type})
        outbox = app.state.dicom_node.outbox
        assert wait_for(lambda: outbox.folder.is_dir() and len(list(outbox.jobs())) == 1, 60)
        (job,) = outbox.jobs()
        objects = [pydicom.dcmread(p) for p in sorted(job.folder.glob("*.dcm"))]
    by_series: dict[str, set[str]] = {}
    for item in objects:
        by_series.setdefault(str(item.SeriesInstanceUID), set()).add(str(item.Modality))
    assert sorted(map(sorted, by_series.values())) == [["OT"], ["SR"]]
    assert len(objects) == 3  # the report and one capture per scored view


def test_deleting_an_upload_is_audited(untrained_bundle: Path, tmp_path: Path) -> None:
    from harness.service_support import png_bytes

    with running(_keyed(untrained_bundle, tmp_path)) as (client, _):
        upload = client.post("/upload", files={"file": ("x.png", png_bytes(seed=5))}, headers=BOB)
        name = upload.json()["filename"]
        assert client.delete(f"/uploads/{name}", headers=BOB).status_code == 204
        assert_error(client.delete(f"/uploads/{name}", headers=BOB), 404)
        trail = [
            (e["key_name"], e["action"], e["outcome"])
            for e in client.get("/audit", headers=ALICE).json()["items"]
        ]
    assert ("bob", "delete_upload", "ok") in trail and ("bob", "delete_upload", "404") in trail


def test_c_store_is_held_to_the_upload_size_limit(untrained_bundle: Path, tmp_path: Path) -> None:
    """The probe sent four 400 MiB objects by C-STORE (STOW-RS caps each instance)."""
    from pynetdicom import AE

    from harness.service_support import free_port

    port = free_port()
    settings = make_settings(
        untrained_bundle,
        tmp_path,
        dicom_port=port,
        dicom_host="127.0.0.1",
        dicom_allowed_aets="MODALITY",
        max_upload_bytes=40_000,
        results_dicom=f"NOWHERE@127.0.0.1:{free_port()}",
    )
    study = Study()
    small = study.add(np.full((64, 64), 700, np.uint16))  # ~8 kB of pixels
    large = study.add(np.full((256, 256), 700, np.uint16))  # ~131 kB of pixels
    with running(settings) as (_, app):
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context("1.2.840.10008.5.1.4.1.1.1")
        association = ae.associate("127.0.0.1", port, ae_title="BONEXR")
        assert association.is_established
        try:
            statuses = [
                association.send_c_store(pydicom.dcmread(io.BytesIO(study.instances[uid]))).Status
                for uid in (small, large)
            ]
        finally:
            association.release()
        record = app.state.dicom_node.inbox.get(study.study_uid)
    assert statuses == [0x0000, 0xA700]
    assert record is not None and list(record.instances) == [small]


def test_a_multi_frame_instance_is_reported_with_its_warning(
    untrained_bundle: Path, tmp_path: Path
) -> None:
    """The probe's multi-frame warning reached /upload but was lost on the DICOM path."""
    from harness.service_support import free_port, wait_for
    from service.doors.dicom.results import read_report

    study = Study()
    uid = study.add(np.full((64, 64), 700, np.uint16))
    frames = pydicom.dcmread(io.BytesIO(study.instances[uid]))
    frames.NumberOfFrames = 2
    frames.PixelData = frames.PixelData * 2
    buffer = io.BytesIO()
    frames.save_as(buffer, enforce_file_format=True)
    body, content_type = stow_body([buffer.getvalue()])
    settings = make_settings(
        untrained_bundle,
        tmp_path,
        dicom_port=free_port(),
        dicom_host="127.0.0.1",
        study_settle_s=0.3,
        results_dicom=f"NOWHERE@127.0.0.1:{free_port()}",
        delivery_retry_s=60,
    )
    with running(settings) as (client, app):
        sent = client.post(
            "/dicom-web/studies", content=body, headers={"content-type": content_type}
        )
        assert sent.status_code == 200, sent.text
        outbox = app.state.dicom_node.outbox
        assert wait_for(lambda: outbox.folder.is_dir() and len(list(outbox.jobs())) == 1, 60)
        (job,) = outbox.jobs()
        report = read_report(pydicom.dcmread(sorted(job.folder.glob("*.dcm"))[0]))
    assert any("multi-frame DICOM (2 frames)" in w for w in report["warnings"])


def test_jobs_of_a_removed_destination_stop_retrying_and_stay_visible(tmp_path: Path) -> None:
    """The probe saw them retried every 0.2 s and missing from /ready."""
    from service.doors.dicom.outbox import Destination, Outbox

    def never(paths: object) -> None:
        raise AssertionError("a removed destination is never sent to")

    before = Outbox(
        tmp_path, [Destination("old", "C-STORE OLD@h:1", never)], retry_s=1, retry_max_s=2
    )
    before.ensure()
    assert before.enqueue("study-1", [("0-report.dcm", b"DICM")])
    after = Outbox(tmp_path, [], retry_s=1, retry_max_s=2)  # the destination removed
    (job,) = after.due()
    assert after.attempt(job) == "failed"
    assert after.due() == [] and after.counts() == {"old": (0, 1)}
    (kept,) = list(after.failed_folder.iterdir())
    assert "no longer configured" in (kept / "job.json").read_text()


def test_a_hung_destination_delays_nobody_else(
    untrained_bundle: Path, tmp_path: Path, synthetic_small: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The probe's healthy PACS got its results after 4.6, 34.8 and 65.2 s behind a hung one:
    here the healthy one is served while the other is still stuck."""
    import threading

    import service.doors.dicom.node as node_module
    from harness.dicom_node_support import radiograph
    from harness.service_support import wait_for
    from service.doors.dicom.outbox import Destination

    release = threading.Event()
    delivered: list[str] = []

    def hung(paths: object) -> None:
        release.wait(120)

    def healthy(paths: list[Path]) -> None:
        delivered.extend(p.name for p in paths)

    monkeypatch.setattr(
        node_module,
        "configured_destinations",
        lambda settings: [Destination("hung", "hung", hung), Destination("ok", "ok", healthy)],
    )
    study = Study()
    for path in sorted((synthetic_small / "train" / "XR_HAND").rglob("*.png"))[:1]:
        study.add(radiograph(path))
    body, content_type = stow_body(list(study.instances.values()))
    settings = make_settings(
        untrained_bundle, tmp_path, dicom_dir=tmp_path / "dicom", study_settle_s=0.3
    )
    try:
        with running(settings) as (client, _):
            client.post("/dicom-web/studies", content=body, headers={"content-type": content_type})
            assert wait_for(lambda: bool(delivered), 60)  # while "hung" is still stuck
            assert not release.is_set()
            release.set()
    finally:
        release.set()
    assert any(name.endswith("report.dcm") for name in delivered)


def test_a_refused_study_s_report_names_instances_not_internal_files() -> None:
    from service.domain.rules import MIXED_PARTS_ADVICE
    from service.doors.dicom.analysis import _report_wording
    from service.doors.dicom.instances import ReceivedInstance

    name = "ab" * 32 + ".png"
    instance = ReceivedInstance("1.2", "1.2.3", "1.2.3.4", "1.2.840", "CR", None, "f", name)
    mixed = f"{name} -> Leg (0.91)"
    detail = f"the views route to different body parts (study: Hand): {mixed}.{MIXED_PARTS_ADVICE}"
    worded = _report_wording(detail, [instance])
    assert worded == (
        "the views route to different body parts (study: Hand): instance 1.2.3.4 -> Leg (0.91)."
    )


def test_a_second_patient_under_one_study_uid_is_refused(
    untrained_bundle: Path, tmp_path: Path
) -> None:
    """The probe's two patients under one StudyInstanceUID became one report, filed under
    the first, referencing the other's image."""
    study = Study()
    first = study.add(np.full((64, 64), 600, np.uint16))
    second = study.add(np.full((64, 64), 900, np.uint16))
    other = pydicom.dcmread(io.BytesIO(study.instances[second]))
    other.PatientID = "SOMEONE-ELSE"
    buffer = io.BytesIO()
    other.save_as(buffer, enforce_file_format=True)
    settings = make_settings(untrained_bundle, tmp_path, dicom_dir=tmp_path / "dicom")
    with running(settings) as (client, app):
        for part in (study.instances[first], buffer.getvalue()):
            body, content_type = stow_body([part])
            answer = client.post(
                "/dicom-web/studies", content=body, headers={"content-type": content_type}
            )
        record = app.state.dicom_node.inbox.get(study.study_uid)
    assert answer.status_code == 409, answer.text  # nothing of that request taken
    (failed,) = answer.json()["00081198"]["Value"]
    assert failed["00081197"]["Value"] == [0xA900]
    assert record is not None and list(record.instances) == [first]


def test_a_stow_request_of_too_many_parts_is_refused_whole(
    untrained_bundle: Path, tmp_path: Path
) -> None:
    """The probe's million tiny parts took the server from 365 to 1,411 MiB."""
    from service.doors.dicom.stow import MAX_PARTS

    body, content_type = stow_body([b"DICM"] * (MAX_PARTS + 1))
    settings = make_settings(untrained_bundle, tmp_path, dicom_dir=tmp_path / "dicom")
    with running(settings) as (client, app):
        answer = client.post(
            "/dicom-web/studies", content=body, headers={"content-type": content_type}
        )
        assert app.state.dicom_node.inbox.get("anything") is None
    body_json = assert_error(answer, 413)
    assert f"more than {MAX_PARTS} parts" in body_json["detail"]


def test_deleting_a_received_study_s_record_removes_its_instances(
    untrained_bundle: Path, tmp_path: Path
) -> None:
    from harness.service_support import free_port, wait_for

    study = Study()
    for value in (600, 900):
        study.add(np.full((64, 64), value, np.uint16))
    body, content_type = stow_body(list(study.instances.values()))
    settings = make_settings(
        untrained_bundle,
        tmp_path,
        dicom_dir=tmp_path / "dicom",
        study_settle_s=0.3,
        results_dicom=f"NOWHERE@127.0.0.1:{free_port()}",
        delivery_retry_s=60,
    )
    kept = tmp_path / "dicom" / "instances"
    with running(settings) as (client, app):
        client.post("/dicom-web/studies", content=body, headers={"content-type": content_type})

        def recorded() -> list[dict]:
            return list(client.get("/worklist").json()["items"])

        assert wait_for(lambda: len(recorded()) == 1, 60)
        assert len(list(kept.glob("*.dcm"))) == 2
        assert client.delete(f"/worklist/{recorded()[0]['id']}").status_code == 204
        assert app.state.dicom_node.inbox.get(study.study_uid) is None
    assert list(kept.glob("*.dcm")) == []


def _stow_server(seen: list[str], uid: str) -> Any:
    """A STOW-RS endpoint that records the Authorization header and references ``uid``."""
    import json
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            seen.append(self.headers.get("Authorization", ""))
            item = {"00081155": {"vr": "UI", "Value": [uid]}}
            body = json.dumps({"00081199": {"vr": "SQ", "Value": [item]}}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/dicom+json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    return ThreadingHTTPServer(("127.0.0.1", 0), Handler)


def test_pacs_credentials_come_from_a_file_and_are_never_shown(
    untrained_bundle: Path, tmp_path: Path
) -> None:
    """A password file (a mounted Secret) authenticates each STOW-RS; /ready, /metrics and
    the settings' own repr never show it; a URL carrying credentials too is refused."""
    import base64
    import threading

    from service.doors.dicom.destinations import configured_destinations

    study = Study()
    uid = study.add(np.full((64, 64), 90, np.uint8))
    sent = tmp_path / "result.dcm"
    sent.write_bytes(study.instances[uid])
    secret = tmp_path / "pacs-password"
    secret.write_text("s3cret-from-file\n")
    seen: list[str] = []
    server = _stow_server(seen, uid)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/dicom-web"
        settings = make_settings(
            untrained_bundle,
            tmp_path,
            dicom_dir=tmp_path / "dicom",
            results_dicomweb_url=url,
            results_dicomweb_username="bonexr",
            results_dicomweb_password_file=secret,
        )
        configured_destinations(settings)[0].send([sent])
        with running(settings) as (client, _):
            shown = client.get("/ready").text + client.get("/metrics").text
    finally:
        server.shutdown()
    assert seen == ["Basic " + base64.b64encode(b"bonexr:s3cret-from-file").decode()]
    assert "s3cret" not in shown + repr(settings) and url in shown
    with pytest.raises(ValidationError, match="credentials too"):
        Settings(
            results_dicomweb_url="http://u:p@pacs/dicom-web",
            results_dicomweb_username="u",
            results_dicomweb_password="p",
        )
    with pytest.raises(ValidationError, match="needs one of"):
        Settings(results_dicomweb_url=url, results_dicomweb_username="u")
    with pytest.raises(ValidationError, match="not a readable file"):
        Settings(results_dicomweb_username="u", results_dicomweb_password_file=tmp_path / "missing")


def test_c_store_takes_the_compressed_transfer_syntaxes_stow_rs_decodes(
    untrained_bundle: Path, tmp_path: Path
) -> None:
    """The probe's modality sent JPEG by C-STORE and was refused (no presentation context)
    while STOW-RS decoded the same files: RLE and JPEG 2000 here, each scored in the report."""
    from pydicom.uid import JPEG2000Lossless, RLELossless
    from pynetdicom import AE

    from harness.service_support import free_port, wait_for
    from service.doors.dicom.results import read_report

    port = free_port()
    settings = make_settings(
        untrained_bundle,
        tmp_path,
        dicom_port=port,
        study_settle_s=0.3,
        results_dicom=f"NOWHERE@127.0.0.1:{free_port()}",
        delivery_retry_s=60,
    )
    study = Study()
    rng = np.random.default_rng(5)
    compressed = []
    for syntax in (RLELossless, JPEG2000Lossless):
        uid = study.add(rng.integers(0, 4000, (96, 80), dtype=np.uint16))
        dataset = pydicom.dcmread(io.BytesIO(study.instances[uid]))
        dataset.compress(syntax, generate_instance_uid=False)
        compressed.append(dataset)
    with running(settings) as (_, app):
        ae = AE(ae_title="MODALITY")
        for dataset in compressed:  # each proposed in its compressed syntax alone
            ae.add_requested_context(dataset.SOPClassUID, dataset.file_meta.TransferSyntaxUID)
        association = ae.associate("127.0.0.1", port, ae_title="BONEXR")
        assert association.is_established
        try:
            statuses = [association.send_c_store(d).Status for d in compressed]
        finally:
            association.release()
        outbox = app.state.dicom_node.outbox
        assert wait_for(lambda: outbox.folder.is_dir() and len(list(outbox.jobs())) == 1, 60)
        (job,) = outbox.jobs()
        report = read_report(pydicom.dcmread(sorted(job.folder.glob("*.dcm"))[0]))
    assert statuses == [0x0000, 0x0000]
    assert sorted(v["sop_instance_uid"] for v in report["views"]) == sorted(study.instances)
    assert all(v["scored"] for v in report["views"]), report["views"]


def _replaced_pixels(data: bytes, value: int) -> bytes:
    """The same instance (same SOP Instance UID) with other pixels."""
    dataset = pydicom.dcmread(io.BytesIO(data))
    dataset.PixelData = np.full((dataset.Rows, dataset.Columns), value, np.uint16).tobytes()
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def test_a_late_instance_and_new_pixels_supersede_the_earlier_answer(
    untrained_bundle: Path, tmp_path: Path
) -> None:
    """The probe's late instance made a second report and a second unread record; an
    instance re-sent with new pixels under its SOP Instance UID was never analysed again.
    Now each makes a report that names the earlier one as its predecessor, and the worklist
    keeps one record, which names the record it replaced."""
    from harness.service_support import free_port, wait_for
    from service.doors.dicom.results import read_report

    settings = make_settings(
        untrained_bundle,
        tmp_path,
        dicom_dir=tmp_path / "dicom",
        study_settle_s=0.3,
        results_dicom=f"NOWHERE@127.0.0.1:{free_port()}",
        delivery_retry_s=600,  # the reports stay in the outbox to be read
    )
    study = Study()
    first = study.add(np.full((64, 64), 700, np.uint16))
    reports: list[Dataset] = []

    def send_and_wait(instance: bytes) -> Dataset:
        body, content_type = stow_body([instance])
        sent = client.post(
            "/dicom-web/studies", content=body, headers={"content-type": content_type}
        )
        assert sent.status_code == 200, sent.text
        assert wait_for(lambda: len(list(outbox.jobs())) == len(reports) + 1, 60)
        known = {str(r.SOPInstanceUID) for r in reports}
        for job in outbox.jobs():
            report = pydicom.dcmread(sorted(job.folder.glob("*.dcm"))[0])
            if str(report.SOPInstanceUID) not in known:
                reports.append(report)
                return report
        raise AssertionError("no new report")

    def predecessor(report: Dataset) -> str:
        (series,) = report.PredecessorDocumentsSequence[0].ReferencedSeriesSequence
        return str(series.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)

    with running(settings) as (client, app):
        outbox = app.state.dicom_node.outbox
        one = send_and_wait(study.instances[first])
        assert "PredecessorDocumentsSequence" not in one
        (only,) = client.get("/worklist").json()["items"]

        late = study.add(np.full((64, 64), 900, np.uint16))
        two = send_and_wait(study.instances[late])
        assert predecessor(two) == str(one.SOPInstanceUID)
        assert two.StudyInstanceUID == one.StudyInstanceUID == study.study_uid
        assert len(read_report(two)["views"]) == 2
        page = client.get("/worklist").json()
        (current,) = page["items"]
        assert page["counts"]["all"] == 1 and current["replaces"] == only["id"]
        assert client.get(f"/worklist/{only['id']}").json()["superseded_by"] == current["id"]

        three = send_and_wait(_replaced_pixels(study.instances[first], 3000))
        assert predecessor(three) == str(two.SOPInstanceUID)
        (newest,) = client.get("/worklist").json()["items"]
        assert newest["replaces"] == current["id"]
        # the same bytes again are no new answer
        body, content_type = stow_body([_replaced_pixels(study.instances[first], 3000)])
        client.post("/dicom-web/studies", content=body, headers={"content-type": content_type})
        inbox = app.state.dicom_node.inbox
        record = inbox.get(study.study_uid)
        assert record.revision == 1 and len(record.analysed) == 3
        version = app.state.services.engine.model_version
        assert record.report_key(version) in record.analysed  # nothing left to answer
        assert client.delete(f"/worklist/{newest['id']}").status_code == 204
        assert client.get(f"/worklist/{only['id']}").status_code == 404  # the chain went too


def _received(study_uid: str, sop_uid: str, patient: str, sha: str = "0" * 64) -> Any:
    from service.doors.dicom.instances import ReceivedInstance

    return ReceivedInstance(
        study_uid, "1.2.3.9", sop_uid, "1.2.840.10008.5.1.4.1.1.1", "CR", "ELBOW", sha,
        patient=patient,
    )  # fmt: skip


def test_two_patients_arriving_at_once_cannot_both_join_a_study(tmp_path: Path) -> None:
    """The early check (``patient_of``) and the add were two steps: two instances of
    different patients arriving at the same instant could both pass. The inbox's add now
    checks under its lock, whatever the caller checked before."""
    import threading

    from service.doors.dicom.inbox import PatientConflict, StudyInbox

    inbox = StudyInbox(tmp_path, settle_s=10)
    inbox.load()
    start = threading.Barrier(8)
    outcomes: list[str] = []

    def arrive(n: int) -> None:
        start.wait()
        try:
            inbox.add(_received("1.2.3", f"1.2.3.{n}", f"patient-{n % 2}"))
            outcomes.append(f"patient-{n % 2}")
        except PatientConflict:
            outcomes.append("refused")

    threads = [threading.Thread(target=arrive, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    record = inbox.get("1.2.3")
    assert record is not None
    patients = {i.patient for i in record.instances.values()}
    assert len(patients) == 1 and outcomes.count("refused") == 4, outcomes
    reloaded = StudyInbox(tmp_path, settle_s=10)  # and the record on disk agrees
    reloaded.load()
    assert {i.patient for i in reloaded.get("1.2.3").instances.values()} == patients


def test_a_full_disk_at_the_record_save_leaves_nothing_to_analyse_later(
    untrained_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The probe's full disk at the study-record save answered 0xC000, yet the instance was
    analysed later (the record changed in memory first). Now the sender hears 0xA700 (out of
    resources: try again) and the study is as it was."""
    import errno

    import service.doors.dicom.inbox as inbox_module
    from harness.service_support import free_port

    port = free_port()
    settings = make_settings(untrained_bundle, tmp_path, dicom_port=port, study_settle_s=0.3)
    study = Study()
    uid = study.add(np.full((64, 64), 700, np.uint16))

    def disk_full(path: Path, payload: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    with running(settings) as (_, app):
        node = app.state.dicom_node
        monkeypatch.setattr(inbox_module, "write_json_atomic", disk_full)
        status = node._c_store(study.instances[uid], "MODALITY")
        monkeypatch.undo()
        assert status == 0xA700
        assert node.inbox.get(study.study_uid) is None
        assert node.inbox.waiting(app.state.services.engine.model_version) == 0
        assert list(app.state.services.store.names()) == []  # its pixels went too
        assert node._c_store(study.instances[uid], "MODALITY") == 0x0000  # space again
        assert list(node.inbox.get(study.study_uid).instances) == [uid]


def _with(data: bytes, **values: object) -> bytes:
    """``data`` with these values, conformant or not (pydicom's warnings silenced: the
    non-conformant value is the point)."""
    import warnings

    dataset = pydicom.dcmread(io.BytesIO(data))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for keyword, value in values.items():
            setattr(dataset, keyword, value)
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def test_values_copied_into_the_results_are_conformant(
    untrained_bundle: Path, tmp_path: Path
) -> None:
    """The probe's over-long PatientName, copied into the results, made Orthanc store
    nothing; a Latin-1 name must survive; a UID with ``../`` in it is refused at intake."""
    from pydicom.valuerep import MAX_VALUE_LEN, validate_value

    from harness.service_support import free_port, wait_for

    settings = make_settings(
        untrained_bundle,
        tmp_path,
        dicom_dir=tmp_path / "dicom",
        study_settle_s=0.3,
        results_dicom=f"NOWHERE@127.0.0.1:{free_port()}",
        delivery_retry_s=600,
    )
    study = Study()
    uid = study.add(np.full((64, 64), 700, np.uint16))
    long_name = "Müller" + "x" * 90 + "^Jörg"
    source = _with(
        study.instances[uid],
        SpecificCharacterSet="ISO_IR 100",
        PatientName=long_name,
        AccessionNumber="A" * 30,
        StudyDescription="D" * 100,
        StudyID="S" * 20,
    )
    bad = study.add(np.full((64, 64), 700, np.uint16))
    traversal = _with(study.instances[bad], SOPInstanceUID="1.2.3/../../etc")
    with running(settings) as (client, app):
        body, content_type = stow_body([source, traversal])
        answer = client.post(
            "/dicom-web/studies", content=body, headers={"content-type": content_type}
        )
        assert answer.status_code == 202, answer.text  # one taken, one refused
        (failed,) = answer.json()["00081198"]["Value"]
        assert failed["00081197"]["Value"] == [0xA900]
        outbox = app.state.dicom_node.outbox
        assert wait_for(lambda: outbox.folder.is_dir() and len(list(outbox.jobs())) == 1, 60)
        (job,) = outbox.jobs()
        results = [pydicom.dcmread(path) for path in sorted(job.folder.glob("*.dcm"))]
    assert len(results) >= 1
    for result in results:
        assert result.SpecificCharacterSet == "ISO_IR 192"
        assert str(result.PatientName).startswith("Müller") and "Jörg" not in str(
            result.PatientName
        )
        for element in result.iterall():
            if element.VR in MAX_VALUE_LEN and isinstance(element.value, str):
                validate_value(element.VR, element.value, 2)  # 2: raise on a violation
            if element.VR == "PN" and element.value:
                assert all(len(g) <= 64 for g in str(element.value).split("="))
        assert result.AccessionNumber == "A" * 16 and len(result.StudyID) <= 16


@pytest.mark.parametrize(
    ("allowed", "established"), [("10.9.9.0/24", False), ("127.0.0.0/8", True)]
)
def test_connections_from_other_hosts_are_closed_before_holding_a_slot(
    untrained_bundle: Path, tmp_path: Path, allowed: str, established: bool
) -> None:
    """The calling-AE allow-list is read from the association request, after a connection
    holds a slot; BONEXR_DICOM_ALLOWED_HOSTS closes a connection from elsewhere at accept."""
    from pynetdicom import AE

    from harness.service_support import free_port

    port = free_port()
    settings = make_settings(
        untrained_bundle, tmp_path, dicom_port=port, dicom_allowed_hosts=allowed
    )
    with running(settings):
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context("1.2.840.10008.1.1")
        association = ae.associate("127.0.0.1", port, ae_title="BONEXR")
        assert association.is_established is established
        if established:  # no calling-AE list here: only the host rule can refuse
            association.release()
    with pytest.raises(ValidationError, match="not an address or network"):
        Settings(dicom_allowed_hosts="pacs.example.org")
    assert Settings(dicom_allowed_hosts="10.0.0.0/8, ::1").allowed_networks()[1].version == 6


def test_only_an_admin_swaps_the_bundle(untrained_bundle: Path, tmp_path: Path) -> None:
    with running(_keyed(untrained_bundle, tmp_path)) as (client, _):
        version = client.get("/model", headers=ALICE).json()["version"]
        assert client.post("/model/reload", headers=BOB).status_code == 403
        assert client.post("/model/reload", headers=PACS).status_code == 403
        reloaded = client.post("/model/reload", headers=ALICE)
        assert reloaded.status_code == 200, reloaded.text
        assert reloaded.json()["current"] == f"tiny {version}"  # the same bundle, reloaded
