"""The DICOM metadata gate: a file whose own tags say it is not an upper-limb projection
radiograph is refused with ``code: "not_eligible"`` by the service at upload and by
``bonexr predict``, with the same sentence; ``BONEXR_ELIGIBILITY=warn`` answers with it as a
warning instead."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from bonexr.cli import main
from bonexr.eligibility import metadata_refusal
from harness.service_support import assert_error, make_settings, running
from tests.dicom_support import dicom_file

CODES = np.random.default_rng(3).integers(0, 4000, (64, 80)).astype(np.uint16)

#: (id, DICOM tags, the reason code, the value named) for files that must be refused.
REFUSED = [
    ("CT slice", {"Modality": "CT"}, "modality", "CT"),
    ("MR slice", {"Modality": "MR"}, "modality", "MR"),
    ("ultrasound", {"Modality": "US"}, "modality", "US"),
    ("mammogram", {"Modality": "MG", "BodyPartExamined": "BREAST"}, "modality", "MG"),
    ("chest film", {"Modality": "DX", "BodyPartExamined": "CHEST"}, "body_part", "CHEST"),
    ("knee film", {"Modality": "CR", "BodyPartExamined": "KNEE"}, "body_part", "KNEE"),
    ("skull film", {"Modality": "DX", "BodyPartExamined": "SKULL"}, "body_part", "SKULL"),
]
#: Tags that allow a verdict: upper-limb radiographs, ambiguous or absent body part.
ACCEPTED = [
    ("elbow DX", {"Modality": "DX", "BodyPartExamined": "ELBOW"}),
    ("hand CR", {"Modality": "CR", "BodyPartExamined": "HAND"}),
    ("extremity", {"Modality": "DX", "BodyPartExamined": "EXTREMITY"}),
    ("no body part", {"Modality": "CR"}),
    ("no tags", {}),
]


def _dicom(tags: dict[str, str]) -> bytes:
    return dicom_file(CODES, bits_stored=12, **tags)


def test_the_rule_names_what_decided() -> None:
    refusal = metadata_refusal("CT", "ELBOW")
    assert refusal is not None and refusal.reason == "modality" and "CT" in refusal.detail
    refusal = metadata_refusal("DX", "CHEST")
    assert refusal is not None and refusal.reason == "body_part" and "CHEST" in refusal.detail
    assert metadata_refusal("dx", "elbow") is None  # tags are case-insensitive
    assert metadata_refusal(None, None) is None


def test_the_body_parts_accepted_are_the_bundles() -> None:
    mura = ["Elbow", "Hand", "Shoulder"]
    fracatlas = ["Hand", "Shoulder", "Leg", "Hip"]
    # a leg is refused by an upper-limb bundle and judged by one that learned legs
    assert metadata_refusal("DX", "LEG", mura) is not None
    assert metadata_refusal("DX", "TIBIA", fracatlas) is None
    assert metadata_refusal("DX", "PELVIS", fracatlas) is None
    # parts no bundle learned are refused by both, naming what the bundle knows
    for part in ("KNEE", "CHEST", "FOOT"):
        refusal = metadata_refusal("DX", part, fracatlas)
        assert refusal is not None and "hand, shoulder, leg, hip" in refusal.detail
    assert metadata_refusal("DX", "ELBOW", fracatlas) is not None
    # ambiguous values pass where the bundle knows a part of that limb
    assert metadata_refusal("DX", "LOWER EXTREMITY", fracatlas) is None
    assert metadata_refusal("DX", "LOWER EXTREMITY", mura) is not None


@pytest.mark.parametrize(
    ("tags", "reason", "value"), [r[1:] for r in REFUSED], ids=[r[0] for r in REFUSED]
)
def test_the_service_refuses_at_upload(
    untrained_bundle: Path, tmp_path: Path, tags: dict[str, str], reason: str, value: str
) -> None:
    with running(make_settings(untrained_bundle, tmp_path)) as (client, app):
        response = client.post("/upload", files={"file": ("x.dcm", _dicom(tags))})
        body = assert_error(response, 422)
        assert body["code"] == "not_eligible" and body["reason"] == reason
        assert body[reason] == value and body["detail"].startswith("not eligible: ")
        assert app.state.services.store.count() == 0  # nothing stored


@pytest.mark.parametrize("tags", [a[1] for a in ACCEPTED], ids=[a[0] for a in ACCEPTED])
def test_upper_limb_radiographs_are_accepted(
    untrained_bundle: Path, tmp_path: Path, tags: dict[str, str]
) -> None:
    with running(make_settings(untrained_bundle, tmp_path)) as (client, _):
        response = client.post("/upload", files={"file": ("x.dcm", _dicom(tags))})
        assert response.status_code == 201, response.text
        assert not [w for w in response.json()["warnings"] if "not eligible" in w]
        name = response.json()["filename"]
        assert client.post("/predict", json={"filename": name}).status_code == 200


def test_warn_mode_answers_with_the_reason(untrained_bundle: Path, tmp_path: Path) -> None:
    settings = make_settings(untrained_bundle, tmp_path, eligibility="warn")
    with running(settings) as (client, _):
        response = client.post("/upload", files={"file": ("x.dcm", _dicom({"Modality": "CT"}))})
        assert response.status_code == 201
        assert any(
            w.startswith("not eligible: the DICOM Modality is CT")
            for w in response.json()["warnings"]
        )


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_bonexr_predict_records_the_same_refusals(untrained_bundle: Path, tmp_path: Path) -> None:
    """Every refused file in errors.csv with the service's sentence; accepted ones scored."""
    folder = tmp_path / "scans"
    folder.mkdir()
    for label, tags, *_ in REFUSED:
        (folder / f"{label.replace(' ', '-')}.dcm").write_bytes(_dicom(tags))
    for label, tags in ACCEPTED:
        (folder / f"ok-{label.replace(' ', '-')}.dcm").write_bytes(_dicom(tags))
    out = tmp_path / "out"
    models = str(untrained_bundle.parent)
    assert main(["predict", str(folder), "--out", str(out), "--study-by", "none",
                 "--models-dir", models, "--quiet"]) == 0  # fmt: skip
    errors = {Path(r["path"]).name: r for r in _csv(out / "errors.csv")}
    scored = {Path(r["path"]).name for r in _csv(out / "images.csv")}
    assert scored == {f"ok-{label.replace(' ', '-')}.dcm" for label, _ in ACCEPTED}
    with running(make_settings(untrained_bundle, tmp_path)) as (client, _):
        for label, tags, *_ in REFUSED:
            name = f"{label.replace(' ', '-')}.dcm"
            api = client.post("/upload", files={"file": ("x.dcm", _dicom(tags))}).json()
            assert next(iter(v for k, v in errors[name].items() if k != "path")) == api["detail"]
