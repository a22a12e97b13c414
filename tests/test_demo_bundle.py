"""The trained demo bundle (``trained_demo``, exactly ``bonexr demo``): it learns, its
bundle is complete, and the service answers with the training evaluation's probabilities.

Every test of that bundle lives in this module, so ``make test``'s two pytest-xdist workers
(``--dist loadfile``) train it once, on one worker, while the other runs the rest.

Training/serving skew:
The bundle is trained here; the evaluation's per-image probabilities (``test_predictions.csv``,
computed by Keras on the original files) are compared with what the running service returns
over HTTP for the same files (upload -> pixel-only PNG -> ONNX Runtime).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from bonexr.bundle import verify_bundle
from bonexr.errors import BundleError
from bonexr.imaging import model_input, preprocess_file
from bonexr.labels import display_name
from harness.service_support import running
from service.settings import Settings
from training.run import run_training

pytestmark = pytest.mark.slow

TOLERANCE = 1e-4


def modelled(bundle: Path) -> set[str]:
    """Canonical names of the parts that have an abnormality model in ``bundle``."""
    return {p.upper() for p in json.loads((bundle / "manifest.json").read_text())["parts"]}


def parity_settings(bundle: Path, tmp_path: Path) -> Settings:
    """fp32: the skew check compares preprocessing, so no reduced precision may blur it
    (bf16 has its own gate, measured at export and checked at load). Eligibility warn: the
    evaluation scores every test view, the content gate would refuse ~1% of them (their
    refusal has its own test)."""
    return Settings(
        models_dir=bundle.parent,
        bundle=bundle.name,
        upload_dir=tmp_path / "up",
        precision="fp32",
        eligibility="warn",
    )


def served_of(bundle: Path, part: str, level: str, raw: float) -> tuple[float, float]:
    """The served (calibrated) probability of an evaluation's raw output, and the
    tolerance it is compared with: TOLERANCE on the raw scale carried through the map's
    slope there (the map is steep on synthetic data: up to ~10x near its middle)."""
    calibration = verify_bundle(bundle).parts[display_name(part)].calibration[level]
    served = calibration.apply(raw)
    r = min(max(raw, 1e-6), 1 - 1e-6)
    slope = calibration.slope * served * (1 - served) / (r * (1 - r))
    return served, TOLERANCE * max(1.0, slope)


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
            served = answer["abnormality_probability"]
            expected, tolerance = served_of(bundle, row.routed_part, "image", row.prob_routed)
            assert served == pytest.approx(expected, abs=tolerance)
            threshold = answer["threshold"]
            assert answer["result"] == ("abnormal" if served >= threshold else "normal")
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
            verdict = answer.json()["result"] == "abnormal"
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
            expected, tolerance = served_of(bundle, body["bone_type"], "study", expected_prob)
            assert body["abnormality_probability"] == pytest.approx(expected, abs=tolerance)
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
        assert "different body parts" in detail and "body_part" in detail
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


def _rows(report_md: str) -> str:
    return "\n".join(line for line in report_md.splitlines() if line.startswith("|"))


# ------------------------------------------------------ learning, bundle, evidence


def test_pipeline_learns_both_tasks(trained_demo: dict) -> None:
    report = json.loads((trained_demo["bundle"] / "report.json").read_text())
    router_accuracy = report["router"]["image"]["accuracy"]
    aurocs = {part: m["study"]["auroc"] for part, m in report["parts"].items()}
    print(f"router accuracy {router_accuracy:.3f}; study AUROC {aurocs}")
    # Spread of the demo recipe over five training seeds on one split (docs/figures.md
    # "Seed spread", bench/seed_spread.py): study AUROC elbow 0.857-0.905, hand
    # 0.968-1.000, shoulder 1.000; router accuracy 1.000 (the base run). The fixture is
    # fixed-seed but has one corrupt image; the bounds sit ~0.1 below the worst seed.
    assert router_accuracy >= 0.9
    for part, auroc in aurocs.items():
        assert auroc >= 0.75, f"{part} study-level AUROC {auroc:.3f} < 0.75"
    assert (
        report["two_stage"]["overall"]["pooled"]["study"]["n"]
        == report["overall"]["pooled"]["study"]["n"]
    )


def test_corrupt_image_is_reported_and_skipped(trained_demo: dict) -> None:
    report = json.loads((trained_demo["bundle"] / "report.json").read_text())
    assert list(report["bad_images"]) == [str(trained_demo["corrupt"])]
    assert "Skipped images (1)" in (trained_demo["bundle"] / "report.md").read_text()


def test_bundle_contents_and_provenance(trained_demo: dict) -> None:
    bundle = trained_demo["bundle"]
    manifest = verify_bundle(bundle)
    assert manifest.synthetic and "DEMO ONLY" in manifest.intended_use
    for rel in (
        "split.csv",
        "report.md",
        "report.json",
        "plots/roc.png",
        "plots/confusion.png",
        "plots/training_curves.png",
        "plots/reliability.png",
        "test_predictions.csv",
    ):
        assert rel in manifest.files, rel
    split = pd.read_csv(bundle / "split.csv")
    predictions = pd.read_csv(bundle / "test_predictions.csv")
    root = str(trained_demo["root"].resolve())
    for shared in (split, predictions):  # a shareable artifact: no training-machine paths
        assert "path" not in shared.columns
        assert not shared.astype(str).apply(lambda c: c.str.contains(root, regex=False)).any().any()
    assert manifest.data["source"] == "MURA-v1.1"
    # the export's ONNX check ran on noise plus validation images of every part
    assert manifest.training["onnx_parity_images"] == 4 + 3 * len(manifest.router.classes)
    # the router knows all seven synthetic parts; abnormality models exist for three
    assert manifest.router.classes == [
        "Elbow", "Finger", "Forearm", "Hand", "Humerus", "Shoulder", "Wrist"
    ]  # fmt: skip
    assert sorted(manifest.parts) == ["Elbow", "Hand", "Shoulder"]
    report = json.loads((bundle / "report.json").read_text())
    assert len(report["router"]["image"]["confusion_matrix"]) == 7
    assert "CPUExecutionProvider" in manifest.training["onnx_parity_by_provider"]
    owners = split.groupby("patient_id")["split"].nunique()
    assert (owners == 1).all(), "a patient appears in two splits"
    assert manifest.data["split_seed"] == 0
    # two operating points per part, each with both levels, from validation; triage served
    assert manifest.default_operating_point == "triage"
    for spec in manifest.parts.values():
        assert spec.image_threshold is not None and 0.0 < spec.image_threshold < 1.0
        assert 0.0 < spec.threshold < 1.0
        points = spec.points()
        assert set(points) == {"triage", "balanced"}
        assert spec.image_threshold == points["triage"]["image"].threshold
        assert spec.threshold == points["triage"]["study"].threshold
        assert (
            points["triage"]["image"].rule
            == "sensitivity>=0.95-lower-95%-bound-on-validation-image-level"
        )
        assert points["balanced"]["study"].rule == "youden-j-on-validation-study-level"
        for level in ("image", "study"):
            triage = points["triage"][level]
            # the demo's validation split holds far fewer than the 59 abnormal studies a
            # 0.95 guarantee needs: the bundle says so instead of promising it
            assert triage.guarantee_n is not None and triage.guarantee_n > 0
            if level == "study":
                assert triage.guarantee_n < 59 and triage.guarantee == "insufficient_data"
            assert "cross-fitted" in (triage.validation_rule or "")
            # and its test figures, with intervals, are what it reports
            assert triage.test_sensitivity is not None and triage.test_sensitivity_ci
            low, high = triage.test_sensitivity_ci
            assert low <= triage.test_sensitivity <= high and high - low > 0
            cal = spec.calibration[level]
            assert cal.method in ("temperature", "platt", "isotonic", "none")
            assert cal.fitted_on == ("validation" if cal.calibrated else "none: raw P served")
    assert manifest.router.ood is not None and manifest.router.ood.acceptance == 0.99
    assert any(s.image_threshold != s.threshold for s in manifest.parts.values())
    assert "image" in manifest.metrics["operating_points"]["Elbow"]
    assert manifest.metrics["router_accuracy"] >= 0.9
    report_md = (bundle / "report.md").read_text()
    assert "| Hand |" in _rows(report_md)
    # synthetic: no synthetic kappa beside the MURA paper's (real-data bundles only)
    assert "Not shown: these figures are on synthetic images" in report_md
    assert "Rajpurkar" not in report_md
    # every headline figure carries its interval, into the manifest and so /model
    for part in manifest.parts:
        low, high = manifest.metrics["study_auroc_ci"][part]
        assert low <= manifest.metrics["study_auroc"][part] <= high


def test_reloaded_bundle_predicts_identically(trained_demo: dict) -> None:
    """Export -> reload: the bundle's Keras files reproduce the evaluation's probabilities."""
    bundle = trained_demo["bundle"]
    manifest = verify_bundle(bundle)
    predictions = (
        pd.read_csv(bundle / "test_predictions.csv")
        .dropna(subset=["routed_part", "prob_HAND"])
        .head(24)
    )
    assert len(predictions) >= 10  # hand views and views routed to the hand model
    batch = np.concatenate(
        [
            model_input(preprocess_file(trained_demo["root"] / rel, manifest.input.size))
            for rel in predictions["rel_path"]
        ]
    )
    router = keras.models.load_model(bundle / manifest.router.keras)
    router_probs = np.asarray(router(batch, training=False))
    expected = predictions[[f"router_{p.upper()}" for p in manifest.router.classes]].to_numpy()
    np.testing.assert_allclose(router_probs, expected, atol=1e-6)
    hand = keras.models.load_model(bundle / manifest.parts["Hand"].keras)
    np.testing.assert_allclose(
        np.asarray(hand(batch, training=False))[:, 0], predictions["prob_HAND"], atol=1e-6
    )


def test_existing_bundle_is_refused_before_training(trained_demo: dict) -> None:
    with pytest.raises(BundleError, match="already exists"):
        run_training(
            trained_demo["root"],
            trained_demo["config"],
            out=trained_demo["bundle"],
            run_dir=trained_demo["bundle"].parent / "unused-run",
        )
    assert not (trained_demo["bundle"].parent / "unused-run").exists()


def test_heatmaps_localise_the_drawn_defects(trained_demo: dict) -> None:
    """The demo's maps are scored against the defect the generator drew, beside the
    centre, random-point, training-mean and brightness baselines.

    Measured basis for the bounds (bench/seed_spread.py, five training seeds on one split,
    54 boxed test images): the map hits 0.852-0.963 (centre 0.315, brightest blurred pixel
    0.907 in every seed); on fresh data (bench/fresh_data.py, 290 views) 0.903 against
    0.866 for the brightness baseline. On 54 images the map does not beat the brightness
    baseline in every seed, so that is checked on fresh data (docs/figures.md), not here.
    """
    report = json.loads((trained_demo["bundle"] / "report.json").read_text())
    located = report["localisation"]
    overall = located["overall"]
    print(
        f"pointing game: heat map {overall['heatmap']:.3f}, brightest {overall['brightest']:.3f}, "
        f"centre {overall['centre']:.3f}, random {overall['random']:.3f}"
    )
    assert overall["n"] >= 30
    assert overall["heatmap"] >= 0.75  # ~0.1 below the worst seed
    assert overall["heatmap"] >= overall["centre"] + 0.3  # worst seed's margin: 0.54
    assert overall["heatmap"] >= overall["random"] + 0.5
    assert set(located["defects"]) == {"fracture", "hardware"}
    assert {"centre", "random", "training_mean", "brightest"} <= set(overall)
    assert isinstance(located["target"]["met"], bool)
    assert (trained_demo["bundle"] / "plots" / "heatmaps.png").stat().st_size > 20_000
    report_md = (trained_demo["bundle"] / "report.md").read_text()
    assert "Where the model looked" in report_md and "brightest (blurred)" in report_md
    card = (trained_demo["bundle"] / "MODEL_CARD.md").read_text()
    assert "Where the model looked" in card and "Hidden stratification" in card
    assert "Rajpurkar" not in card  # synthetic: no comparison with the MURA paper


def test_reduced_precision_is_decided_without_the_test_labels(trained_demo: dict) -> None:
    """bf16 and int8 were judged two-stage on a label-free pool of training and validation
    images (image and study answers, Clopper-Pearson bound <= 1%) and by validation
    non-inferiority, and scored on test only afterwards; the verdict follows the criteria."""
    bundle = trained_demo["bundle"]
    manifest = verify_bundle(bundle)
    split = pd.read_csv(bundle / "split.csv")
    if not any(manifest.precisions[name].measured for name in ("bf16", "int8")):
        reasons = "; ".join(manifest.precisions[n].reason for n in ("bf16", "int8"))
        pytest.skip(f"no reduced precision could be measured here (OpenVINO/NNCF): {reasons}")
    for name in ("bf16", "int8"):
        spec = manifest.precisions[name]
        print(f"{name}: {spec.reason}")
        if not spec.measured:  # this one needs what the machine lacks: never allowed
            assert not spec.allowed
            continue
        measured = spec.measured
        # the pool: validation whole, training studies up to the limit; never test images
        assert (split["split"] == "validation").sum() <= measured["pool_images"] <= 4000
        assert measured["pool_images"] > 5 * (split["split"] == "test").sum()
        flips = measured["flips"]
        bounds_ok = all(flips[level]["upper_95"] <= 0.01 for level in ("image", "study"))
        margins = measured["validation_noninferiority"]
        assert set(margins) == set(manifest.parts)
        auroc_ok = all(m["change_ci"][0] >= -0.01 for m in margins.values())
        assert spec.allowed == (bounds_ok and auroc_ok)
        assert set(measured["test"]) == set(manifest.parts)  # the record, after the verdict
        assert spec.tolerance == pytest.approx(measured["reference_max_abs_diff"] + 0.01, abs=1e-6)
        # the content score comes from the router's graph: its decisions are re-checked too
        gate = measured["content_gate"]
        assert manifest.router.ood is not None and gate["limit"] == manifest.router.ood.limit
    card = (bundle / "MODEL_CARD.md").read_text()
    assert "## Reduced precision" in card and "test study AUROC fp32" in card
    int8 = manifest.precisions["int8"]
    if int8.files:  # produced: one calibrated IR per model, hashed like every model file
        assert set(int8.files) == {"router", *(p.lower() for p in manifest.parts)}
        for model, coverage in int8.measured["quantisation"].items():
            assert coverage["int8_layers"] == coverage["layers"] > 0, model
            assert coverage["calibration_images"] >= 16
        assert all(f in manifest.files for f in manifest.model_files())


# ------------------------------------------------------ trustworthy answers


def test_calibration_and_triage_point_hold_on_the_test_split(trained_demo: dict) -> None:
    """Platt maps fitted on validation lower the test ECE, and the triage point is at
    least as sensitive as the balanced one.

    Measured basis (this fixture's recipe, seed 0; same figures in two runs): ECE raw ->
    calibrated per part and level, image elbow 0.122 -> 0.097, hand 0.146 -> 0.043,
    shoulder 0.208 -> 0.071; study 0.168 -> 0.078, 0.136 -> 0.001, 0.218 -> 0.006. With
    14-19 test studies per part one part may not improve at one level, so the bound is on
    the mean over parts at each level, and on the image level per part with a margin of
    0.03 (the smallest measured gain, elbow image, is 0.025).
    """
    report = json.loads((trained_demo["bundle"] / "report.json").read_text())
    calibration = report["calibration"]
    for level in ("image", "study"):
        before = np.mean([c[level]["before"]["ece"] for c in calibration.values()])
        after = np.mean([c[level]["after"]["ece"] for c in calibration.values()])
        print(f"{level} ECE raw {before:.3f} -> calibrated {after:.3f}")
        assert after < before
    for part, c in calibration.items():
        assert c["image"]["after"]["ece"] <= c["image"]["before"]["ece"] + 0.03, part
    for part, levels in report["operating_points"].items():
        for level, points in levels.items():
            triage = points["triage"]
            # the test sensitivity is reported with an interval that names its method and
            # is never zero-wide, and the guarantee is stated in words
            low, high = triage["sensitivity_ci"]
            assert low <= triage["sensitivity"] <= high and high - low > 0, (part, level)
            assert triage["sensitivity_ci_method"].startswith(("percentile", "exact"))
            assert triage["guarantee_sentence"], (part, level)
    intervals = list(_intervals(report))
    assert len(intervals) > 50
    for path, interval, method in intervals:
        assert interval[1] - interval[0] > 0, path  # never zero-wide
        assert method, path  # and every one names its method
    text = (trained_demo["bundle"] / "report.md").read_text()
    assert "## Calibration (test split)" in text and "## Operating points" in text
    assert "## Calibration (test split)" in (trained_demo["bundle"] / "MODEL_CARD.md").read_text()


def _intervals(value: object, path: str = "") -> Iterator[tuple[str, list, str | None]]:
    """Every ``*_ci`` interval in a report, with its path and its ``*_ci_method``."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key.endswith("_ci") and isinstance(item, list) and len(item) == 2:
                yield f"{path}.{key}", item, value.get(f"{key}_method")
            elif key == "ci" and isinstance(item, list) and len(item) == 2:
                yield f"{path}.ci", item, value.get("ci_method")
            else:
                yield from _intervals(item, f"{path}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _intervals(item, f"{path}[{i}]")


def test_content_gate_accepts_radiographs_and_refuses_the_rest(trained_demo: dict) -> None:
    """Measured basis (seed 0, two runs, same figures): test views accepted 0.990
    [0.973, 1.00] (3 of 286 refused) at a 99% validation target; the OOD set refused 0.981
    (105 of 107: photos 23/24, DICOM 55/55, drawings 20/20, blank/noise 7/8); separation
    AUROC Mahalanobis 0.991, maximum softmax 0.801. Bounds sit below those by ~0.05."""
    report = json.loads((trained_demo["bundle"] / "report.json").read_text())
    gate = report["eligibility"]
    assert gate["test"]["accepted"] >= 0.95
    assert gate["ood"]["refused_rate"] >= 0.9
    for kind, counts in gate["ood"]["kinds"].items():
        assert counts["refused_rate"] >= 0.75, kind
    separation = gate["separation_auroc"]
    assert separation["mahalanobis"] >= 0.93
    assert separation["mahalanobis"] > separation["max_softmax"]


def test_the_service_refuses_what_the_report_counted(trained_demo: dict, tmp_path: Path) -> None:
    """Every photo and drawing of the OOD set sent as PNG: the service refuses exactly the
    ones the export's evaluation counted as refused by content (one rule, one score)."""
    import io

    from training.ood_set import ood_evaluation_set

    bundle: Path = trained_demo["bundle"]
    report = json.loads((bundle / "report.json").read_text())
    kinds = report["eligibility"]["ood"]["kinds"]
    images = [o for o in ood_evaluation_set() if o.kind in ("photo", "drawing")]
    settings = Settings(  # fp32: the precision the export's evaluation scored in
        models_dir=bundle.parent, bundle=bundle.name, upload_dir=tmp_path / "up", precision="fp32"
    )
    refused: dict[str, int] = {"photo": 0, "drawing": 0}
    with running(settings) as (client, _app):
        for item in images:
            data = io.BytesIO()
            item.image.save(data, format="PNG")
            upload = client.post("/upload", files={"file": ("x.png", data.getvalue())})
            assert upload.status_code in (200, 201), upload.text
            answer = client.post("/predict", json={"filename": upload.json()["filename"]})
            if answer.status_code == 422 and answer.json().get("reason") == "content":
                refused[item.kind] += 1
            else:
                assert answer.status_code in (200, 422), answer.text
    for kind, count in refused.items():
        assert count == kinds[kind]["content"], (kind, count, kinds[kind])
    assert sum(refused.values()) >= 0.9 * len(images)
