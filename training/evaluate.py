"""Evaluation the way the MURA paper does it, plus the two-stage result users actually get.

* thresholds: per body part, Youden's J on the *validation* split at study level;
* router: image- and study-level accuracy and confusion matrix on the test split;
* each part model given the true part: image- and study-level AUROC, kappa, sensitivity,
  specificity, confusion matrix;
* two-stage: the router picks a part per view, that part's model scores the view, the
  study probability is the mean over views -- exactly what the service does.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import pandas as pd

from bonexr.labels import display_name, model_key
from training.config import TrainConfig
from training.metrics import (
    THRESHOLD_RULE,
    binary_metrics,
    choose_threshold,
    router_metrics,
    study_level,
)
from training.pipeline import BadImageLog, predict_frame

#: Published anchors (design.md section 7) printed beside our figures.
REFERENCE_KAPPA = {
    "MURA paper (DenseNet169 ensemble, test)": {"ELBOW": 0.710, "HAND": 0.851, "SHOULDER": 0.729},
    "open-source single ResNet50 (MURA valid)": {"ELBOW": 0.63, "HAND": 0.47, "SHOULDER": 0.47},
}
REFERENCE_AUROC_OVERALL = {"MURA paper (DenseNet169 ensemble, test)": 0.929}


def predict_split(
    models: dict[str, keras.Model],
    frame: pd.DataFrame,
    config: TrainConfig,
    bad_images: BadImageLog,
) -> pd.DataFrame:
    """Per-image predictions of every model: router probabilities and each part's P(abnormal).

    Adds ``router_<PART>`` columns, ``routed_part``, ``prob_<PART>`` for every part model,
    ``prob_true_part`` (the true part's model) and ``prob_routed`` (the routed part's model).
    """
    parts = list(config.body_parts)
    out = frame.reset_index(drop=True).copy()
    common: dict[str, Any] = dict(
        size=config.input_size, batch_size=config.batch_size, bad_images=bad_images
    )
    router_probs = predict_frame(models["router"], out, **common)
    for i, part in enumerate(parts):
        out[f"router_{part}"] = router_probs[:, i]
    decoded = ~np.isnan(router_probs).any(axis=1)
    routed = np.full(len(out), None, dtype=object)
    routed[decoded] = np.asarray(parts, dtype=object)[np.argmax(router_probs[decoded], axis=1)]
    out["routed_part"] = routed
    for part in parts:
        # each part model scores only the views it is asked about: its own part's (for the
        # per-part metrics) and those the router sends it (for the two-stage result)
        needed = (out["body_part"] == part).to_numpy() | (routed == part)
        probs = np.full(len(out), np.nan, dtype=np.float32)
        if needed.any():
            probs[needed] = predict_frame(models[model_key(part)], out[needed], **common)[:, 0]
        out[f"prob_{part}"] = probs
    prob_matrix = out[[f"prob_{p}" for p in parts]].to_numpy()
    lookup = {p: i for i, p in enumerate(parts)}
    true_idx = out["body_part"].map(lookup).to_numpy()
    out["prob_true_part"] = prob_matrix[np.arange(len(out)), true_idx]
    routed_idx = np.array([lookup.get(p, 0) for p in routed])
    out["prob_routed"] = np.where(decoded, prob_matrix[np.arange(len(out)), routed_idx], np.nan)
    return out


def predict_true_part(
    models: dict[str, keras.Model],
    frame: pd.DataFrame,
    config: TrainConfig,
    bad_images: BadImageLog,
) -> pd.DataFrame:
    """Each view scored by its own part's model only (``prob_true_part``): for thresholds."""
    out = frame.reset_index(drop=True).copy()
    out["prob_true_part"] = np.nan
    common: dict[str, Any] = dict(
        size=config.input_size, batch_size=config.batch_size, bad_images=bad_images
    )
    for part in config.body_parts:
        rows = (out["body_part"] == part).to_numpy()
        if rows.any():
            probs = predict_frame(models[model_key(part)], out[rows], **common)[:, 0]
            out.loc[rows, "prob_true_part"] = probs
    return out


