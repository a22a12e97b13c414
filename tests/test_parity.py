"""Training/serving skew: the service answers with the training evaluation's probabilities.

The bundle is trained here; the evaluation's per-image probabilities (``test_predictions.csv``,
computed by Keras on the original files) are compared with what the running service returns
over HTTP for the same files (upload -> pixel-only PNG -> ONNX Runtime).
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from fastapi.testclient import TestClient

from service.settings import Settings
from tests.service_support import running

pytestmark = pytest.mark.slow

TOLERANCE = 1e-4


def modelled(bundle: Path) -> set[str]:
    """Canonical names of the parts that have an abnormality model in ``bundle``."""
    return {p.upper() for p in json.loads((bundle / "manifest.json").read_text())["parts"]}


def parity_settings(bundle: Path, tmp_path: Path) -> Settings:
    """fp32: the skew check compares preprocessing, so no reduced precision may blur it
    (bf16 has its own gate, measured at export and checked at load)."""
    return Settings(
        models_dir=bundle.parent, bundle=bundle.name, upload_dir=tmp_path / "up", precision="fp32"
    )


def test_service_matches_training_evaluation(trained_demo: dict, tmp_path: Path) -> None:
    bundle: Path = trained_demo["bundle"]
    evaluated = pd.read_csv(bundle / "test_predictions.csv").dropna(subset=["routed_part"])
    parts = modelled(bundle)
    answered = evaluated[evaluated.body_part.isin(parts) & evaluated.routed_part.isin(parts)]
    # every part, both labels, and some RGB/RGBA source files where the generator wrote them
    sample = answered.groupby(["body_part", "label"], group_keys=False).head(4)
    settings = parity_settings(bundle, tmp_path)
    compared = 0
    with running(settings) as (client, _app):
        for row in sample.itertuples():
            data = (trained_demo["root"] / row.rel_path).read_bytes()
            upload = client.post("/upload", files={"file": ("image.png", data, "image/png")})
            assert upload.status_code in (200, 201), upload.text
            answer = client.post("/predict", json={"filename": upload.json()["filename"]}).json()
            for part, probability in answer["bone_type_probabilities"].items():
                assert probability == pytest.approx(
                    getattr(row, f"router_{part.upper()}"), abs=TOLERANCE
                )
            assert answer["bone_type"].upper() == row.routed_part
            assert answer["abnormality_probability"] == pytest.approx(
                row.prob_routed, abs=TOLERANCE
            )
            threshold = answer["threshold"]
            assert answer["result"] == ("fractured" if row.prob_routed >= threshold else "normal")
            compared += 1
    assert compared >= 18


def _upload_all(client: TestClient, root: Path, rows: pd.DataFrame) -> dict[str, str]:
    """rel_path -> stored filename."""
    names = {}
    for rel_path in rows["rel_path"]:
        data = (root / rel_path).read_bytes()
        upload = client.post("/upload", files={"file": ("image.png", data, "image/png")})
        assert upload.status_code in (200, 201), upload.text
        names[rel_path] = upload.json()["filename"]
    return names


def test_service_operating_points_and_studies_match_the_report(
    trained_demo: dict, tmp_path: Path
) -> None:
    """/predict on every test image reproduces the report's image-level sensitivity and
    specificity (two-stage, image operating point); /predict/study reproduces the
    evaluation's study probabilities (study routing, study operating point)."""
    bundle: Path = trained_demo["bundle"]
    report = json.loads((bundle / "report.json").read_text())
    evaluated = pd.read_csv(bundle / "test_predictions.csv").dropna(subset=["routed_part"])
    parts = modelled(bundle)
    evaluated = evaluated[evaluated.body_part.isin(parts)]
    settings = parity_settings(bundle, tmp_path)
    with running(settings) as (client, _app):
        names = _upload_all(client, trained_demo["root"], evaluated)
        decided, unanswered = [], 0
        for row in evaluated.itertuples():
            answer = client.post("/predict", json={"filename": names[row.rel_path]})
            if answer.status_code == 422:  # routed to a part without a model: no verdict
                assert answer.json()["bone_type"].upper() not in parts
                unanswered += 1
                continue
            verdict = answer.json()["result"] == "fractured"
            decided.append((row.body_part, row.label, verdict))
        assert unanswered == report["two_stage"]["unanswered"]["images"]
        frame = pd.DataFrame(decided, columns=["part", "label", "positive"])
        for part, rows in frame.groupby("part"):
            expected = report["two_stage"]["parts"][part]["image"]
            abnormal, normal = rows[rows.label == 1], rows[rows.label == 0]
            assert abnormal.positive.mean() == pytest.approx(expected["sensitivity"], abs=1e-9)
            assert (~normal.positive).mean() == pytest.approx(expected["specificity"], abs=1e-9)

        studies = evaluated.groupby("study_id")
        compared = 0
        for _study, views in studies:
            expected_prob = views["prob_study_routed"].mean()
            answer = client.post(
                "/predict/study", json={"filenames": [names[r] for r in views["rel_path"]]}
            )
            if views["study_part"].iloc[0] not in parts:
                assert answer.status_code == 422, answer.text
                continue
            assert answer.status_code == 200, answer.text
            body = answer.json()
            assert body["bone_type"].upper() == views["study_part"].iloc[0]
            assert body["abnormality_probability"] == pytest.approx(expected_prob, abs=TOLERANCE)
            part_threshold = report["thresholds"][views["study_part"].iloc[0]]["study"]["value"]
            assert body["threshold"] == pytest.approx(part_threshold)
            compared += 1
    studies_answered = evaluated[evaluated.study_part.isin(parts)]["study_id"].nunique()
    assert compared == studies_answered >= 20


