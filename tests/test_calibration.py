"""Calibration and operating points: Platt maps that fix a known miscalibration, thresholds
that reach their target, served thresholds that make the raw thresholds' decisions, and a
manifest that refuses malformed calibration at load."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from bonexr.calibration import Calibration, calibrate
from bonexr.manifest import BALANCED, TRIAGE, PartSpec
from training.bootstrap import bootstrap_ci
from training.calibrate import (
    apply,
    calibration_metrics,
    expected_calibration_error,
    fit_platt,
    rates,
    threshold_for_sensitivity,
)
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
        assert triage[level].validation_sensitivity >= 0.95  # type: ignore[operator]
        # triage trades specificity for sensitivity: never a higher threshold than Youden's
        assert triage[level].threshold <= balanced[level].threshold


def test_metrics_carry_bootstrap_intervals() -> None:
    labels, raw = _overconfident(300, seed=5)
    groups = np.arange(len(labels)) // 3
    metrics = calibration_metrics(labels, raw, groups, samples=200)
    for key in ("brier", "log_loss"):
        low, high = metrics[f"{key}_ci"]
        assert low <= metrics[key] <= high, key
    low, high = metrics["ece_ci"]  # ECE is biased upwards on resamples: only a width
    assert 0.0 <= low < high
    # a constant statistic has a zero-width interval; a varying one does not
    assert bootstrap_ci(groups, lambda rows: 1.0, samples=50) == (1.0, 1.0)
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
