"""Calibration and operating points: maps that fix a known miscalibration, chosen by
cross-fitting and refused on too little data; triage thresholds whose guarantee holds
(a simulation counts how often the promise is broken); served thresholds that make the
raw thresholds' decisions; a manifest that refuses malformed calibration at load."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError
from scipy.stats import norm

from bonexr.calibration import Calibration, calibrate
from bonexr.errors import DataError
from bonexr.manifest import BALANCED, GUARANTEED, INSUFFICIENT_DATA, TRIAGE, PartSpec
from harness.bundles import write_as_exported
from harness.service_support import make_settings, png_bytes, running
from training.bootstrap import EXACT, bootstrap_ci, clopper_pearson_lower
from training.calibrate import (
    apply,
    calibration_metrics,
    choose_calibration,
    ece_bins,
    expected_calibration_error,
    fit_isotonic,
    fit_platt,
    fit_temperature,
    guaranteed_threshold,
    rates,
    threshold_for_sensitivity,
)
from training.eligibility import cross_fitted_acceptance
from training.operating_points import fit_part_answers, raw_thresholds_at, served_thresholds


def _overconfident(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Raw scores whose true P is sigmoid(0.5 * logit(raw) - 0.4): overconfident, shifted."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, 3.0, n)
    raw = 1.0 / (1.0 + np.exp(-z))
    truth = 1.0 / (1.0 + np.exp(-(0.5 * z - 0.4)))
    return (rng.uniform(size=n) < truth).astype(int), raw


def test_platt_recovers_a_known_miscalibration() -> None:
    labels, raw = _overconfident(4000, seed=0)
    cal = fit_platt(labels, raw)
    assert cal.slope == pytest.approx(0.5, abs=0.08)
    assert cal.intercept == pytest.approx(-0.4, abs=0.15)
    test_labels, test_raw = _overconfident(4000, seed=1)
    before = expected_calibration_error(test_labels, test_raw)
    after = expected_calibration_error(test_labels, apply(cal, test_raw))
    assert before > 0.08 and after < 0.03, (before, after)


def test_the_map_keeps_every_ranking_and_inverts() -> None:
    cal = Calibration(slope=0.7, intercept=-0.3, n=10)
    raw = np.linspace(0.001, 0.999, 200)
    served = apply(cal, raw)
    assert np.all(np.diff(served) > 0)
    assert [calibrate(r, cal) for r in raw[:3]] == pytest.approx(served[:3])
    assert [cal.raw_for(cal.apply(r)) for r in (0.02, 0.5, 0.97)] == pytest.approx(
        [0.02, 0.5, 0.97], rel=1e-6
    )
    assert calibrate(0.3, None) == 0.3  # an uncalibrated bundle serves the raw score


def test_a_model_that_ranks_backwards_is_not_calibrated() -> None:
    labels, raw = _overconfident(2000, seed=2)
    with pytest.raises(ValueError, match="ranks backwards"):
        fit_platt(labels, 1.0 - raw)
    with pytest.raises(ValueError, match="both normal and abnormal"):
        fit_platt(np.zeros(10, int), raw[:10])


@pytest.mark.parametrize("target", [0.8, 0.9, 0.95, 1.0])
def test_the_triage_threshold_reaches_its_target(target: float) -> None:
    labels, raw = _overconfident(500, seed=3)
    threshold = threshold_for_sensitivity(labels, raw, target)
    sensitivity, specificity = rates(labels, raw, threshold)
    assert sensitivity is not None and sensitivity >= target
    # and it is the highest such threshold: one abnormal case fewer would miss the target
    above = np.sort(raw[(labels == 1) & (raw > threshold)])
    if len(above):
        assert rates(labels, raw, float(above[0]))[0] < target  # type: ignore[operator]
    assert specificity is not None and 0.0 <= specificity <= 1.0


def _validation_rows(seed: int, studies: int = 60) -> pd.DataFrame:
    labels, raw = _overconfident(studies * 2, seed)
    study_labels = labels[::2]
    return pd.DataFrame(
        {
            "study_id": np.repeat([f"s{i}" for i in range(studies)], 2),
            "patient_id": np.repeat([f"p{i // 2}" for i in range(studies)], 2),
            "body_part": "ELBOW",
            "label": np.repeat(study_labels, 2),
            "prob_true_part": raw,
        }
    )


def test_served_thresholds_make_the_raw_thresholds_decisions() -> None:
    rows = _validation_rows(seed=4)
    answers = fit_part_answers(rows, target_sensitivity=0.95)
    raw = raw_thresholds_at({"ELBOW": answers}, TRIAGE)["ELBOW"]["image"]
    served = served_thresholds({"ELBOW": answers}, TRIAGE)["ELBOW"]["image"]
    assert served["raw"] == raw and served["rule"].startswith("sensitivity>=0.95")
    probs = rows["prob_true_part"].to_numpy()
    calibrated = apply(answers.calibration["image"], probs)
    np.testing.assert_array_equal(probs >= raw, calibrated >= served["value"])
    triage = answers.operating_points[TRIAGE]
    balanced = answers.operating_points[BALANCED]
    for level in ("image", "study"):
        labels = rows["label"].to_numpy() if level == "image" else rows["label"].to_numpy()[::2]
        abnormal = int(labels.sum())
        # the guarantee is measured on exactly the abnormal cases it was chosen on: with
        # ~30 abnormal studies, 0.95 cannot be shown, and the point says so
        assert triage[level].guarantee_n == abnormal
        assert triage[level].guarantee == INSUFFICIENT_DATA
        assert triage[level].guarantee_lower_bound == pytest.approx(
            clopper_pearson_lower(abnormal, abnormal)
        )
        assert "Insufficient data" in (triage[level].guarantee_sentence(level) or "")
        assert balanced[level].guarantee is None and balanced[level].target_sensitivity is None
        # the validation figures are out-of-fold, and say so
        assert "cross-fitted" in (triage[level].validation_rule or "")
        assert triage[level].validation_sensitivity is not None


def test_metrics_carry_bootstrap_intervals() -> None:
    labels, raw = _overconfident(300, seed=5)
    groups = np.arange(len(labels)) // 3
    metrics = calibration_metrics(labels, raw, groups, samples=200)
    for key in ("brier", "log_loss"):
        low, high = metrics[f"{key}_ci"]
        assert low <= metrics[key] <= high, key
    low, high = metrics["ece_ci"]  # ECE is biased upwards on resamples: only a width
    assert 0.0 <= low < high
    # a constant statistic would have a zero-wide bootstrap interval: the exact one over
    # the 100 patients is given instead, and says so
    constant = bootstrap_ci(groups, lambda rows: 1.0, samples=50)
    assert constant is not None and constant[0] == pytest.approx(0.05 ** (1 / 100), abs=0.02)
    assert constant[1] == 1.0 and constant.method == EXACT
    low, high = bootstrap_ci(groups, lambda rows: float(labels[rows].mean()), samples=200)
    assert low < labels.mean() < high


def _part(**fields: object) -> dict[str, object]:
    return {"keras": "e.keras", "onnx": "e.onnx", "backbone": "tiny", "threshold": 0.5, **fields}


def test_the_manifest_refuses_malformed_calibration_at_load() -> None:
    good = {"slope": 1.2, "intercept": -0.1, "n": 40}
    PartSpec.model_validate(_part(calibration={"image": good, "study": good}))
    with pytest.raises(ValidationError, match="slope"):
        PartSpec.model_validate(
            _part(calibration={"image": {**good, "slope": -1.0}, "study": good})
        )
    with pytest.raises(ValidationError, match="missing \\['study'\\]"):
        PartSpec.model_validate(_part(calibration={"image": good}))
    point = {"threshold": 0.3, "rule": "r"}
    with pytest.raises(ValidationError, match="operating point 'triage' needs both levels"):
        PartSpec.model_validate(_part(operating_points={"triage": {"image": point}}))
    with pytest.raises(ValidationError, match="plain word"):
        PartSpec.model_validate(
            _part(operating_points={"not a name": {"image": point, "study": point}})
        )


def test_the_guarantee_rule_picks_the_least_count_whose_bound_reaches_the_target() -> None:
    rng = np.random.default_rng(11)
    labels = np.r_[np.ones(200, int), np.zeros(200, int)]
    scores = np.r_[rng.normal(1.5, 1.0, 200), rng.normal(0.0, 1.0, 200)]
    chosen = guaranteed_threshold(labels, scores, 0.9)
    assert chosen.status == GUARANTEED and chosen.abnormal == 200
    assert (
        clopper_pearson_lower(chosen.caught, 200)
        >= 0.9
        > clopper_pearson_lower(chosen.caught - 1, 200)
    )
    assert chosen.threshold == np.sort(scores[:200])[::-1][chosen.caught - 1]
    few = guaranteed_threshold([*labels[:13], 0], [*scores[:13], 0.0], 0.95)
    assert few.status == INSUFFICIENT_DATA and few.caught == 13
    assert few.lower_bound == pytest.approx(0.05 ** (1 / 13))
    assert few.threshold == min(scores[:13])  # the most sensitive point: all caught


def test_the_guarantee_holds_in_repeated_sampling() -> None:
    """The promise: P(true sensitivity < target) <= 5%. Abnormal scores ~ N(1.5, 1), so
    the true sensitivity at t is 1 - Phi(t - 1.5); over 400 simulated validation splits
    of 120 abnormal cases the promise may be broken in about 5% (binomial sd 1.1%)."""
    rng = np.random.default_rng(12)
    broken = 0
    reps = 400
    for _ in range(reps):
        positives = rng.normal(1.5, 1.0, 120)
        chosen = guaranteed_threshold(np.ones(120, int), positives, 0.9)
        assert chosen.status == GUARANTEED
        broken += (1.0 - norm.cdf(chosen.threshold - 1.5)) < 0.9
    assert broken / reps <= 0.083  # 5% + 3 sd
    # and the naive rule (the highest threshold catching 90% in-sample) breaks it ~half
    naive = 0
    for _ in range(reps):
        positives = rng.normal(1.5, 1.0, 120)
        t = threshold_for_sensitivity(np.ones(120, int), positives, 0.9)
        naive += (1.0 - norm.cdf(t - 1.5)) < 0.9
    assert naive / reps > 0.3


def test_temperature_and_isotonic_fit_what_they_should() -> None:
    rng = np.random.default_rng(13)
    z = rng.normal(0.0, 3.0, 4000)
    labels = (rng.uniform(size=4000) < 1.0 / (1.0 + np.exp(-z / 2.0))).astype(int)
    raw = 1.0 / (1.0 + np.exp(-z))
    temperature = fit_temperature(labels, raw)
    assert temperature.method == "temperature" and 1.0 / temperature.slope == pytest.approx(
        2.0, rel=0.1
    )
    isotonic = fit_isotonic(labels, raw)
    grid = np.linspace(0.0, 1.0, 400)
    mapped = apply(isotonic, grid)
    assert np.all(np.diff(mapped) > 0)  # strictly increasing: no ranking is lost
    assert [isotonic.apply(float(g)) for g in grid[::50]] == pytest.approx(mapped[::50])
    assert isotonic.raw_for(isotonic.apply(0.3)) == pytest.approx(0.3, abs=1e-6)
    assert expected_calibration_error(labels, apply(isotonic, raw)) < 0.03


def test_the_calibrator_is_chosen_by_cross_fitting_or_refused_on_small_data() -> None:
    labels, raw = _overconfident(600, seed=14)
    patients = np.arange(600) // 2
    chosen = choose_calibration(labels, raw, patients)
    assert chosen.method in ("temperature", "platt", "isotonic")
    losses = {k: v for k, v in chosen.selection.items() if str(k).startswith("cross_fitted")}
    assert set(losses) == {
        f"cross_fitted_log_loss_{m}" for m in ("temperature", "platt", "isotonic")
    }
    assert chosen.selection["chosen"] == chosen.method
    assert losses[f"cross_fitted_log_loss_{chosen.method}"] == min(losses.values())
    # 8 abnormal cases: no map is fitted; raw P is served and marked uncalibrated
    few_labels = np.r_[np.ones(8, int), np.zeros(40, int)]
    few_raw = np.linspace(0.01, 0.99, 48)
    none = choose_calibration(few_labels, few_raw, np.arange(48))
    assert none.method == "none" and not none.calibrated and none.apply(0.37) == 0.37
    assert "fewer than 10" in str(none.selection["reason"])
    # asking for one it cannot fit is an error that names the number needed
    with pytest.raises(DataError, match="needs at least 200 validation cases with 50"):
        choose_calibration(labels[:100], raw[:100], patients[:100], requested="isotonic")
    with pytest.raises(DataError, match="needs at least 20 validation cases with 10"):
        choose_calibration(few_labels, few_raw, np.arange(48), requested="platt")


def test_ece_bins_hold_at_least_twenty_cases() -> None:
    assert ece_bins(39) == 1 and ece_bins(100) == 5 and ece_bins(10_000) == 15


def upload(client: Any, data: bytes) -> Any:
    return client.post("/upload", files={"file": ("x.png", data, "image/png")})


def _with_triage(untrained: Path, tmp: Path, **point: object) -> Path:
    """A copy of the untrained bundle whose parts carry a triage point (as an export
    with those fields would write it)."""
    copy = tmp / "models" / "tiny"
    shutil.copytree(untrained, copy)
    raw = json.loads((copy / "manifest.json").read_text())
    for spec in raw["parts"].values():
        triage = {"threshold": 0.5, "rule": "sensitivity>=0.95", "target_sensitivity": 0.95}
        triage.update(point)
        balanced = {"threshold": 0.5, "rule": "youden"}
        spec["operating_points"] = {
            "triage": {"image": triage, "study": triage},
            "balanced": {"image": balanced, "study": balanced},
        }
    raw["default_operating_point"] = "triage"
    write_as_exported(copy, raw)
    return copy


def test_a_bundle_from_before_guarantees_answers_with_a_warning(
    untrained_bundle: Path, tmp_path: Path
) -> None:
    bundle = _with_triage(untrained_bundle, tmp_path)
    with running(make_settings(bundle, tmp_path)) as (client, _):
        name = upload(client, png_bytes(seed=3)).json()["filename"]
        answer = client.post("/predict", json={"filename": name})
        assert answer.status_code == 200, answer.text
        assert any("has no guarantee" in w for w in answer.json()["warnings"])
        point = answer.json()["operating_point"]
        assert point["guarantee"] is None and "carries no guarantee" in point["guarantee_statement"]
        assert "carries no guarantee" in client.get("/model").json()["guarantees"]["Hand"]["study"]


def test_an_insufficient_point_is_flagged_in_every_answer(
    untrained_bundle: Path, tmp_path: Path
) -> None:
    bundle = _with_triage(
        untrained_bundle, tmp_path, guarantee="insufficient_data",
        guarantee_lower_bound=0.79, guarantee_n=13, test_sensitivity=0.8,
        test_sensitivity_ci=[0.5, 0.95], test_n=40,
    )  # fmt: skip
    with running(make_settings(bundle, tmp_path)) as (client, _):
        names = [upload(client, png_bytes(seed=s)).json()["filename"] for s in (4, 5)]
        single = client.post("/predict", json={"filename": names[0]}).json()
        study = client.post("/predict/study", json={"filenames": names}).json()
        for answer, level in ((single, "images"), (study, "studies")):
            point = answer["operating_point"]
            assert point["insufficient_data"] is True and point["guarantee_n"] == 13
            assert point["test_sensitivity_ci"] == [0.5, 0.95]
            sentence = f"Insufficient data: 13 abnormal validation {level} cannot show 95%"
            assert point["guarantee_statement"].startswith(sentence)
            assert any(sentence in w for w in answer["warnings"]), answer["warnings"]


def test_the_gate_limits_acceptance_is_measured_out_of_fold() -> None:
    """The limit accepts 90% of the views it is fitted on by construction; on patients it
    was not fitted on it accepts about as many (1,000 views: within 3 points)."""
    rng = np.random.default_rng(15)
    scores = rng.gamma(4.0, 2.0, 1000)
    patients = np.arange(1000) // 2
    out_of_fold = cross_fitted_acceptance(scores, patients, 0.9)
    assert out_of_fold is not None and abs(out_of_fold - 0.9) < 0.03
    assert cross_fitted_acceptance(scores[:1], patients[:1], 0.9) is None  # one patient
