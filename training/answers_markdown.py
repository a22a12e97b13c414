"""The report's calibration, operating-point and eligibility blocks as Markdown and a plot.

One rendering, used by ``report.md`` and the model card, so the two never disagree. Every
test-split figure carries its study-bootstrap 95% interval (:mod:`training.calibrate`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from bonexr.labels import display_name
from training.bootstrap import BOOTSTRAP_SAMPLES
from training.calibrate import ECE_BINS
from training.formatting import format_metric as _f
from training.formatting import format_with_ci, save_figure


def calibration_markdown(report: dict[str, Any]) -> list[str]:
    """ECE before and after the Platt maps, per part and level (test split)."""
    if "calibration" not in report:
        return []
    lines = [
        "## Calibration (test split)",
        "",
        "P(abnormal) is the raw model output through a Platt map (two parameters per part "
        "and level, fitted on validation). Expected calibration error over "
        f"{ECE_BINS} equal-mass bins, 95% intervals from {BOOTSTRAP_SAMPLES} study-bootstrap "
        "resamples. The map is increasing, so AUROC is unchanged. Reliability diagrams: "
        "`plots/reliability.png`.",
        "",
        "| body part | level | n | ECE raw | ECE calibrated | Brier raw | Brier calibrated "
        "| mean P calibrated | prevalence |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for part, levels in report["calibration"].items():
        for level, m in levels.items():
            before, after = m["before"], m["after"]
            lines.append(
                f"| {display_name(part) if level == 'image' else ''} | {level} | {after['n']} | "
                f"{format_with_ci(before, 'ece')} | "
                f"{format_with_ci(after, 'ece')} | {_f(before['brier'])} | "
                f"{_f(after['brier'])} | {_f(after['mean_p'])} | {_f(after['prevalence'])} |"
            )
    unfitted = [
        f"{display_name(p)} {level}"
        for p, levels in report["calibration"].items()
        for level, m in levels.items()
        if str(m["map"].get("fitted_on", "")).startswith("identity")
    ]
    if unfitted:
        lines += [
            "",
            f"**Not calibrated** (identity map, raw P served): {', '.join(unfitted)}: "
            "validation could not fit a map (one class only, or a model ranking backwards).",
        ]
    return [*lines, ""]


def operating_points_markdown(report: dict[str, Any]) -> list[str]:
    """Both operating points, their thresholds and test sensitivity / specificity."""
    if "operating_points" not in report:
        return []
    default = report.get("default_operating_point", "triage")
    lines = [
        "## Operating points (thresholds chosen on validation, measured on test)",
        "",
        f"**triage** (served by default: `{default}`) is the highest threshold whose "
        "validation sensitivity reaches the target: a missed fracture costs more than a "
        "false alarm in a triage queue. **balanced** maximises Youden's J (sensitivity and "
        "specificity weighted alike). A request picks one with `operating_point`; "
        "`GET /model` lists both. Thresholds are on the calibrated P.",
        "",
        "| body part | level | point | threshold | sensitivity | specificity | n (abnormal) |",
        "|---|---|---|---|---|---|---|",
    ]
    for part, levels in report["operating_points"].items():
        for level, points in levels.items():
            for name, m in points.items():
                first = level == "image" and name == "triage"
                lines.append(
                    f"| {display_name(part) if first else ''} | {level} | {name} | "
                    f"{_f(m['threshold'])} | {format_with_ci(m, 'sensitivity')} | "
                    f"{format_with_ci(m, 'specificity')} | "
                    f"{m['n']} ({m['n_abnormal']}) |"
                )
    lines += [
        "",
        "With tens of abnormal validation studies per part the triage threshold's own "
        "sensitivity is uncertain: the test interval above is the honest figure, and a site "
        "should confirm it on its own labelled studies before relying on it.",
        "",
    ]
    return lines


def eligibility_markdown(report: dict[str, Any]) -> list[str]:
    """What the content gate accepts (test views) and refuses (the OOD evaluation set)."""
    block = report.get("eligibility")
    if not block:
        return []
    test, ood = block["test"], block["ood"]
    auroc = block["separation_auroc"]
    lines = [
        '## Eligibility: what "not eligible" means',
        "",
        "Two gates run before any verdict. **Metadata** (DICOM): Modality must be CR or DX "
        "and BodyPartExamined, when present, an upper-limb (or ambiguous) value. **Content**: "
        "the router's pooled features are scored by their Mahalanobis distance to the "
        "nearest body part's training mean (shared Ledoit-Wolf covariance); the score is a "
        "second output of the router's ONNX graph, so every runtime and precision computes "
        f"it. Its limit, **{block['limit']:.2f}**, accepts {block['acceptance_target']:.0%} "
        f"of the {block['validation_views']} validation views. Refused images get `422` "
        '`code: "not_eligible"` with the reason (`BONEXR_ELIGIBILITY=warn` answers them '
        "with the reason as a warning).",
        "",
        f"- In-distribution test views accepted: "
        f"**{format_with_ci(test, 'accepted')}** ({test['refused']} of "
        f"{test['n']} refused).",
        f"- Out-of-distribution evaluation set refused: **{_f(ood['refused_rate'])}** "
        f"({ood['refused']} of {ood['n']}), by kind:",
        "",
        "| kind | n | refused | by metadata | by content |",
        "|---|---|---|---|---|",
    ]
    for kind, c in ood["kinds"].items():
        lines.append(
            f"| {kind} | {c['n']} | {_f(c['refused_rate'])} | {c['metadata']} | {c['content']} |"
        )
    lines += [
        "",
        f"Separation of test views from the OOD set (AUROC): Mahalanobis "
        f"**{_f(auroc['mahalanobis'])}**, one minus the router's maximum softmax "
        f"{_f(auroc['max_softmax'])} (the simpler alternative; the gate serves the better). "
        "The OOD set is generated (photos, drawings, other-modality and other-anatomy "
        "frames, blank and noise images; `training/ood_set.py`): it shows the gate works on "
        "what it was tried on, not that it catches everything a hospital may send.",
        "",
    ]
    return lines


def answer_sections(report: dict[str, Any]) -> list[str]:
    """Calibration, operating points and eligibility, in that order."""
    return [
        *calibration_markdown(report),
        *operating_points_markdown(report),
        *eligibility_markdown(report),
    ]


def plot_reliability(report: dict[str, Any], path: Path) -> None:
    """Reliability diagrams per part and level: raw and calibrated P against the observed
    abnormal rate (equal-mass bins on the test split)."""
    calibration = report.get("calibration")
    if not calibration:
        return
    parts = list(calibration)
    fig, axes = plt.subplots(2, len(parts), figsize=(4 * len(parts), 7.5), squeeze=False)
    for col, part in enumerate(parts):
        for row, level in enumerate(("image", "study")):
            ax = axes[row][col]
            ax.plot([0, 1], [0, 1], color="grey", lw=1, ls="--")
            for key, label in (("before", "raw"), ("after", "calibrated")):
                m = calibration[part][level][key]
                bins = m["reliability"]
                ax.plot(
                    [b["mean_p"] for b in bins],
                    [b["observed"] for b in bins],
                    marker="o",
                    label=f"{label} (ECE {m['ece']:.3f})",
                )
            ax.set(
                title=f"{display_name(part)}, {level}",
                xlabel="mean predicted P",
                ylabel="observed abnormal rate",
                xlim=(0, 1),
                ylim=(0, 1),
            )
            ax.legend(loc="upper left", fontsize=8)
    save_figure(fig, path)
