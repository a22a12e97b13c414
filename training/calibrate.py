"""Calibration and operating points, fitted on the validation split at export.

* :func:`choose_calibration`: the per-part, per-level map of :mod:`bonexr.calibration`,
  chosen among temperature scaling, regularised Platt scaling and (above
  :data:`MIN_ISOTONIC_CASES`) isotonic regression by their cross-fitted log-loss over the
  validation patients; below :data:`MIN_CLASS_CASES` of either class none is fitted and
  the raw P is served, marked uncalibrated;
* :func:`guaranteed_threshold`: the triage rule (the highest threshold whose
  sensitivity's one-sided 95% lower bound reaches the target); the in-sample rule it
  replaced, :func:`threshold_for_sensitivity` (the highest threshold that still
  catches ``target`` of the validation's abnormal images or studies), kept as what the
  guarantee is measured against in the tests;
* :func:`calibration_metrics`: equal-mass ECE, Brier score and log-loss
  (scikit-learn), with patient-bootstrap intervals (:func:`bootstrap_ci`).

Thresholds are chosen on the *raw* validation scores and carried into calibrated space
through the part's (strictly increasing) map, so the decisions are the same whichever
space they are made in and the calibration fit cannot move a threshold: the two are kept
apart by construction.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from scipy.optimize import minimize_scalar
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import brier_score_loss, log_loss
from sklearn.model_selection import StratifiedGroupKFold

from bonexr.calibration import EPSILON, ISOTONIC_IDENTITY_SHARE, Calibration
from bonexr.errors import DataError
from bonexr.manifest import GUARANTEED, INSUFFICIENT_DATA
from training.bootstrap import (
    BOOTSTRAP_SAMPLES,
    bootstrap_ci,
    clopper_pearson_lower,
    rate_interval,
)

#: Equal-mass bins of the expected calibration error and the reliability diagrams: at
#: most this many, and never fewer than :data:`ECE_MIN_PER_BIN` cases a bin.
ECE_BINS = 15
ECE_MIN_PER_BIN = 20
#: The calibrators, and the fewest cases of each class a parametric map is fitted on.
CALIBRATORS: tuple[str, ...] = ("temperature", "platt", "isotonic")
MIN_CLASS_CASES = 10
#: Isotonic regression fits a step per group of cases: only with this many in all (and
#: :data:`MIN_ISOTONIC_CLASS_CASES` of each class) is it a candidate.
MIN_ISOTONIC_CASES = 200
MIN_ISOTONIC_CLASS_CASES = 50
#: Folds of the cross-fitting over the validation split's patients.
CROSS_FIT_FOLDS = 5
#: Platt scaling's L2 penalty (scikit-learn's C): regularised, as small data needs.
PLATT_C = 1.0
#: The triage operating point's default target sensitivity (``--target-sensitivity``).
DEFAULT_TARGET_SENSITIVITY = 0.95


def _logits(probs: ArrayLike) -> np.ndarray:
    p = np.clip(np.asarray(probs, dtype=np.float64), EPSILON, 1.0 - EPSILON)
    return np.asarray(np.log(p / (1.0 - p)))


def fit_platt(labels: ArrayLike, raw: ArrayLike, fitted_on: str = "validation") -> Calibration:
    """Platt scaling: L2-regularised logistic regression (C = :data:`PLATT_C`) on the logit.

    Raises ValueError when the labels are one class or the fitted slope is not positive
    (a model that ranks backwards: calibration would hide that, so it is refused).
    """
    y = np.asarray(labels).astype(int)
    x = _logits(raw).reshape(-1, 1)
    if len(np.unique(y)) < 2:
        raise ValueError("calibration needs both normal and abnormal examples")
    model = LogisticRegression(C=PLATT_C).fit(x, y)
    slope, intercept = float(model.coef_[0, 0]), float(model.intercept_[0])
    if not slope > 0:
        raise ValueError(
            f"calibration slope {slope:.3f} is not positive: the model ranks backwards"
        )
    return Calibration(slope=slope, intercept=intercept, fitted_on=fitted_on, n=len(y))


def fit_temperature(
    labels: ArrayLike, raw: ArrayLike, fitted_on: str = "validation"
) -> Calibration:
    """Temperature scaling: the one ``T`` in [0.05, 20] minimising the log-loss of
    ``sigmoid(logit(raw) / T)`` (Guo et al. 2017)."""
    y = np.asarray(labels).astype(int)
    z = _logits(raw)
    if len(np.unique(y)) < 2:
        raise ValueError("calibration needs both normal and abnormal examples")

    def loss(log_t: float) -> float:
        p = 1.0 / (1.0 + np.exp(-z / np.exp(log_t)))
        return float(log_loss(y, np.clip(p, EPSILON, 1 - EPSILON), labels=[0, 1]))

    best = minimize_scalar(loss, bounds=(np.log(0.05), np.log(20.0)), method="bounded")
    return Calibration(
        method="temperature", slope=float(np.exp(-best.x)), intercept=0.0,
        fitted_on=fitted_on, n=len(y),
    )  # fmt: skip


def fit_isotonic(labels: ArrayLike, raw: ArrayLike, fitted_on: str = "validation") -> Calibration:
    """Isotonic regression of the label on the raw P, stored as its breakpoints."""
    y = np.asarray(labels).astype(int)
    x = np.asarray(raw, dtype=np.float64)
    if len(np.unique(y)) < 2:
        raise ValueError("calibration needs both normal and abnormal examples")
    model = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(x, y)
    xs, ys = model.X_thresholds_, model.y_thresholds_
    if len(xs) < 2:
        raise ValueError("isotonic regression found a single level: the model does not rank")
    return Calibration(
        method="isotonic", points_raw=[float(v) for v in xs],
        points_calibrated=[float(v) for v in ys], fitted_on=fitted_on, n=len(y),
    )  # fmt: skip


FITTERS = {"temperature": fit_temperature, "platt": fit_platt, "isotonic": fit_isotonic}


def minimum_cases(method: str) -> tuple[int, int]:
    """(cases in all, cases of each class) a calibrator needs."""
    if method == "isotonic":
        return MIN_ISOTONIC_CASES, MIN_ISOTONIC_CLASS_CASES
    return 2 * MIN_CLASS_CASES, MIN_CLASS_CASES


def cross_fit_folds(labels: np.ndarray, groups: np.ndarray, folds: int = CROSS_FIT_FOLDS) -> list:
    """Held-out row indices of K folds over whole patients, stratified by label (seeded)."""
    patients = len(np.unique(groups))
    k = min(folds, patients, int(np.bincount(labels, minlength=2).min()))
    if k < 2:
        return []
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=0)
    return [held for _, held in splitter.split(np.zeros(len(labels)), labels, groups)]


def cross_fitted(
    fit: Callable[[np.ndarray, np.ndarray], Any],
    use: Callable[[Any, np.ndarray], np.ndarray],
    labels: np.ndarray,
    raw: np.ndarray,
    groups: np.ndarray,
) -> np.ndarray | None:
    """Out-of-fold outputs: each fold's rows through what ``fit`` learnt on the others
    (None when the data cannot be split into two folds with both classes)."""
    folds = cross_fit_folds(labels, groups)
    if not folds:
        return None
    out = np.full(len(labels), np.nan)
    for held in folds:
        kept = np.setdiff1d(np.arange(len(labels)), held)
        out[held] = use(fit(labels[kept], raw[kept]), raw[held])
    return out


def choose_calibration(
    labels: ArrayLike,
    raw: ArrayLike,
    groups: ArrayLike,
    *,
    requested: str = "auto",
    level: str = "study",
) -> Calibration:
    """The calibrator with the lowest cross-fitted log-loss on these validation cases,
    refitted on all of them; ``none`` (raw P, marked uncalibrated) where no candidate has
    the cases it needs. ``requested`` names one calibrator: too few cases for it is a
    :class:`DataError` naming the number needed."""
    y = np.asarray(labels).astype(int)
    p = np.asarray(raw, dtype=np.float64)
    g = np.asarray(groups)
    counts = (len(y), int(y.sum()), int(len(y) - y.sum()))
    eligible = [
        m for m in CALIBRATORS if counts[0] >= minimum_cases(m)[0]
        and min(counts[1:]) >= minimum_cases(m)[1]
    ]  # fmt: skip
    if requested not in ("auto", "none"):
        if requested not in eligible:
            total, per_class = minimum_cases(requested)
            raise DataError(
                f"{level}-level calibration by {requested} needs at least {total} validation "
                f"cases with {per_class} of each class; there are {counts[0]} "
                f"({counts[1]} abnormal, {counts[2]} normal)"
            )
        eligible = [requested]
    selection: dict[str, float | int | str] = {"cases": counts[0], "abnormal": counts[1]}
    if requested == "none" or not eligible:
        selection["reason"] = (
            "not requested" if requested == "none" else f"fewer than {MIN_CLASS_CASES} "
            f"validation cases of a class ({counts[1]} abnormal, {counts[2]} normal)"
        )  # fmt: skip
        return Calibration(method="none", fitted_on="none: raw P served", n=max(1, counts[0]),
                           selection=selection)  # fmt: skip
    scores: dict[str, float] = {}
    for method in eligible:
        try:
            oof = cross_fitted(FITTERS[method], apply, y, p, g)
        except ValueError:
            continue
        if oof is not None and not np.isnan(oof).any():
            scores[method] = float(log_loss(y, np.clip(oof, EPSILON, 1 - EPSILON), labels=[0, 1]))
    chosen = min(scores, key=lambda m: scores[m]) if scores else eligible[0]
    selection.update({f"cross_fitted_log_loss_{m}": v for m, v in scores.items()})
    selection["chosen"] = chosen
    try:
        fitted = FITTERS[chosen](y, p, "validation")
    except ValueError as error:
        selection["reason"] = str(error)
        return Calibration(method="none", fitted_on=f"none: {error}", n=max(1, counts[0]),
                           selection=selection)  # fmt: skip
    return fitted.model_copy(update={"selection": selection})


def apply(calibration: Calibration, raw: ArrayLike) -> np.ndarray:
    """:meth:`Calibration.apply` over an array (NaN stays NaN)."""
    values = np.asarray(raw, dtype=np.float64)
    if calibration.method == "none":
        return values.copy()
    if calibration.method == "isotonic":
        clipped = np.clip(np.nan_to_num(values, nan=0.0), 0.0, 1.0)
        step = np.interp(clipped, calibration.points_raw, calibration.points_calibrated)
        out = (1 - ISOTONIC_IDENTITY_SHARE) * step + ISOTONIC_IDENTITY_SHARE * clipped
    else:
        z = calibration.slope * _logits(values) + calibration.intercept
        out = 1.0 / (1.0 + np.exp(-z))
    return np.where(np.isnan(values), np.nan, out)


def threshold_for_sensitivity(labels: ArrayLike, probs: ArrayLike, target: float) -> float:
    """The highest threshold whose sensitivity on these labels is at least ``target``."""
    y = np.asarray(labels).astype(int)
    p = np.asarray(probs, dtype=np.float64)
    positives = np.sort(p[y == 1])[::-1]
    if len(positives) == 0:
        return 0.5
    needed = max(1, math.ceil(target * len(positives) - 1e-9))
    return float(positives[needed - 1])


@dataclass(frozen=True)
class GuaranteedThreshold:
    """A triage threshold and the guarantee it carries on the data that chose it."""

    threshold: float
    status: str  # GUARANTEED or INSUFFICIENT_DATA
    lower_bound: float
    abnormal: int
    caught: int


def guaranteed_threshold(labels: ArrayLike, probs: ArrayLike, target: float) -> GuaranteedThreshold:
    """The highest threshold whose sensitivity's one-sided 95% Clopper-Pearson lower bound
    on these labels reaches ``target``.

    The threshold is the k-th highest abnormal score for the least k with
    ``lower(k of n) >= target``; for continuous scores the true sensitivity at the k-th
    order statistic is Beta(k, n - k + 1), so the guarantee holds with 95% confidence.
    Where even catching all n cannot reach it (n < 59 for 0.95), the most sensitive such
    point is returned (every abnormal case caught) marked ``insufficient_data``.
    """
    y = np.asarray(labels).astype(int)
    p = np.asarray(probs, dtype=np.float64)
    positives = np.sort(p[y == 1])[::-1]
    n = len(positives)
    if n == 0:
        return GuaranteedThreshold(0.5, INSUFFICIENT_DATA, 0.0, 0, 0)
    for k in range(1, n + 1):
        if clopper_pearson_lower(k, n) >= target:
            break
    threshold = float(positives[k - 1])
    caught = int(np.sum(positives >= threshold))
    bound = clopper_pearson_lower(caught, n)
    status = GUARANTEED if bound >= target else INSUFFICIENT_DATA
    return GuaranteedThreshold(threshold, status, bound, n, caught)


def rates(labels: ArrayLike, probs: ArrayLike, threshold: float) -> tuple[float | None, ...]:
    """(sensitivity, specificity) at ``threshold``; None where a class is absent."""
    y = np.asarray(labels).astype(int)
    decided = np.asarray(probs, dtype=np.float64) >= threshold
    sens = float(decided[y == 1].mean()) if (y == 1).any() else None
    spec = float((~decided[y == 0]).mean()) if (y == 0).any() else None
    return sens, spec


def ece_bins(n: int, most: int = ECE_BINS) -> int:
    """Equal-mass bins for ``n`` cases: at most ``most``, at least 20 cases a bin."""
    return max(1, min(most, n // ECE_MIN_PER_BIN))


def expected_calibration_error(labels: ArrayLike, probs: ArrayLike, bins: int = ECE_BINS) -> float:
    """ECE over equal-mass bins (at most ``bins``, each of at least 20 cases): the
    count-weighted mean |mean P - observed rate|."""
    y = np.asarray(labels, dtype=np.float64)
    p = np.asarray(probs, dtype=np.float64)
    order = np.argsort(p, kind="stable")
    total = 0.0
    for chunk in np.array_split(order, ece_bins(len(p), bins)):
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
        for c in np.array_split(order, ece_bins(len(p), bins))
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
