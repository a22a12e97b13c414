"""Each part's calibration and operating points, fitted on validation and judged on test.

Validation already chose each part's checkpoint (early stopping, the schedule, the
ensemble), so nothing reported for what is fitted on it may be read off it in-sample.
Per part and per level (image: one view's raw P; study: the mean of its views' raw P,
MURA's rule), from the validation split:

* the calibration map chosen by cross-fitted log-loss (:func:`choose_calibration`);
* ``triage``: the highest raw threshold whose sensitivity's one-sided 95% Clopper-Pearson
  lower bound reaches the target on validation (:func:`guaranteed_threshold`), or, with
  too few abnormal cases for that, the point that catches them all, marked
  ``insufficient_data`` with the bound it reached; never above the balanced point;
* ``balanced``: Youden's J.

Each rule's validation sensitivity and specificity are **cross-fitted**: K folds over the
validation patients, the rule fitted on K - 1 and applied to the held-out fold, pooled
(``validation_rule`` says so). The served thresholds and maps are then fitted on all of
validation. Thresholds are chosen on the raw scores and carried through the part's
increasing map, so a served (calibrated) threshold makes exactly the decisions its raw
one does. The test split is scored once, for the record: each point's test sensitivity
and specificity with their 95% intervals go into the manifest and every answer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from bonexr.calibration import LEVELS, Calibration, Level
from bonexr.manifest import BALANCED, TRIAGE, OperatingPoint
from training.calibrate import (
    apply,
    calibration_metrics,
    choose_calibration,
    cross_fitted,
    guaranteed_threshold,
    rate_ci,
    rates,
)
from training.io import say
from training.metrics import choose_threshold, patients_of, study_level

#: How the validation figures of every fitted quantity are measured.
CROSS_FIT_RULE = "cross-fitted: 5 folds over validation patients (rule fitted on 4, applied to 1)"

#: Where each level's scores come from, as (labels, raw P, bootstrap groups).
Scores = tuple[np.ndarray, np.ndarray, np.ndarray]


def level_scores(rows: pd.DataFrame, level: Level, prob_column: str = "prob_true_part") -> Scores:
    """One part's labels and raw P at ``level``, with the patient of each row (for the
    cross-fitting folds and the bootstrap): image rows are views, study rows are study
    means."""
    if level == "image":
        usable = rows.dropna(subset=[prob_column])
        return (
            usable["label"].to_numpy().astype(int),
            usable[prob_column].to_numpy(dtype=np.float64),
            patients_of(usable),
        )
    studies = study_level(rows, prob_column)
    return (
        studies["label"].to_numpy().astype(int),
        studies["prob"].to_numpy(dtype=np.float64),
        patients_of(studies),
    )


@dataclass(frozen=True)
class PartAnswers:
    """One part's fitted maps and points: what the manifest stores, plus the raw
    thresholds the evaluation decides with."""

    calibration: dict[Level, Calibration]
    operating_points: dict[str, dict[Level, OperatingPoint]]
    raw_thresholds: dict[str, dict[Level, float]]


def _triage(labels: np.ndarray, probs: np.ndarray, target: float) -> float:
    balanced = choose_threshold(labels, probs)
    # never above the balanced threshold: where Youden's J already sits lower (more
    # sensitive), triage must not be the less sensitive of the two
    return min(guaranteed_threshold(labels, probs, target).threshold, balanced)


def cross_fitted_rates(
    rule: Callable[[np.ndarray, np.ndarray], float],
    labels: np.ndarray,
    probs: np.ndarray,
    groups: np.ndarray,
) -> tuple[float | None, float | None]:
    """Pooled out-of-fold (sensitivity, specificity) of a threshold ``rule``."""
    decided = cross_fitted(
        rule, lambda threshold, held: (held >= threshold).astype(float), labels, probs, groups
    )
    if decided is None:
        return None, None
    sensitivity, specificity = rates(labels, decided, 0.5)
    return sensitivity, specificity


def fit_part_answers(
    validation_rows: pd.DataFrame, target_sensitivity: float, calibrator: str = "auto"
) -> PartAnswers:
    """Calibration and both operating points of one part from its validation views."""
    calibration: dict[Level, Calibration] = {}
    points: dict[str, dict[Level, OperatingPoint]] = {TRIAGE: {}, BALANCED: {}}
    raw: dict[str, dict[Level, float]] = {TRIAGE: {}, BALANCED: {}}
    for level in LEVELS:
        labels, probs, groups = level_scores(validation_rows, level)
        cal = choose_calibration(labels, probs, groups, requested=calibrator, level=level)
        if not cal.calibrated:
            say(f"warning: {level}-level P served uncalibrated ({cal.selection.get('reason')})")
        calibration[level] = cal
        guarantee = guaranteed_threshold(labels, probs, target_sensitivity)
        rules: dict[str, tuple[Callable[[np.ndarray, np.ndarray], float], str]] = {
            TRIAGE: (
                lambda y, p: _triage(y, p, target_sensitivity),
                f"sensitivity>={target_sensitivity:g}-lower-95%-bound-on-validation-{level}-level",
            ),
            BALANCED: (choose_threshold, f"youden-j-on-validation-{level}-level"),
        }
        for name, (rule, described) in rules.items():
            threshold = rule(labels, probs)
            sens, spec = cross_fitted_rates(rule, labels, probs, groups)
            raw[name][level] = threshold
            guaranteed = name == TRIAGE
            points[name][level] = OperatingPoint(
                threshold=float(np.clip(cal.apply(threshold), 0.0, 1.0)),
                rule=described,
                target_sensitivity=target_sensitivity if guaranteed else None,
                validation_sensitivity=sens,
                validation_specificity=spec,
                validation_n=len(labels),
                validation_rule=CROSS_FIT_RULE,
                guarantee=guarantee.status if guaranteed else None,
                guarantee_lower_bound=guarantee.lower_bound if guaranteed else None,
                guarantee_n=guarantee.abnormal if guaranteed else None,
            )
    return PartAnswers(calibration, points, raw)


def fit_answers(
    validation: pd.DataFrame, parts: list[str], target_sensitivity: float, calibrator: str = "auto"
) -> dict[str, PartAnswers]:
    """:func:`fit_part_answers` for every part (``validation`` from
    :func:`training.evaluate.predict_true_part`)."""
    return {
        part: fit_part_answers(
            validation[validation["body_part"] == part], target_sensitivity, calibrator
        )
        for part in parts
    }


def raw_thresholds_at(answers: dict[str, PartAnswers], point: str) -> dict[str, dict[str, float]]:
    """``{part: {"image": t, "study": t}}`` on raw scores at ``point`` (for
    :func:`training.evaluate.evaluate_predictions`)."""
    return {
        part: {level: a.raw_thresholds[point][level] for level in LEVELS}
        for part, a in answers.items()
    }


def served_thresholds(answers: dict[str, PartAnswers], point: str) -> dict[str, dict[str, Any]]:
    """The report's ``thresholds`` block: per part and level the served (calibrated) value,
    the raw one it stands for, and the rule that chose it."""
    return {
        part: {
            level: {
                "value": a.operating_points[point][level].threshold,
                "raw": a.raw_thresholds[point][level],
                "rule": a.operating_points[point][level].rule,
                "operating_point": point,
            }
            for level in LEVELS
        }
        for part, a in answers.items()
    }


def answers_report(
    test: pd.DataFrame, answers: dict[str, PartAnswers]
) -> tuple[dict[str, Any], dict[str, PartAnswers]]:
    """The report's ``calibration`` and ``operating_points`` blocks on the test split, and
    the answers with each point's test figures (sensitivity and specificity with their
    95% intervals) written in: what the manifest, ``/model`` and every answer show."""
    calibration: dict[str, Any] = {}
    points: dict[str, Any] = {}
    recorded: dict[str, PartAnswers] = {}
    for part, fitted in answers.items():
        rows = test[test["body_part"] == part]
        calibration[part], points[part] = {}, {}
        served: dict[str, dict[Level, OperatingPoint]] = {TRIAGE: {}, BALANCED: {}}
        for level in LEVELS:
            labels, probs, groups = level_scores(rows, level)
            calibrated = apply(fitted.calibration[level], probs)
            calibration[part][level] = {
                "before": calibration_metrics(labels, probs, groups),
                "after": calibration_metrics(labels, calibrated, groups),
                "map": fitted.calibration[level].model_dump(mode="json"),
                "fitted_on": "validation split; calibrator chosen by cross-fitted log-loss",
            }
            points[part][level] = {}
            for name in (TRIAGE, BALANCED):
                point = fitted.operating_points[name][level]
                measured = rate_ci(labels, probs, fitted.raw_thresholds[name][level], groups)
                points[part][level][name] = {
                    **point.model_dump(mode="json", exclude_none=True),
                    **measured,
                    "guarantee_sentence": point.guarantee_sentence(level),
                    "fitted_on": "validation split (threshold); test split: measured only",
                }
                served[name][level] = point.model_copy(update=_test_fields(measured))
        recorded[part] = PartAnswers(fitted.calibration, served, fitted.raw_thresholds)
    return {"calibration": calibration, "operating_points": points}, recorded


def _test_fields(measured: dict[str, Any]) -> dict[str, Any]:
    def interval(key: str) -> list[float] | None:
        ci = measured.get(f"{key}_ci")
        return None if ci is None else [float(ci[0]), float(ci[1])]

    return {
        "test_sensitivity": measured["sensitivity"],
        "test_sensitivity_ci": interval("sensitivity"),
        "test_specificity": measured["specificity"],
        "test_specificity_ci": interval("specificity"),
        "test_n": measured["n"],
        "test_n_abnormal": measured["n_abnormal"],
    }
