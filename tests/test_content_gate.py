"""The content gate's plumbing: the router's exported graph computes the Mahalanobis score
(the same number NumPy computes from the Keras features), the manifest's limit is checked at
load, the service refuses (or, in warn mode, flags) views beyond it, and the operating point
a request names is the one its answer is decided at.

The gate's *quality* (what it accepts and refuses) needs a trained router: it is measured
on the demo bundle (``tests/test_demo_bundle.py``)."""

from __future__ import annotations

import csv
import functools
import json
import shutil
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest

from bonexr.bundle import read_manifest, verify_bundle
from bonexr.cli import main
from bonexr.errors import BundleError
from bonexr.imaging import model_input, preprocess_file
from harness.bundles import write_as_exported
from harness.service_support import assert_error, make_settings, png_bytes, running
from training.eligibility import FittedGate
from training.export import export_random_init_bundle
from training.ood import (
    MahalanobisFit,
    MahalanobisScore,
    feature_model,
    fit_limit,
    fit_mahalanobis,
    gate_spec,
)

SIZE = 64


def test_mahalanobis_separates_far_points_and_the_layer_matches_numpy() -> None:
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 5, (3, 8))
    labels = rng.integers(0, 3, 600)
    features = centres[labels] + rng.normal(0, 1, (600, 8))
    fit = fit_mahalanobis(features, labels, 3)
    near = fit.scores(centres[rng.integers(0, 3, 50)] + rng.normal(0, 1, (50, 8)))
    far = fit.scores(rng.normal(0, 1, (50, 8)) + 20.0)
    assert near.max() < far.min()
    layer = MahalanobisScore(fit)
    sample = features[:20].astype(np.float32)
    np.testing.assert_allclose(
        np.asarray(layer(sample))[:, 0], fit.scores(sample), rtol=1e-4, atol=1e-4
    )
    limit = fit_limit(near, 0.9)
    assert (near <= limit).mean() >= 0.9
    with pytest.raises(ValueError, match="no validation views"):
        fit_limit(np.array([np.nan]))


def _noise_pixels(count: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (count, SIZE, SIZE)).astype(np.uint8)