def test_views_of_different_parts_are_422_unless_bone_type_given(
    trained_demo: dict, tmp_path: Path
) -> None:
    bundle: Path = trained_demo["bundle"]
    evaluated = pd.read_csv(bundle / "test_predictions.csv").dropna(subset=["routed_part"])
    confident = evaluated[evaluated["routed_part"] == evaluated["body_part"]]
    elbow = confident[confident.body_part == "ELBOW"].iloc[0]
    hand = confident[confident.body_part == "HAND"].iloc[0]
    settings = parity_settings(bundle, tmp_path)
    with running(settings) as (client, _app):
        names = _upload_all(client, trained_demo["root"], pd.DataFrame([elbow, hand]))
        views = [names[elbow.rel_path], names[hand.rel_path]]
        answer = client.post("/predict/study", json={"filenames": views})
        assert answer.status_code == 422, answer.text
        detail = answer.json()["detail"]
        assert "different body parts" in detail and "bone_type" in detail
        assert any(f"{v} -> " in detail for v in views)
        forced = client.post("/predict/study", json={"filenames": views, "bone_type": "Hand"})
        assert forced.status_code == 200, forced.text
        body = forced.json()
        assert body["bone_type"] == "Hand" and body["bone_type_source"] == "client"
        assert len(body["views"]) == 2
        assert any("scored by the Hand model" in w for w in body["warnings"])


def test_part_without_a_model_gets_422_with_its_name(trained_demo: dict, tmp_path: Path) -> None:
    """A synthetic wrist: the demo's router knows wrists, the bundle has no wrist model."""
    bundle: Path = trained_demo["bundle"]
    evaluated = pd.read_csv(bundle / "test_predictions.csv")
    wrists = evaluated[(evaluated.body_part == "WRIST") & (evaluated.routed_part == "WRIST")]
    assert len(wrists) >= 3, "the router should recognise most test wrists"
    settings = parity_settings(bundle, tmp_path)
    with running(settings) as (client, _app):
        names = _upload_all(client, trained_demo["root"], wrists.head(3))
        for name in names.values():
            answer = client.post("/predict", json={"filename": name})
            assert answer.status_code == 422, answer.text
            assert answer.json()["bone_type"] == "Wrist"
            assert "no abnormality model for Wrist" in answer.json()["detail"]
        study = client.post("/predict/study", json={"filenames": list(names.values())})
        assert study.status_code == 422 and study.json()["bone_type"] == "Wrist"
