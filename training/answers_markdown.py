"""The report's calibration, operating-point and eligibility blocks as Markdown and a plot.

One rendering, used by ``report.md`` and the model card, so the two never disagree. Every
test-split figure carries its patient-bootstrap 95% interval (exact where degenerate:
:mod:`training.bootstrap`).
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
        "P(abnormal) is the raw model output through a map chosen per part and level on "
        "the validation split: temperature scaling, L2-regularised Platt scaling or (with "
        "200 cases and 50 of each class) isotonic regression, whichever has the lowest "
        "log-loss when fitted on four fifths of the validation patients and scored on the "
        "fifth left out (cross-fitting), then refitted on all of them. With fewer than 10 "
        "validation cases of a class no map is fitted: the raw P is served and every answer "
        f"says it is uncalibrated. Expected calibration error over at most {ECE_BINS} "
        "equal-mass bins of at least 20 cases, with Brier score and log-loss; 95% intervals "
        f"from {BOOTSTRAP_SAMPLES} patient-bootstrap resamples. Every map is increasing, so "
        "AUROC is unchanged. Reliability diagrams: `plots/reliability.png`.",
        "",
        "| body part | level | n | map | ECE raw | ECE calibrated | Brier raw | Brier "
        "calibrated | log-loss calibrated | mean P calibrated | prevalence |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for part, levels in report["calibration"].items():
        for level, m in levels.items():
            before, after = m["before"], m["after"]
            lines.append(
                f"| {display_name(part) if level == 'image' else ''} | {level} | {after['n']} | "
                f"{m['map'].get('method', 'platt')} | {format_with_ci(before, 'ece')} | "
                f"{format_with_ci(after, 'ece')} | {_f(before['brier'])} | "
                f"{format_with_ci(after, 'brier')} | {format_with_ci(after, 'log_loss')} | "
                f"{_f(after['mean_p'])} | {_f(after['prevalence'])} |"
            )
    unfitted = [
        f"{display_name(p)} {level}"
        for p, levels in report["calibration"].items()
        for level, m in levels.items()
        if m["map"].get("method") == "none"
    ]
    if unfitted:
        lines += [
            "",
            f"**Not calibrated** (raw P served, every answer says so): {', '.join(unfitted)}: "
            "too few validation cases of a class for any map.",
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
        "sensitivity's one-sided 95% lower confidence bound (exact, Clopper-Pearson) on the "
        "validation cases that chose it still reaches the target: a missed fracture costs "
        "more than a false alarm in a triage queue, and a promise made on 13 cases must say "
        "how sure it is. Where there are too few abnormal cases for any threshold to show "
        "the target (0 missed of n needs n >= 59 for 95%), the point catches every one of "
        "them and is marked **insufficient data**: every answer at it carries that flag and "
        "the sentence below. **balanced** maximises Youden's J. A request picks one with "
        "`operating_point`; `GET /model` lists both. Thresholds are on the calibrated P. "
        "The validation figures are cross-fitted (the rule fitted on four fifths of the "
        "validation patients, applied to the fifth); the test figures, which answers and "
        "`GET /model` report, come from a split that chose nothing.",
        "",
        "| body part | level | point | threshold | guarantee (n abnormal, bound) | test "
        "sensitivity | test specificity | n (abnormal) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    sentences = []
    for part, levels in report["operating_points"].items():
        for level, points in levels.items():
            for name, m in points.items():
                first = level == "image" and name == "triage"
                guarantee = "–"
                if m.get("guarantee"):
                    guarantee = (
                        f"{m['guarantee'].replace('_', ' ')} ({m.get('guarantee_n')}, "
                        f"{_f(m.get('guarantee_lower_bound'))})"
                    )
                    sentences.append(f"- {display_name(part)}, {level}: {m['guarantee_sentence']}")
                lines.append(
                    f"| {display_name(part) if first else ''} | {level} | {name} | "
                    f"{_f(m['threshold'])} | {guarantee} | {format_with_ci(m, 'sensitivity')} | "
                    f"{format_with_ci(m, 'specificity')} | "
                    f"{m['n']} ({m['n_abnormal']}) |"
                )
    return [*lines, "", *sentences, ""]


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
        "and BodyPartExamined, when present, one of the parts the router knows (or an "
        "ambiguous limb value). **Content**: "
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
