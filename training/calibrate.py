"""Calibration and operating points, fitted on the validation split at export.

* :func:`fit_platt`: the per-part, per-level map of :mod:`bonexr.calibration`;
* :func:`threshold_for_sensitivity`: the triage rule (the highest threshold that still
  catches ``target`` of the validation's abnormal images or studies);
* :func:`calibration_metrics`: equal-mass ECE, Brier score and log-loss
  (scikit-learn), with study-level bootstrap intervals (:func:`bootstrap_ci`).

Thresholds are chosen on the *raw* validation scores and carried into calibrated space
through the part's (strictly increasing) map, so the decisions are the same whichever
space they are made in and the calibration fit cannot move a threshold: the two are kept
apart by construction.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import brier_score_loss, log_loss

from bonexr.calibration import EPSILON, Calibration
from training.bootstrap import BOOTSTRAP_SAMPLES, bootstrap_ci, rate_interval

#: Equal-mass bins of the expected calibration error and the reliability diagrams.
ECE_BINS = 15
#: The triage operating point's default target sensitivity (``--target-sensitivity``).
DEFAULT_TARGET_SENSITIVITY = 0.95


def _logits(probs: ArrayLike) -> np.ndarray:
    p = np.clip(np.asarray(probs, dtype=np.float64), EPSILON, 1.0 - EPSILON)
    return np.asarray(np.log(p / (1.0 - p)))


def fit_platt(labels: ArrayLike, raw: ArrayLike, fitted_on: str = "validation") -> Calibration:
    """Platt scaling fitted by (lightly regularised) logistic regression on the raw logit.

    Raises ValueError when the labels are one class or the fitted slope is not positive
    (a model that ranks backwards: calibration would hide that, so it is refused).
    """
    y = np.asarray(labels).astype(int)
    x = _logits(raw).reshape(-1, 1)
    if len(np.unique(y)) < 2:
        raise ValueError("calibration needs both normal and abnormal examples")
    model = LogisticRegression(C=100.0).fit(x, y)
    slope, intercept = float(model.coef_[0, 0]), float(model.intercept_[0])
    if not slope > 0:
        raise ValueError(
            f"calibration slope {slope:.3f} is not positive: the model ranks backwards"
        )
    return Calibration(slope=slope, intercept=intercept, fitted_on=fitted_on, n=len(y))


def apply(calibration: Calibration, raw: ArrayLike) -> np.ndarray:
    """:meth:`Calibration.apply` over an array (NaN stays NaN)."""
    z = calibration.slope * _logits(raw) + calibration.intercept
    out = 1.0 / (1.0 + np.exp(-z))
    return np.where(np.isnan(np.asarray(raw, dtype=np.float64)), np.nan, out)


def threshold_for_sensitivity(labels: ArrayLike, probs: ArrayLike, target: float) -> float:
    """The highest threshold whose sensitivity on these labels is at least ``target``."""
    y = np.asarray(labels).astype(int)
    p = np.asarray(probs, dtype=np.float64)
    positives = np.sort(p[y == 1])[::-1]
    if len(positives) == 0:
        return 0.5
    needed = max(1, math.ceil(target * len(positives) - 1e-9))
    return float(positives[needed - 1])


def rates(labels: ArrayLike, probs: ArrayLike, threshold: float) -> tuple[float | None, ...]:
    """(sensitivity, specificity) at ``threshold``; None where a class is absent."""
    y = np.asarray(labels).astype(int)
    decided = np.asarray(probs, dtype=np.float64) >= threshold
    sens = float(decided[y == 1].mean()) if (y == 1).any() else None
    spec = float((~decided[y == 0]).mean()) if (y == 0).any() else None
    return sens, spec


def expected_calibration_error(labels: ArrayLike, probs: ArrayLike, bins: int = ECE_BINS) -> float:
    """ECE over equal-mass bins: the count-weighted mean |mean P - observed rate|."""
    y = np.asarray(labels, dtype=np.float64)
    p = np.asarray(probs, dtype=np.float64)
    order = np.argsort(p, kind="stable")
    total = 0.0
    for chunk in np.array_split(order, min(bins, len(p))):
        if len(chunk):
            total += len(chunk) * abs(p[chunk].mean() - y[chunk].mean())
    return float(total / max(len(p), 1))


def reliability_curve(
    labels: ArrayLike, probs: ArrayLike, bins: int = ECE_BINS
) -> list[dict[str, float]]:
    """Equal-mass bins: mean predicted P, observed abnormal rate and count per bin."""
    y = np.asarray(labels, dtype=np.float64)
    p = np.asarray(probs, dtype=np.float64)
    order = np.argsort(p, kind="stable")
    return [
        {"mean_p": float(p[c].mean()), "observed": float(y[c].mean()), "n": len(c)}
        for c in np.array_split(order, min(bins, len(p)))
        if len(c)
    ]


def _scores(labels: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    clipped = np.clip(probs, EPSILON, 1.0 - EPSILON)
    return {
        "ece": expected_calibration_error(labels, probs),
        "brier": float(brier_score_loss(labels, probs)),
        "log_loss": float(log_loss(labels, clipped, labels=[0, 1])),
    }


def calibration_metrics(
    labels: ArrayLike, probs: ArrayLike, groups: ArrayLike, *, samples: int = BOOTSTRAP_SAMPLES
) -> dict[str, Any]:
    """ECE, Brier and log-loss with study-bootstrap 95% intervals, and the diagram's bins."""
    y = np.asarray(labels).astype(int)
    p = np.asarray(probs, dtype=np.float64)
    point = _scores(y, p)
    out: dict[str, Any] = {"n": len(y)}
    for key, value in point.items():

        def stat(rows: np.ndarray, key: str = key) -> float:
            return _scores(y[rows], p[rows])[key]

        out[key] = value
        out[f"{key}_ci"] = bootstrap_ci(groups, stat, samples=samples)
    out["mean_p"] = float(p.mean()) if len(p) else None
    out["prevalence"] = float(y.mean()) if len(y) else None
    out["reliability"] = reliability_curve(y, p)
    return out


def rate_ci(
    labels: ArrayLike, probs: ArrayLike, threshold: float, groups: ArrayLike
) -> dict[str, Any]:
    """Sensitivity and specificity at ``threshold`` with study-bootstrap 95% intervals
    (exact ones where every resample agrees, :func:`training.bootstrap.rate_interval`)."""
    y = np.asarray(labels).astype(int)
    p = np.asarray(probs, dtype=np.float64)
    sens, spec = rates(y, p, threshold)
    abnormal, normal = int(y.sum()), int(len(y) - y.sum())
    caught, cleared = (
        int(np.sum((p >= threshold) & (y == 1))),
        int(np.sum((p < threshold) & (y == 0))),
    )
    return {
        "sensitivity": sens,
        "sensitivity_ci": rate_interval(
            sens, bootstrap_ci(groups, lambda r: rates(y[r], p[r], threshold)[0]), caught, abnormal
        ),
        "specificity": spec,
        "specificity_ci": rate_interval(
            spec, bootstrap_ci(groups, lambda r: rates(y[r], p[r], threshold)[1]), cleared, normal
        ),
        "n": len(y),
        "n_abnormal": int(y.sum()),
    }