def choose_thresholds(predictions: pd.DataFrame, parts: list[str]) -> dict[str, float]:
    """Per-part thresholds from validation predictions (study level, Youden's J)."""
    thresholds = {}
    for part in parts:
        studies = study_level(predictions[predictions["body_part"] == part], "prob_true_part")
        thresholds[part] = choose_threshold(studies["label"], studies["prob"])
    return thresholds


def _binary_report(frame: pd.DataFrame, prob_column: str, threshold: float) -> dict[str, Any]:
    usable = frame.dropna(subset=[prob_column])
    studies = study_level(frame, prob_column)
    return {
        "image": binary_metrics(usable["label"], usable[prob_column], threshold),
        "study": binary_metrics(studies["label"], studies["prob"], threshold),
    }


def _thresholded(
    frame: pd.DataFrame, prob_column: str, thresholds: dict[str, float], part_column: str
):
    """Pooled metrics across parts, each part with its own threshold (as decisions are made)."""
    usable = frame.dropna(subset=[prob_column, part_column])
    studies = study_level(usable.assign(body_part=usable[part_column]), prob_column)
    image_decisions = usable[prob_column] >= usable[part_column].map(thresholds)
    study_decisions = studies["prob"] >= studies["body_part"].map(thresholds)
    return {
        "image": binary_metrics(usable["label"], image_decisions.astype(float), 0.5)
        | {"auroc": binary_metrics(usable["label"], usable[prob_column], 0.5)["auroc"]},
        "study": binary_metrics(studies["label"], study_decisions.astype(float), 0.5)
        | {"auroc": binary_metrics(studies["label"], studies["prob"], 0.5)["auroc"]},
    }


def evaluate_predictions(
    test: pd.DataFrame, thresholds: dict[str, float], parts: list[str]
) -> dict[str, Any]:
    """The full metrics report from per-image test predictions (see :func:`predict_split`)."""
    usable = test.dropna(subset=["routed_part"])
    router_cols = [f"router_{p}" for p in parts]
    study_router = usable.groupby("study_id")[[*router_cols, "body_part"]].agg(
        {**{c: "mean" for c in router_cols}, "body_part": "first"}
    )
    study_routed = np.asarray(parts)[np.argmax(study_router[router_cols].to_numpy(), axis=1)]
    report: dict[str, Any] = {
        "thresholds": {p: {"value": thresholds[p], "rule": THRESHOLD_RULE} for p in parts},
        "router": {
            "image": router_metrics(usable["body_part"], usable["routed_part"], parts),
            "study": router_metrics(study_router["body_part"], pd.Series(study_routed), parts),
        },
        "parts": {},
        "two_stage": {"parts": {}},
    }
    for part in parts:
        rows = test[test["body_part"] == part]
        report["parts"][part] = _binary_report(rows, "prob_true_part", thresholds[part])
        report["two_stage"]["parts"][part] = _thresholded(
            rows, "prob_routed", thresholds, "routed_part"
        )
    report["overall"] = _thresholded(
        test.assign(_part=test["body_part"]), "prob_true_part", thresholds, "_part"
    )
    report["two_stage"]["overall"] = _thresholded(test, "prob_routed", thresholds, "routed_part")
    report["reference"] = {"kappa": REFERENCE_KAPPA, "auroc_overall": REFERENCE_AUROC_OVERALL}
    return report


def headline(report: dict[str, Any]) -> dict[str, Any]:
    """The few numbers a reader looks for first (also what the manifest stores)."""
    parts = report["parts"]
    return {
        "router_accuracy": report["router"]["image"]["accuracy"],
        "study_auroc": {display_name(p): m["study"]["auroc"] for p, m in parts.items()},
        "study_kappa": {display_name(p): m["study"]["kappa"] for p, m in parts.items()},
        "overall_study_auroc": report["overall"]["study"]["auroc"],
        "overall_study_kappa": report["overall"]["study"]["kappa"],
        "two_stage_study_kappa": report["two_stage"]["overall"]["study"]["kappa"],
    }
