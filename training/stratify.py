"""Hidden stratification: does the model miss one kind of abnormality, or short studies?

A pooled sensitivity can hide a subgroup the model fails on (Oakden-Rayner et al. 2020):
here, fractures against drawn hardware (the synthetic generator records which it drew,
``defect_boxes.csv``; a real MURA checkout has no such file) and studies by their number
of views (one view gives the study mean nothing to average). Every figure is decided at
the part's served thresholds on the true part's model and carries a 95% study-bootstrap
interval.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from training.bootstrap import bootstrap_ci, decision_rates, rate_interval
from training.formatting import format_with_ci
from training.metrics import binary_metrics, patients_of, study_level

#: View-count groups of studies (MURA studies have 1 to ~11 views).
VIEW_GROUPS = (("1 view", 1, 1), ("2 views", 2, 2), ("3+ views", 3, 10**6))


def _sensitivity(labels: np.ndarray, decided: np.ndarray, groups: np.ndarray) -> dict[str, Any]:
    y = labels.astype(int)
    d = decided.astype(bool)
    caught, abnormal = int(d[y == 1].sum()), int(y.sum())
    sensitivity = caught / abnormal if abnormal else None
    interval = bootstrap_ci(groups, lambda rows: decision_rates(y[rows], d[rows])["sensitivity"])
    return {
        "n_abnormal": abnormal,
        "sensitivity": sensitivity,
        "sensitivity_ci": rate_interval(sensitivity, interval, caught, abnormal),
    }


def _decided(frame: pd.DataFrame, thresholds: dict[str, dict[str, float]], level: str) -> Any:
    cut = frame["body_part"].map({p: t[level] for p, t in thresholds.items()})
    return (frame["prob"] >= cut).to_numpy()


def hidden_stratification(
    test: pd.DataFrame,
    thresholds: dict[str, dict[str, float]],
    parts: list[str],
    boxes: pd.DataFrame | None,
) -> dict[str, Any]:
    """Sensitivity per defect type (image and study level) and sensitivity and
    specificity per view count (study level), all parts pooled at their own thresholds."""
    scored = test[test["body_part"].isin(parts)].dropna(subset=["prob_true_part"])
    images = scored.assign(prob=scored["prob_true_part"])
    studies = study_level(scored, "prob_true_part")
    report: dict[str, Any] = {"defects": None, "views": {}}
    if boxes is not None:
        # one row per image and defect type: an image with two fracture boxes counts once
        kinds = boxes[["rel_path", "defect"]].drop_duplicates()
        typed = images.merge(kinds, on="rel_path", how="inner")
        study_kind = typed.groupby("study_id")["defect"].agg(lambda d: "+".join(sorted(set(d))))
        typed_studies = studies.assign(defect=studies["study_id"].map(study_kind)).dropna(
            subset=["defect"]
        )
        report["defects"] = {}
        for defect in sorted(set(typed["defect"])):
            rows = typed[typed["defect"] == defect]
            study_rows = typed_studies[typed_studies["defect"] == defect]
            report["defects"][defect] = {
                "image": _sensitivity(
                    rows["label"].to_numpy(),
                    _decided(rows, thresholds, "image"),
                    patients_of(rows),
                ),
                "study": _sensitivity(
                    study_rows["label"].to_numpy(),
                    _decided(study_rows, thresholds, "study"),
                    patients_of(study_rows),
                ),
            }
    for name, low, high in VIEW_GROUPS:
        rows = studies[(studies["views"] >= low) & (studies["views"] <= high)]
        if rows.empty:
            continue
        metrics = binary_metrics(
            rows["label"],
            rows["prob"],
            0.5,
            patients_of(rows),
            decided=_decided(rows, thresholds, "study"),
        )
        report["views"][name] = {
            key: metrics[key]
            for key in (
                "n",
                "n_abnormal",
                "sensitivity",
                "sensitivity_ci",
                "specificity",
                "specificity_ci",
            )
        }
    return report


def stratification_markdown(report: dict[str, Any]) -> list[str]:
    """The report's hidden-stratification section."""
    lines = [
        "## Hidden stratification (test split, served thresholds, all parts pooled)",
        "",
    ]
    if report.get("defects"):
        lines += [
            "Sensitivity per defect type the data records (95% patient bootstrap):",
            "",
            "| defect | abnormal images | image sensitivity | abnormal studies | "
            "study sensitivity |",
            "|---|---|---|---|---|",
        ]
        for defect, m in report["defects"].items():
            lines.append(
                f"| {defect} | {m['image']['n_abnormal']} | "
                f"{format_with_ci(m['image'], 'sensitivity')} | {m['study']['n_abnormal']} | "
                f"{format_with_ci(m['study'], 'sensitivity')} |"
            )
        lines.append("")
    lines += [
        "Studies by number of views:",
        "",
        "| views | studies (abnormal) | sensitivity | specificity |",
        "|---|---|---|---|",
    ]
    for name, m in report["views"].items():
        lines.append(
            f"| {name} | {m['n']} ({m['n_abnormal']}) | {format_with_ci(m, 'sensitivity')} | "
            f"{format_with_ci(m, 'specificity')} |"
        )
    return [*lines, ""]
