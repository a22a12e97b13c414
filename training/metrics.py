"""MURA-style metrics: study-level aggregation, AUROC, Cohen's kappa, sensitivity, specificity.

Pure functions over arrays and DataFrames (scikit-learn underneath), so they are tested on
tiny hand-computed examples and reused by evaluation, cross-validation and the report.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from sklearn.metrics import confusion_matrix, roc_auc_score, roc_curve

from bonexr.agreement import Table
from training.bootstrap import binary_intervals, bootstrap_ci, rate_interval


def patients_of(frame: pd.DataFrame) -> np.ndarray:
    """Each row's patient, the unit every interval resamples (a frame without patient
    ids counts each study as its own patient)."""
    column = "patient_id" if "patient_id" in frame else "study_id"
    return frame[column].to_numpy()


def study_level(frame: pd.DataFrame, prob_column: str = "prob") -> pd.DataFrame:
    """One row per study: the mean of its views' probabilities (as in the MURA paper).

    Expects columns ``study_id``, ``body_part``, ``label`` and ``prob_column``; rows with a
    NaN probability (undecodable images) are ignored, and a study with no usable view is
    dropped.
    """
    usable = frame.dropna(subset=[prob_column])
    grouped = usable.groupby("study_id", sort=True)
    # the patient of each study (the bootstrap's unit); a frame without one (a caller's
    # own table) counts each study as its own patient
    patients = grouped["patient_id"].first() if "patient_id" in usable else grouped.size().index
    return pd.DataFrame(
        {
            "patient_id": patients,
            "body_part": grouped["body_part"].first(),
            "label": grouped["label"].first().astype(int),
            "prob": grouped[prob_column].mean(),
            "views": grouped.size(),
        }
    ).reset_index()


def choose_threshold(labels: ArrayLike, probs: ArrayLike) -> float:
    """Youden's J: the threshold maximising sensitivity + specificity - 1.

    Chosen on the validation split, never the test split. Falls back to 0.5 when the
    labels are all one class (J is undefined).
    """
    labels, probs = np.asarray(labels), np.asarray(probs, dtype=float)
    if len(np.unique(labels)) < 2:
        return 0.5
    fpr, tpr, thresholds = roc_curve(labels, probs)
    best = int(np.argmax(tpr - fpr))
    threshold = float(thresholds[best])
    return float(min(max(threshold, 0.0), 1.0))


def binary_metrics(
    labels: ArrayLike,
    probs: ArrayLike,
    threshold: float,
    groups: ArrayLike | None = None,
    decided: ArrayLike | None = None,
) -> dict[str, Any]:
    """AUROC, kappa, sensitivity, specificity, accuracy and the confusion matrix at a threshold.

    With ``groups`` (each row's study or patient) every rate also gets its 95% bootstrap
    interval (``auroc_ci``, ``kappa_ci``, ...), resampling whole groups. ``decided``
    overrides ``probs >= threshold`` (decisions made at several parts' thresholds).
    """
    labels = np.asarray(labels).astype(int)
    probs = np.asarray(probs, dtype=float)
    predicted = (
        (probs >= threshold).astype(int) if decided is None else np.asarray(decided).astype(int)
    )
    table = Table.of(labels, predicted)
    tn, fp, fn, tp = table.tn, table.fp, table.fn, table.tp
    both = len(np.unique(labels)) == 2
    metrics: dict[str, Any] = {
        "n": len(labels),
        "n_abnormal": int(labels.sum()),
        "auroc": float(roc_auc_score(labels, probs)) if both else None,
        "kappa": table.kappa,
        "sensitivity": table.sensitivity,
        "specificity": table.specificity,
        "accuracy": table.agreement,
        "threshold": float(threshold),
        "confusion_matrix": [[int(tn), int(fp)], [int(fn), int(tp)]],
    }
    if groups is not None:
        intervals = binary_intervals(labels, probs, predicted, groups)
        counts = {"sensitivity": (int(tp), int(tp + fn)), "specificity": (int(tn), int(tn + fp))}
        for key, interval in intervals.items():
            if key in counts:
                interval = rate_interval(metrics[key], interval, *counts[key])
            metrics[f"{key}_ci"] = interval
    return metrics


def router_metrics(
    true_parts: pd.Series,
    predicted_parts: pd.Series,
    classes: list[str],
    groups: ArrayLike | None = None,
) -> dict[str, Any]:
    """Accuracy (with its bootstrap interval when ``groups`` are given) and confusion
    matrix (rows: true part, columns: predicted part)."""
    matrix = confusion_matrix(true_parts, predicted_parts, labels=classes)
    total = int(matrix.sum())
    correct = np.asarray(true_parts) == np.asarray(predicted_parts)
    interval = (
        rate_interval(
            float(correct.mean()),
            bootstrap_ci(groups, lambda rows: float(correct[rows].mean())),
            int(correct.sum()),
            total,
        )
        if groups is not None and total
        else None
    )
    return {
        "n": total,
        "accuracy": float(np.trace(matrix) / total) if total else None,
        **({} if groups is None else {"accuracy_ci": interval}),
        "classes": classes,
        "confusion_matrix": matrix.astype(int).tolist(),
    }
