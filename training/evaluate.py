"""Evaluation the way the MURA paper does it, plus the two-stage result users actually get.

* two operating points per body part, both Youden's J on the *validation* split: one on
  single images (what ``/predict`` applies), one on study means (``/predict/study``);
* router: image- and study-level accuracy and confusion matrix on the test split;
* each part model given the true part: image metrics at the image operating point, study
  metrics at the study operating point (AUROC, kappa, sensitivity, specificity);
* two-stage, exactly as the service answers: per image, the router picks the part and that
  part's model scores the view; per study, :mod:`bonexr.study` routes the study once
  (summed router probabilities) and averages that part's model over every view.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import pandas as pd

from bonexr.labels import display_name, model_key
from bonexr.study import route_study
from training.config import TrainConfig
from training.metrics import (
    binary_metrics,
    patients_of,
    router_metrics,
    study_level,
)
from training.pipeline import BadImageLog, predict_frame

#: The published anchor printed beside a real-data bundle's figures, cited: Rajpurkar et al.,
#: "MURA: Large Dataset for Abnormality Detection in Musculoskeletal Radiographs", arXiv
#: 1712.06957 (2017), Table 1, model row (a DenseNet169 ensemble, kappa at study level on
#: MURA's hidden test set of 207 studies). Not comparable with one model on a split of the
#: public data, and never printed beside synthetic figures.
MURA_PAPER = (
    "Rajpurkar et al. 2017 (arXiv:1712.06957), Table 1: DenseNet169 ensemble, hidden test set"
)
REFERENCE_KAPPA = {MURA_PAPER: {"ELBOW": 0.710, "HAND": 0.851, "SHOULDER": 0.729}}
REFERENCE_AUROC_OVERALL = {MURA_PAPER: 0.929}
#: MURA v1.1's public counts (the paper's 14,863 studies less the 207 hidden test studies).
MURA_V11_PUBLIC = {
    "train": {"images": 36808, "studies": 13457},
    "valid": {"images": 3197, "studies": 1199},
}


def predict_split(
    models: dict[str, keras.Model],
    frame: pd.DataFrame,
    config: TrainConfig,
    bad_images: BadImageLog,
) -> pd.DataFrame:
    """Per-image predictions of every model: router probabilities and each part's P(abnormal).

    Adds ``router_<PART>`` columns (every router part), ``routed_part`` and ``study_part``
    (the study's part by :func:`bonexr.study.route_study`), ``prob_<PART>`` for every part
    model, ``prob_true_part`` (the true part's model), ``prob_routed`` (the routed part's
    model) and ``prob_study_routed`` (the study part's model). A probability is NaN where
    the part in question has no abnormality model: the service answers 422 there.
    """
    parts = list(config.body_parts)
    classes = list(config.router_parts or parts)
    out = frame.reset_index(drop=True).copy()
    common: dict[str, Any] = dict(
        size=config.input_size, batch_size=config.batch_size, bad_images=bad_images
    )
    router_probs = predict_frame(models["router"], out, **common)
    for i, part in enumerate(classes):
        out[f"router_{part}"] = router_probs[:, i]
    decoded = ~np.isnan(router_probs).any(axis=1)
    routed = np.full(len(out), None, dtype=object)
    routed[decoded] = np.asarray(classes, dtype=object)[np.argmax(router_probs[decoded], axis=1)]
    out["routed_part"] = routed
    out["study_part"] = study_routes(out, classes)
    study_routed = out["study_part"].to_numpy()
    for part in parts:
        # each part model scores only the views it is asked about: its own part's (for the
        # per-part metrics) and those the router sends it, per view or per study (two-stage)
        needed = (out["body_part"] == part).to_numpy() | (routed == part) | (study_routed == part)
        probs = np.full(len(out), np.nan, dtype=np.float32)
        if needed.any():
            probs[needed] = predict_frame(models[model_key(part)], out[needed], **common)[:, 0]
        out[f"prob_{part}"] = probs
    out["prob_true_part"] = _prob_of(out, out["body_part"], parts)
    out["prob_routed"] = _prob_of(out, out["routed_part"], parts)
    out["prob_study_routed"] = _prob_of(out, out["study_part"], parts)
    return out


def _prob_of(predictions: pd.DataFrame, which: pd.Series, parts: list[str]) -> np.ndarray:
    """Per row, ``prob_<which>``; NaN where ``which`` has no model (or is missing)."""
    prob_matrix = predictions[[f"prob_{p}" for p in parts]].to_numpy()
    lookup = {p: i for i, p in enumerate(parts)}
    index = np.array([lookup.get(p, -1) for p in which])
    picked = prob_matrix[np.arange(len(predictions)), np.maximum(index, 0)]
    return np.asarray(np.where(index >= 0, picked, np.nan))


def study_routes(predictions: pd.DataFrame, parts: list[str]) -> pd.Series:
    """Each view's study part by the service's rule (:func:`bonexr.study.route_study` over
    the study's decodable views); None where a study has none."""
    columns = [f"router_{p}" for p in parts]
    usable = predictions.dropna(subset=columns)
    by_study = {
        study: route_study(
            [dict(zip(parts, row, strict=True)) for row in group[columns].to_numpy()]
        )
        for study, group in usable.groupby("study_id", sort=False)
    }
    return predictions["study_id"].map(by_study).astype(object)


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


def _binary_report(
    frame: pd.DataFrame, prob_column: str, thresholds: dict[str, float]
) -> dict[str, Any]:
    """Image metrics at the image operating point, study metrics at the study one."""
    usable = frame.dropna(subset=[prob_column])
    studies = study_level(frame, prob_column)
    return {
        "image": binary_metrics(
            usable["label"], usable[prob_column], thresholds["image"], patients_of(usable)
        ),
        "study": binary_metrics(
            studies["label"], studies["prob"], thresholds["study"], patients_of(studies)
        ),
    }


def _decided(
    labels: pd.Series, probs: pd.Series, decisions: pd.Series, patients: np.ndarray
) -> dict[str, Any]:
    """Pooled metrics of decisions each made at its own part's threshold: no single
    threshold exists, so none is reported."""
    metrics = binary_metrics(labels, probs, 0.5, patients, decided=decisions)
    metrics.pop("threshold")
    return metrics


def _two_stage(
    frame: pd.DataFrame,
    prob_column: str,
    part_column: str,
    study_part_column: str,
    study_prob_column: str,
    thresholds: dict[str, dict[str, float]],
) -> dict[str, Any]:
    """Decisions as they are made: each image at its part's image threshold, each study
    (one part, mean over views) at that part's study threshold."""
    images = frame.dropna(subset=[prob_column, part_column])
    image_cut = images[part_column].map({p: t["image"] for p, t in thresholds.items()})
    usable = frame.dropna(subset=[study_prob_column, study_part_column])
    studies = study_level(usable.assign(body_part=usable[study_part_column]), study_prob_column)
    study_cut = studies["body_part"].map({p: t["study"] for p, t in thresholds.items()})
    return {
        "image": _decided(
            images["label"],
            images[prob_column],
            images[prob_column] >= image_cut,
            patients_of(images),
        ),
        "study": _decided(
            studies["label"], studies["prob"], studies["prob"] >= study_cut, patients_of(studies)
        ),
    }


def _mean_of_parts(per_part: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The unweighted mean of the per-part figures (each part counts once)."""
    out: dict[str, Any] = {}
    for level in ("image", "study"):
        keys = ("auroc", "kappa", "sensitivity", "specificity")
        out[level] = {
            key: (
                float(np.mean(values))
                if (
                    values := [
                        m[level][key] for m in per_part.values() if m[level][key] is not None
                    ]
                )
                else None
            )
            for key in keys
        }
    return out


def evaluate_predictions(
    test: pd.DataFrame,
    thresholds: dict[str, dict[str, float]],
    parts: list[str],
    router_classes: list[str] | None = None,
) -> dict[str, Any]:
    """The full metrics report from per-image test predictions (see :func:`predict_split`),
    decided at ``thresholds`` (raw scores); the caller records which thresholds they were.

    The router is judged over all its parts; abnormality over ``parts`` (those with a
    model). Two-stage figures cover images of those parts; an image the router sends to a
    part without a model gets no verdict (422 in the service) and is counted as unanswered.
    """
    classes = router_classes or parts
    usable = test.dropna(subset=["routed_part"])
    study_router = usable.groupby("study_id")[["study_part", "body_part", "patient_id"]].first()
    report: dict[str, Any] = {
        "router": {
            "image": router_metrics(
                usable["body_part"], usable["routed_part"], classes, patients_of(usable)
            ),
            "study": router_metrics(
                study_router["body_part"],
                study_router["study_part"],
                classes,
                study_router["patient_id"].to_numpy(),
            ),
        },
        "parts": {},
        "two_stage": {"parts": {}},
    }
    for part in parts:
        rows = test[test["body_part"] == part]
        report["parts"][part] = _binary_report(rows, "prob_true_part", thresholds[part])
        report["two_stage"]["parts"][part] = _two_stage(
            rows, "prob_routed", "routed_part", "study_part", "prob_study_routed", thresholds
        )
    true_part = test.assign(_part=test["body_part"])
    report["overall"] = {
        "pooled": _two_stage(
            true_part, "prob_true_part", "_part", "_part", "prob_true_part", thresholds
        ),
        "mean_of_parts": _mean_of_parts(report["parts"]),
    }
    modelled = usable[usable["body_part"].isin(parts)]
    report["two_stage"]["unanswered"] = {
        "images": int((~modelled["routed_part"].isin(parts)).sum()),
        "studies": int((~modelled.groupby("study_id")["study_part"].first().isin(parts)).sum()),
    }
    report["two_stage"]["overall"] = {
        "pooled": _two_stage(
            modelled, "prob_routed", "routed_part", "study_part", "prob_study_routed", thresholds
        ),
        "mean_of_parts": _mean_of_parts(report["two_stage"]["parts"]),
    }
    report["reference"] = {"kappa": REFERENCE_KAPPA, "auroc_overall": REFERENCE_AUROC_OVERALL}
    return report


def headline(report: dict[str, Any]) -> dict[str, Any]:
    """The few numbers a reader looks for first (also what the manifest stores)."""
    parts = report["parts"]
    summary: dict[str, Any] = {
        "interval": "95% patient bootstrap, 1000 resamples, seed 0, exact Clopper-Pearson "
        "where the bootstrap is degenerate (each *_ci entry names its method)",
        "router_accuracy": report["router"]["image"]["accuracy"],
        "router_accuracy_ci": report["router"]["image"].get("accuracy_ci"),
        "study_auroc": {display_name(p): m["study"]["auroc"] for p, m in parts.items()},
        "study_auroc_ci": {display_name(p): m["study"].get("auroc_ci") for p, m in parts.items()},
        "study_kappa": {display_name(p): m["study"]["kappa"] for p, m in parts.items()},
        "study_kappa_ci": {display_name(p): m["study"].get("kappa_ci") for p, m in parts.items()},
        "image_auroc": {display_name(p): m["image"]["auroc"] for p, m in parts.items()},
        "image_kappa": {display_name(p): m["image"]["kappa"] for p, m in parts.items()},
        "overall_study_auroc": report["overall"]["pooled"]["study"]["auroc"],
        "overall_study_kappa": report["overall"]["pooled"]["study"]["kappa"],
        "two_stage_study_kappa": report["two_stage"]["overall"]["pooled"]["study"]["kappa"],
        "operating_points": {
            display_name(p): {
                level: {
                    # the served threshold (calibrated when the report has calibration)
                    "threshold": report["thresholds"][p][level]["value"],
                    **{
                        name: m[level].get(name)
                        for key in ("sensitivity", "specificity", "kappa", "auroc")
                        for name in (key, f"{key}_ci")
                    },
                }
                for level in ("image", "study")
            }
            for p, m in parts.items()
        },
    }
    if "default_operating_point" in report:
        summary["default_operating_point"] = report["default_operating_point"]
    if "calibration" in report:
        summary["calibrated_ece"] = {
            display_name(p): {level: levels[level]["after"]["ece"] for level in ("image", "study")}
            for p, levels in report["calibration"].items()
        }
    if report.get("eligibility"):
        summary["content_gate"] = {
            "test_accepted": report["eligibility"]["test"]["accepted"],
            "ood_refused": report["eligibility"]["ood"]["refused_rate"],
        }
    return summary