@pytest.fixture(scope="module")
def gated(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A random-init bundle whose router carries a gate fitted on noise images, plus the
    fit (to recompute scores) and a models dir holding only it."""
    fits: list[MahalanobisFit] = []

    def fit_gate(router: keras.Model) -> FittedGate:
        features = np.asarray(feature_model(router).predict(model_input(_noise_pixels(64, 1))))
        fit = fit_mahalanobis(features, np.arange(64) % 3, 3)
        fits.append(fit)
        scores = fit.scores(features)
        return FittedGate(fit, gate_spec(fit_limit(scores, 0.99), 0.99, len(scores)))

    bundle = tmp_path_factory.mktemp("gated-models") / "gated"
    export_random_init_bundle(bundle, input_size=SIZE, backbone="tiny", fit_gate=fit_gate)
    return {"bundle": bundle, "fit": fits[0]}


def _with_limit(gated: dict[str, Any], tmp_path: Path, limit: float, **edits: Any) -> Path:
    """A copy of the gated bundle with its limit (and other manifest fields) changed, as an
    export writing those values would."""
    copy = tmp_path / "models" / "gated"
    shutil.copytree(gated["bundle"], copy)
    raw = json.loads((copy / "manifest.json").read_text())
    raw["router"]["ood"]["limit"] = limit
    for key, value in edits.items():
        raw[key] = value
    write_as_exported(copy, raw)
    return copy


def test_the_exported_graph_computes_the_score(gated: dict[str, Any], tmp_path: Path) -> None:
    bundle = gated["bundle"]
    manifest = verify_bundle(bundle)
    assert manifest.router.ood is not None and manifest.router.ood.output == 1
    path = tmp_path / "x.png"
    path.write_bytes(png_bytes(seed=5))
    features = feature_model(keras.models.load_model(bundle / "router.keras"))
    expected = float(
        gated["fit"].scores(np.asarray(features(model_input(preprocess_file(path, SIZE)))))[0]
    )
    # warn: the gate was fitted on bare noise, this letterboxed noise may lie beyond it
    settings = make_settings(bundle, tmp_path, precision="fp32", eligibility="warn")
    with running(settings) as (client, _):
        name = client.post("/upload", files={"file": ("x.png", path.read_bytes())}).json()
        response = client.post("/predict", json={"filename": name["filename"]})
        assert response.status_code == 200, response.text
        assert response.json()["content_score"] == pytest.approx(expected, rel=1e-3)


def test_a_gate_the_router_cannot_compute_is_refused_at_load(
    untrained_bundle: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "tiny"
    shutil.copytree(untrained_bundle, copy)
    raw = json.loads((copy / "manifest.json").read_text())
    raw["router"]["ood"] = {"limit": 3.0, "acceptance": 0.99, "validation_views": 10}
    write_as_exported(copy, raw)
    with pytest.raises(BundleError, match=r"router\.ood: manifest promises a content score"):
        verify_bundle(copy)


def test_views_beyond_the_limit_are_refused(gated: dict[str, Any], tmp_path: Path) -> None:
    bundle = _with_limit(gated, tmp_path, limit=1e-6)  # every real score is above it
    with running(make_settings(bundle, tmp_path)) as (client, _):
        names = [
            client.post("/upload", files={"file": (f"{i}.png", png_bytes(seed=i))}).json()[
                "filename"
            ]
            for i in range(2)
        ]
        body = assert_error(client.post("/predict", json={"filename": names[0]}), 422)
        assert body["code"] == "not_eligible" and body["reason"] == "content"
        assert body["limit"] == 1e-6 and body["score"] > 1e-6
        assert "does not look like the radiographs this model was trained on" in body["detail"]
        study = assert_error(client.post("/predict/study", json={"filenames": names}), 422)
        assert study["reason"] == "content" and "2 of 2 views" in study["detail"]
        assert {v["filename"] for v in study["views"]} == set(names)


def test_warn_mode_answers_beyond_the_limit_with_the_reason(
    gated: dict[str, Any], tmp_path: Path
) -> None:
    bundle = _with_limit(gated, tmp_path, limit=1e-6)
    with running(make_settings(bundle, tmp_path, eligibility="warn")) as (client, _):
        name = client.post("/upload", files={"file": ("x.png", png_bytes())}).json()["filename"]
        response = client.post("/predict", json={"filename": name})
        assert response.status_code == 200, response.text
        assert any(
            w.startswith("not eligible (BONEXR_ELIGIBILITY=warn")
            for w in response.json()["warnings"]
        )


def test_views_within_the_limit_are_answered(gated: dict[str, Any], tmp_path: Path) -> None:
    bundle = _with_limit(gated, tmp_path, limit=1e9)
    with running(make_settings(bundle, tmp_path)) as (client, _):
        name = client.post("/upload", files={"file": ("x.png", png_bytes())}).json()["filename"]
        response = client.post("/predict", json={"filename": name})
        assert response.status_code == 200, response.text
        assert not [w for w in response.json()["warnings"] if "not eligible" in w]
        assert "no content gate" not in " ".join(response.json()["warnings"])
        gate = client.get("/model").json()["content_gate"]
        assert gate["limit"] == 1e9 and gate["acceptance"] == 0.99


def test_editing_the_limit_changes_the_version(gated: dict[str, Any], tmp_path: Path) -> None:
    original = read_manifest(gated["bundle"]).version
    assert read_manifest(_with_limit(gated, tmp_path, limit=1e9)).version != original


# -- operating points ---------------------------------------------------------------------


def _with_points(untrained_bundle: Path, tmp_path: Path) -> Path:
    """The untrained bundle as an export with calibration and two operating points would
    write it: triage (low thresholds) the default, balanced (high) the alternative."""
    copy = tmp_path / "models" / "tiny"
    shutil.copytree(untrained_bundle, copy)
    raw = json.loads((copy / "manifest.json").read_text())
    cal = {"slope": 1.0, "intercept": 0.0, "n": 20}
    for spec in raw["parts"].values():
        spec["calibration"] = {"image": cal, "study": cal}
        spec["operating_points"] = {
            name: {
                level: {"threshold": value, "rule": f"{name}-rule", "validation_n": 20}
                for level in ("image", "study")
            }
            for name, value in (("triage", 0.0), ("balanced", 1.0))
        }
        spec["threshold"] = spec["image_threshold"] = 0.0
    raw["default_operating_point"] = "triage"
    write_as_exported(copy, raw)
    return copy


def test_the_named_operating_point_decides(untrained_bundle: Path, tmp_path: Path) -> None:
    bundle = _with_points(untrained_bundle, tmp_path)
    with running(make_settings(bundle, tmp_path)) as (client, _):
        name = client.post("/upload", files={"file": ("x.png", png_bytes())}).json()["filename"]
        default = client.post("/predict", json={"filename": name}).json()
        assert default["operating_point"]["name"] == "triage"
        assert default["operating_point"]["rule"] == "triage-rule"
        assert default["result"] == "abnormal"
        balanced = client.post(
            "/predict", json={"filename": name, "operating_point": "balanced"}
        ).json()
        assert balanced["operating_point"]["name"] == "balanced" and balanced["threshold"] == 1.0
        assert balanced["result"] == "normal"
        assert balanced["abnormality_probability"] == default["abnormality_probability"]
        study = client.post(
            "/predict/study", json={"filenames": [name], "operating_point": "balanced"}
        ).json()
        assert study["operating_point"]["name"] == "balanced"
        assert study["result"] == "normal"
        body = assert_error(
            client.post("/predict", json={"filename": name, "operating_point": "lenient"}), 422
        )
        assert sorted(body["operating_points"]) == ["balanced", "triage"]
        assert "has no operating point 'lenient'" in body["detail"]
        warnings = " ".join(default["warnings"])
        assert "uncalibrated" not in warnings and "no content gate" in warnings
        described = client.get("/model").json()
        assert described["default_operating_point"] == "triage"
        assert set(next(iter(described["operating_points"].values()))) == {"triage", "balanced"}


def test_a_legacy_bundle_serves_balanced_and_says_it_is_uncalibrated(
    untrained_bundle: Path, tmp_path: Path
) -> None:
    with running(make_settings(untrained_bundle, tmp_path)) as (client, _):
        name = client.post("/upload", files={"file": ("x.png", png_bytes())}).json()["filename"]
        answer = client.post("/predict", json={"filename": name}).json()
        assert answer["operating_point"]["name"] == "balanced"
        warnings = " ".join(answer["warnings"])
        assert "uncalibrated probabilities" in warnings and "no content gate" in warnings
        body = assert_error(
            client.post("/predict", json={"filename": name, "operating_point": "triage"}), 422
        )
        assert body["operating_points"] == ["balanced"]


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_bonexr_predict_refuses_the_same_views(gated: dict[str, Any], tmp_path: Path) -> None:
    bundle = _with_limit(gated, tmp_path, limit=1e-6)
    folder = tmp_path / "scans"
    folder.mkdir()
    (folder / "a.png").write_bytes(png_bytes(seed=1))
    out = tmp_path / "out"
    assert main(["predict", str(folder), "--out", str(out), "--study-by", "none",
                 "--models-dir", str(bundle.parent), "--quiet"]) == 0  # fmt: skip
    (row,) = _rows(out / "images.csv")
    assert row["refusal"] == "not_eligible:content" and row["result"] == ""
    assert float(row["content_score"]) > 1e-6
    with running(make_settings(bundle, tmp_path)) as (client, _):
        name = client.post("/upload", files={"file": ("a.png", png_bytes(seed=1))}).json()
        body = assert_error(client.post("/predict", json={"filename": name["filename"]}), 422)
    assert row["warnings"] == body["detail"]


def test_bonexr_predict_refuses_an_unknown_operating_point(
    untrained_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "scans"
    folder.mkdir()
    (folder / "a.png").write_bytes(png_bytes())
    models = str(untrained_bundle.parent)
    code = main(["predict", str(folder), "--out", str(tmp_path / "out"), "--quiet",
                 "--models-dir", models, "--operating-point", "triage"])  # fmt: skip
    assert code != 0
    assert "has no operating point 'triage'; it has balanced" in capsys.readouterr().err


def _metric(client: Any, name: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_a_study_with_refused_views_is_scored_once(gated: dict[str, Any], tmp_path: Path) -> None:
    """5 views, 3 beyond the limit: the node's path answers the other 2 from the same first
    pass (5 views scored, plus any rescoring by the study's part), never a second pass."""
    uploads = tmp_path / "uploads"
    with running(
        make_settings(_with_limit(gated, tmp_path / "a", limit=1e9), tmp_path, upload_dir=uploads)
    ) as (client, _):
        names = [
            client.post("/upload", files={"file": (f"{i}.png", png_bytes(seed=i))}).json()[
                "filename"
            ]
            for i in range(5)
        ]
        scores = [
            client.post("/predict", json={"filename": n}).json()["content_score"] for n in names
        ]
    ranked = sorted(scores)
    limit = (ranked[1] + ranked[2]) / 2  # the three highest scores are beyond it
    bundle = _with_limit(gated, tmp_path / "b", limit=limit)
    with running(make_settings(bundle, tmp_path, upload_dir=uploads)) as (client, app):
        before = _metric(client, "bonexr_views_scored_total")
        predictor = app.state.predictor
        answer = client.portal.call(
            functools.partial(predictor.study, names, None, set_aside_refused=True, door="dicom")
        )
        scored = _metric(client, "bonexr_views_scored_total") - before
        answered = _metric(client, "bonexr_studies_answered_total")
    assert len(answer.refused) == 3 and len(answer.views) == 2
    beyond = {n for n, s in zip(names, scores, strict=True) if s > limit}
    assert {r.view for r in answer.refused} == beyond
    rescored = sum(p.bone_type != p.scored_by for _, p in answer.views)
    assert scored == 5 + rescored  # the old node scored 5, then the 2 kept views again
    assert answered == 1
    mean = np.mean([p.raw_probability for _, p in answer.views])
    assert answer.abnormality_probability == pytest.approx(float(mean), abs=1e-6)
