"""Each part's calibration and operating points, fitted on validation and judged on test.

Per part and per level (image: one view's raw P; study: the mean of its views' raw P,
MURA's rule), from the validation split:

* a Platt map (:func:`training.calibrate.fit_platt`);
* ``triage``: the highest raw threshold that still reaches the target sensitivity, or
  the balanced one where that is lower (triage is never the less sensitive point);
* ``balanced``: Youden's J (the rule served before triage existed).

Thresholds are chosen on the raw scores and carried through the part's increasing map,
so a served (calibrated) threshold makes exactly the decisions its raw one does: the
evaluation can compare raw scores with raw thresholds and report what the service does.

On the test split the report gives, per part and level, ECE / Brier / log-loss before
and after calibration and sensitivity / specificity at both points, all with study-
bootstrap 95% intervals.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from bonexr.calibration import LEVELS, Calibration, Level
from bonexr.manifest import BALANCED, TRIAGE, OperatingPoint
from training.calibrate import apply, calibration_metrics, fit_platt, rate_ci, rates
from training.calibrate import threshold_for_sensitivity as triage_threshold
from training.io import say
from training.metrics import choose_threshold, study_level

#: Where each level's scores come from, as (labels, raw P, bootstrap groups).
Scores = tuple[np.ndarray, np.ndarray, np.ndarray]


def level_scores(rows: pd.DataFrame, level: Level, prob_column: str = "prob_true_part") -> Scores:
    """One part's labels and raw P at ``level``, with the study of each row (for the
    bootstrap): image rows are views, study rows are study means."""
    if level == "image":
        usable = rows.dropna(subset=[prob_column])
        return (
            usable["label"].to_numpy().astype(int),
            usable[prob_column].to_numpy(dtype=np.float64),
            usable["study_id"].to_numpy(),
        )
    studies = study_level(rows, prob_column)
    return (
        studies["label"].to_numpy().astype(int),
        studies["prob"].to_numpy(dtype=np.float64),
        studies["study_id"].to_numpy(),
    )


@dataclass(frozen=True)
class PartAnswers:
    """One part's fitted maps and points: what the manifest stores, plus the raw
    thresholds the evaluation decides with."""

    calibration: dict[Level, Calibration]
    operating_points: dict[str, dict[Level, OperatingPoint]]
    raw_thresholds: dict[str, dict[Level, float]]


def fit_part_answers(validation_rows: pd.DataFrame, target_sensitivity: float) -> PartAnswers:
    """Calibration and both operating points of one part from its validation views."""
    calibration: dict[Level, Calibration] = {}
    points: dict[str, dict[Level, OperatingPoint]] = {TRIAGE: {}, BALANCED: {}}
    raw: dict[str, dict[Level, float]] = {TRIAGE: {}, BALANCED: {}}
    for level in LEVELS:
        labels, probs, _groups = level_scores(validation_rows, level)
        try:
            cal = fit_platt(labels, probs)
        except ValueError as error:
            # an identity map, labelled with why: the served P is the raw one, and the
            # report and model card say the part is not calibrated
            say(f"warning: {level}-level calibration not fitted ({error}); serving raw P")
            cal = Calibration(
                slope=1.0, intercept=0.0, fitted_on=f"identity: {error}", n=max(1, len(labels))
            )
        calibration[level] = cal
        balanced = choose_threshold(labels, probs)
        chosen = {
            # never above the balanced threshold: where Youden's J already sits lower (more
            # sensitive), triage must not be the less sensitive of the two
            TRIAGE: (
                min(triage_threshold(labels, probs, target_sensitivity), balanced),
                f"sensitivity>={target_sensitivity:g}-on-validation-{level}-level",
            ),
            BALANCED: (balanced, f"youden-j-on-validation-{level}-level"),
        }
        for name, (threshold, rule) in chosen.items():
            sens, spec = rates(labels, probs, threshold)
            raw[name][level] = threshold
            points[name][level] = OperatingPoint(
                threshold=float(np.clip(cal.apply(threshold), 0.0, 1.0)),
                rule=rule,
                target_sensitivity=target_sensitivity if name == TRIAGE else None,
                validation_sensitivity=sens,
                validation_specificity=spec,
                validation_n=len(labels),
            )
    return PartAnswers(calibration, points, raw)


def fit_answers(
    validation: pd.DataFrame, parts: list[str], target_sensitivity: float
) -> dict[str, PartAnswers]:
    """:func:`fit_part_answers` for every part (``validation`` from
    :func:`training.evaluate.predict_true_part`)."""
    return {
        part: fit_part_answers(validation[validation["body_part"] == part], target_sensitivity)
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


def answers_report(test: pd.DataFrame, answers: dict[str, PartAnswers]) -> dict[str, Any]:
    """The report's ``calibration`` and ``operating_points`` blocks on the test split."""
    calibration: dict[str, Any] = {}
    points: dict[str, Any] = {}
    for part, fitted in answers.items():
        rows = test[test["body_part"] == part]
        calibration[part], points[part] = {}, {}
        for level in LEVELS:
            labels, probs, groups = level_scores(rows, level)
            calibrated = apply(fitted.calibration[level], probs)
            calibration[part][level] = {
                "before": calibration_metrics(labels, probs, groups),
                "after": calibration_metrics(labels, calibrated, groups),
                "map": fitted.calibration[level].model_dump(mode="json"),
            }
            points[part][level] = {
                name: {
                    "threshold": fitted.operating_points[name][level].threshold,
                    "rule": fitted.operating_points[name][level].rule,
                    "validation_sensitivity": fitted.operating_points[name][
                        level
                    ].validation_sensitivity,
                    "validation_specificity": fitted.operating_points[name][
                        level
                    ].validation_specificity,
                    **rate_ci(labels, probs, fitted.raw_thresholds[name][level], groups),
                }
                for name in (TRIAGE, BALANCED)
            }
    return {"calibration": calibration, "operating_points": points}
