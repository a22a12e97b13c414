"""Every door gives the same answer for the same image: HTTP (``/upload`` + ``/predict``,
``/predict/image``, ``/predict/study``), ``bonexr predict`` and the DICOM node.

One set of DICOM instances goes in through each door on the same random-init bundle, and
every field the doors share is compared: the study's part, probability, threshold,
finding, operating point, model version and warnings, and each view's. The eligibility
policy (``BONEXR_ELIGIBILITY``) is checked the same way: a CT slice is refused by every
door under ``enforce`` and answered with the same warning by every door under ``warn``
(before the triage core, the DICOM node refused it under ``warn`` too).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from harness.dicom_node_support import Study, radiograph, stow_body
from harness.service_support import assert_error, free_port, make_settings, running, wait_for
from service.doors.batch import predict_files
from service.doors.dicom.results import read_report
from service.settings import Settings

STOW = "/dicom-web/studies"


@pytest.fixture(scope="module")
def views(synthetic_small: Path) -> list[np.ndarray]:
    paths = sorted((synthetic_small / "train" / "XR_HAND").rglob("*.png"))[:3]
    return [radiograph(p) for p in paths]


def _node_settings(bundle: Path, tmp_path: Path, **overrides: Any) -> Settings:
    return make_settings(
        bundle,
        tmp_path,
        dicom_port=free_port(),
        dicom_host="127.0.0.1",
        dicom_allowed_aets="MODALITY",
        study_settle_s=0.3,
        results_dicom=f"NOWHERE@127.0.0.1:{free_port()}",
        delivery_retry_s=60,
        **overrides,
    )


def _through_the_node(client: TestClient, app: Any, study: Study) -> dict[str, Any]:
    """STOW the study, wait for its answer in the outbox, read the report back."""
    body, content_type = stow_body(list(study.instances.values()))
    assert client.post(STOW, content=body, headers={"content-type": content_type}).is_success
    outbox = app.state.dicom_node.outbox
    assert wait_for(lambda: outbox.folder.is_dir() and len(list(outbox.jobs())) == 1, 60)
    (job,) = outbox.jobs()
    import pydicom

    return read_report(pydicom.dcmread(sorted(job.folder.glob("*.dcm"))[0]))


def _through_http(client: TestClient, study: Study) -> tuple[list[str], list[dict], dict]:
    names, images = [], []
    for data in study.instances.values():
        upload = client.post("/upload", files={"file": ("x.dcm", data)})
        assert upload.status_code in (200, 201), upload.text
        names.append(upload.json()["filename"])
        images.append(client.post("/predict", json={"filename": names[-1]}).json())
    return names, images, client.post("/predict/study", json={"filenames": names}).json()


def _through_the_cli(settings: Settings, study: Study, folder: Path) -> tuple[list, dict]:
    inputs = folder / "study"
    inputs.mkdir(parents=True)
    for index, data in enumerate(study.instances.values()):
        (inputs / f"view{index}.dcm").write_bytes(data)
    out = folder / "out"
    predict_files([inputs], out, settings, study_by="parent", progress=False)
    with (out / "images.csv").open() as handle:
        images = list(csv.DictReader(handle))
    with (out / "studies.csv").open() as handle:
        (study_row,) = list(csv.DictReader(handle))
    return images, study_row


def test_http_the_cli_and_the_dicom_node_give_the_same_answer(
    untrained_bundle: Path, views: list[np.ndarray], tmp_path: Path
) -> None:
    study = Study()
    for view in views:
        study.add(view, photometric="MONOCHROME2", body_part="HAND")
    settings = _node_settings(untrained_bundle, tmp_path)
    with running(settings) as (client, app):
        report = _through_the_node(client, app, study)
        names, images, answer = _through_http(client, study)
        record = client.get(f"/worklist/{answer['record_id']}").json()
        review = {"reader_result": "normal"}
        assert client.post(f"/worklist/{answer['record_id']}/review", json=review).is_success
        export = list(csv.DictReader(io.StringIO(client.get("/worklist/export.csv").text)))
    cli_images, cli_study = _through_the_cli(settings, study, tmp_path / "cli")
    (exported,) = [row for row in export if row["study_id"] == answer["record_id"]]
    assert_one_vocabulary(
        {
            "/predict": images[0],
            "/predict/study": answer,
            "/worklist/{id}": record,
            "export.csv": exported,
            "images.csv": cli_images[0],
            "studies.csv": cli_study,
            "DICOM report": report,
        },
        answer,
    )

    # the study: every field the three doors report
    assert report["probability"] == pytest.approx(answer["abnormality_probability"], abs=1e-9)
    assert float(cli_study["abnormality_probability"]) == pytest.approx(
        answer["abnormality_probability"], abs=1e-6
    )
    for threshold in (report["threshold"], float(cli_study["threshold"])):
        assert threshold == pytest.approx(answer["threshold"], abs=1e-6)
    finding = answer["result"]  # one word for it at every door
    assert report["finding"] == finding and cli_study["result"] == answer["result"]
    assert report["body_part"] == answer["bone_type"] == cli_study["bone_type"]
    point = answer["operating_point"]["name"]
    assert report["operating_point"] == point == cli_study["operating_point"]
    assert report["model_version"] == answer["model"]["version"]
    assert report["warnings"] == answer["warnings"]  # the same view names: the stored ones
    shown = "; ".join(answer["warnings"])  # the CLI names each view by its file
    for index, name in enumerate(names):
        shown = shown.replace(name, f"view{index}.dcm")
    assert cli_study["warnings"] == shown

    # each view: the node's report and the CLI's rows against /predict
    by_probability = sorted(v["probability"] for v in report["views"])
    assert by_probability == pytest.approx(
        sorted(v["abnormality_probability"] for v in answer["views"]), abs=1e-9
    )
    for row, image in zip(cli_images, images, strict=True):
        assert row["bone_type"] == image["bone_type"]
        assert float(row["abnormality_probability"]) == pytest.approx(
            image["abnormality_probability"], abs=1e-6
        )
        assert row["result"] == image["result"]
        assert row["operating_point"] == image["operating_point"]["name"]


def test_predict_image_answers_as_predict_in_one_request(
    untrained_bundle: Path, tmp_path: Path
) -> None:
    study = Study()
    study.add(np.linspace(0, 4000, 64 * 64).reshape(64, 64).astype(np.uint16))
    (data,) = study.instances.values()
    with running(make_settings(untrained_bundle, tmp_path)) as (client, app):
        store = app.state.services.store
        kept = client.post("/predict/image", files={"file": ("x.dcm", data)})
        assert kept.status_code == 200, kept.text
        assert store.count() == 0  # the default keeps nothing
        upload = client.post("/upload", files={"file": ("x.dcm", data)}).json()
        two = client.post("/predict", json={"filename": upload["filename"]}).json()
        both = {**two, "warnings": [*upload["warnings"], *two["warnings"]]}
        assert kept.json() == {**both, "filename": None}
        stored = client.post(
            "/predict/image", params={"store": "true"}, files={"file": ("x.dcm", data)}
        )
        assert stored.json() == both  # stored as /upload stores it: the same name

        # its errors are the ones /upload or /predict give
        body = assert_error(
            client.post("/predict/image", files={"file": ("x.txt", b"not an image")}), 415
        )
        assert body["code"] == "unsupported_format"
        body = assert_error(
            client.post(
                "/predict/image",
                params={"operating_point": "nope"},
                files={"file": ("x.dcm", data)},
            ),
            422,
        )
        assert body["code"] == "unknown_operating_point" and body["operating_points"]
        body = assert_error(
            client.post("/predict/image", params={"heatmap": "true"}, files={"file": data}), 422
        )
        assert body["code"] == "invalid_request"
        assert_error(client.post("/predict/image", data={"other": "x"}), 400)


def _one_file_through_the_cli(
    settings: Settings, data: bytes, tmp_path: Path, table: str
) -> dict[str, str]:
    """``bonexr predict`` over one DICOM file: its one row of ``table``."""
    inputs = tmp_path / "cli"
    inputs.mkdir()
    (inputs / "ct.dcm").write_bytes(data)
    predict_files([inputs], tmp_path / "out", settings, progress=False)
    with (tmp_path / "out" / table).open() as handle:
        (row,) = list(csv.DictReader(handle))
    return row


def _ct_slice() -> Study:
    study = Study()
    study.add(np.full((32, 32), 1000, np.uint16), modality="CT", body_part="HAND")
    return study


def test_a_ct_slice_is_refused_by_every_door_under_enforce(
    untrained_bundle: Path, tmp_path: Path
) -> None:
    study = _ct_slice()
    (data,) = study.instances.values()
    settings = _node_settings(untrained_bundle, tmp_path)
    with running(settings) as (client, app):
        body = assert_error(client.post("/upload", files={"file": ("ct.dcm", data)}), 422)
        assert body["code"] == "not_eligible" and body["reason"] == "modality"
        report = _through_the_node(client, app, study)
    (view,) = report["views"]
    assert not view["scored"] and view["reason"] == body["detail"]
    assert (
        _one_file_through_the_cli(settings, data, tmp_path, "errors.csv")["reason"]
        == (body["detail"])
    )


def test_a_ct_slice_is_answered_with_the_same_warning_by_every_door_under_warn(
    untrained_bundle: Path, tmp_path: Path
) -> None:
    study = _ct_slice()
    (data,) = study.instances.values()
    settings = _node_settings(untrained_bundle, tmp_path, eligibility="warn")
    with running(settings) as (client, app):
        upload = client.post("/upload", files={"file": ("ct.dcm", data)})
        assert upload.status_code in (200, 201), upload.text
        (warning,) = [w for w in upload.json()["warnings"] if "Modality is CT" in w]
        report = _through_the_node(client, app, study)
    (view,) = report["views"]
    assert view["scored"] and warning in report["warnings"]
    row = _one_file_through_the_cli(settings, data, tmp_path, "images.csv")
    assert warning in row["warnings"] and row["result"]


def test_one_version_in_the_package_the_cli_the_api_and_the_changelog(
    untrained_bundle: Path, tmp_path: Path
) -> None:
    import re
    import subprocess
    import sys

    import bonexr

    root = Path(__file__).resolve().parents[1]
    released = re.findall(
        r"^## \[(\d+\.\d+\.\d+)\] - \d{4}-\d\d-\d\d$", (root / "CHANGELOG.md").read_text(), re.M
    )
    assert released[0] == bonexr.__version__  # the newest release is the package's
    shown = subprocess.run(
        [sys.executable, "-m", "bonexr.cli", "--version"], capture_output=True, text=True
    )
    assert shown.stdout.strip() == f"bonexr {bonexr.__version__}"
    with running(make_settings(untrained_bundle, tmp_path)) as (client, _):
        assert client.get("/model").json()["software_version"] == bonexr.__version__


def test_stow_takes_the_good_instances_around_one_whose_pixels_are_cut_short(
    untrained_bundle: Path, views: list[np.ndarray], tmp_path: Path
) -> None:
    import io

    import pydicom

    study = Study()
    uids = [study.add(view) for view in views]
    broken = pydicom.dcmread(io.BytesIO(study.instances[uids[1]]))
    broken.PixelData = broken.PixelData[: len(broken.PixelData) // 3]
    buffer = io.BytesIO()
    broken.save_as(buffer, enforce_file_format=True)
    study.instances[uids[1]] = buffer.getvalue()
    body, content_type = stow_body(list(study.instances.values()))
    with running(_node_settings(untrained_bundle, tmp_path)) as (client, _):
        answer = client.post(STOW, content=body, headers={"content-type": content_type})
    assert answer.status_code == 202, answer.text  # some taken, one refused
    payload = answer.json()
    taken = [t["00081155"]["Value"][0] for t in payload["00081199"]["Value"]]
    failed = payload["00081198"]["Value"]
    assert taken == [uids[0], uids[2]]
    assert [f["00081155"]["Value"][0] for f in failed] == [uids[1]]
    assert failed[0]["00081197"]["Value"] == [0xC000]


#: The words every door uses for the same facts (docs/api.md, "One vocabulary").
VOCABULARY = {"body_part", "result", "abnormality_probability", "threshold", "operating_point"}


def assert_one_vocabulary(named: dict[str, dict[str, Any]], study: dict[str, Any]) -> None:
    """The probe found "fractured" from /predict but "abnormal" in the worklist and the
    export, and bone_type / body_part / body_part_examined for one fact. Now: the same
    names and the same values from /predict, /predict/study, /worklist, its export, the
    CLI's CSVs and the DICOM report (``named``: door -> what it answered)."""
    for door, fields in named.items():
        assert set(fields) >= VOCABULARY, (door, VOCABULARY - set(fields))
    for door in ("/predict/study", "/worklist/{id}", "export.csv", "studies.csv", "DICOM report"):
        assert named[door]["result"] == study["result"] in ("abnormal", "normal"), door
        assert named[door]["body_part"] == study["body_part"], door
    for door in ("/predict", "images.csv"):
        assert named[door]["result"] in ("abnormal", "normal"), door
