"""Human-readable evaluation output: ``report.md`` and PNG plots.

The JSON report is the source; the Markdown and plots are renderings of it (plus the
per-image predictions for the ROC curves and the training logs for the curves).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from sklearn.metrics import roc_curve

from bonexr.labels import display_name
from training.answers_markdown import answer_sections
from training.baselines import baselines_markdown
from training.formatting import format_interval, format_metric, format_with_ci, save_figure
from training.metrics import study_level
from training.stratify import stratification_markdown


def localisation_markdown(report: dict[str, Any]) -> list[str]:
    """The heat-map localisation section (:func:`training.localisation.pointing_game`'s
    report): the maps beside every baseline, per part and per defect type."""
    baselines = [
        b for b in ("centre", "random", "training_mean", "brightest") if b in report["overall"]
    ]
    names = {
        "centre": "centre",
        "random": "random point",
        "training_mean": "training mean",
        "brightest": "brightest (blurred)",
    }
    lines = [
        "## Where the model looked (heat maps, test split)",
        "",
        f"{report['method']}; tolerance {report['tolerance']}. Hit rates with "
        f"{report['interval']}. Scored on abnormal test images whose defect box the "
        "data records (drawn by the synthetic generator, or annotated: FracAtlas). Baselines: "
        + "; ".join(f"**{names[b]}**: {report['baselines'][b]}" for b in baselines)
        + ".",
        "",
        "| group | images | heat map | "
        + " | ".join(names[b] for b in baselines)
        + " | map - brightest |",
        "|---|---|---|" + "---|" * len(baselines) + "---|",
    ]
    groups = {
        **{display_name(p): m for p, m in report["parts"].items()},
        **{d: m for d, m in report.get("defects", {}).items()},
        "**overall**": report["overall"],
    }
    for label, m in groups.items():
        if not m.get("n"):
            continue
        gap = m.get("difference", {}).get("brightest", {})
        cells = [
            label,
            str(m["n"]),
            format_with_ci(m, "heatmap"),
            *(format_with_ci(m, b) for b in baselines),
            format_interval(gap.get("value"), gap.get("ci")),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    target = report.get("target")
    if target:
        verdict = "met" if target["met"] else "NOT met: the maps are unvalidated"
        failed = [k for k, ok in target["checks"].items() if not ok]
        lines += [
            "",
            f"Target (at least the brightness baseline overall and on fractures, >= 50% on "
            f"every part): **{verdict}**"
            + (f" (failed: {', '.join(failed)})" if failed else "")
            + ".",
        ]
    lines += ["", "Examples: `plots/heatmaps.png`.", ""]
    return lines


def _row(label: str, m: dict[str, Any], *extra: str) -> str:
    """One Markdown table row of binary metrics (n, AUROC, kappa, sensitivity, specificity)."""
    cells = [
        label,
        str(m["n"]),
        *(format_with_ci(m, k) for k in ("auroc", "kappa", "sensitivity", "specificity")),
        *extra,
    ]
    return "| " + " | ".join(cells) + " |"


#: The two summary rows of the per-part tables: all parts pooled, and the mean of parts.
_SUMMARIES = (("pooled", "all parts pooled"), ("mean_of_parts", "mean of parts"))


def published_comparison(report: dict[str, Any], parts: list[str], synthetic: bool) -> list[str]:
    """The MURA paper's study kappas beside ours: only for real MURA-style data, with the
    caveat (another data set's kappa, FracAtlas's, is not comparable with MURA's)."""
    lines = ["## Compared with published MURA results (Cohen's kappa, study level)", ""]
    layout = report.get("dataset", {}).get("layout")
    if layout not in (None, "mura", "peer"):
        return [
            *lines,
            f"Not shown: this bundle learned from another data set ({layout}); MURA's "
            "published figures are on MURA's hidden test set and MURA's wider 'abnormal' "
            "label, and say nothing about these.",
            "",
        ]
    if synthetic:
        return [
            *lines,
            "Not shown: these figures are on synthetic images, and a kappa on drawn shapes "
            "has nothing to say about a kappa on radiographs.",
            "",
        ]
    refs = report["reference"]["kappa"]
    lines += [
        "Context, not a benchmark: the paper's figures are an ensemble on MURA's hidden test "
        "set; ours are one model per part on a split of the public data, at the served "
        "(triage) study threshold chosen on validation.",
        "",
        "| body part | this model | " + " | ".join(refs) + " |",
        "|---" * (2 + len(refs)) + "|",
    ]
    for part in parts:
        ours = format_with_ci(report["parts"][part]["study"], "kappa")
        cells = [format_metric(ref.get(part)) for ref in refs.values()]
        lines.append(f"| {display_name(part)} | {ours} | " + " | ".join(cells) + " |")
    return [
        *lines,
        "",
        "Study probability = mean of its views' raw probabilities (MURA), then the part's "
        "study-level calibration.",
        "",
    ]


def render_markdown(report: dict[str, Any], *, name: str, synthetic: bool) -> str:
    """The report as Markdown, with the MURA reference figures beside ours."""
    parts = list(report["parts"])
    lines = [f"# Evaluation report: {name}", ""]
    if synthetic:
        lines += [
            "> **Synthetic demo data.** These figures say the pipeline works; they say "
            "nothing about performance on radiographs.",
            "",
        ]
    lines += _data_section(report.get("counts", {}))
    lines += _router_section(report)
    lines += _operating_points_section(report, parts)
    lines += _two_stage_section(report, parts)
    lines += ["", *answer_sections(report)]
    if report.get("stratification"):
        lines += ["", *stratification_markdown(report["stratification"])]
    if report.get("baselines"):
        lines += ["", *baselines_markdown(report["baselines"])]
    if report.get("localisation"):
        lines += ["", *localisation_markdown(report["localisation"])]
    lines += ["", *published_comparison(report, parts, synthetic)]
    lines += _skipped_section(report.get("bad_images", {}))
    lines += [
        "## Plots",
        "",
        "![ROC](plots/roc.png)",
        "",
        "![Confusion](plots/confusion.png)",
        "",
        "![Reliability](plots/reliability.png)",
        "",
        "![Training curves](plots/training_curves.png)",
        "",
    ]
    return "\n".join(lines)


def _data_section(counts: dict[str, Any]) -> list[str]:
    """Images, studies and patients per split (nothing when the report has no counts)."""
    if not counts:
        return []
    lines = ["## Data", "", "| split | images | studies | patients |", "|---|---|---|---|"]
    for split, c in counts.items():
        lines.append(f"| {split} | {c['images']} | {c['studies']} | {c['patients']} |")
    lines.append("")
    return lines


def _router_section(report: dict[str, Any]) -> list[str]:
    """The body-part router's accuracy and confusion matrix, naming the parts it knows
    without an abnormality model."""
    router = report["router"]
    classes = router["image"]["classes"]
    without_model = [display_name(p) for p in classes if p not in report["parts"]]
    lines = [
        "## Body-part router (test split)",
        "",
        f"Image-level accuracy **{format_with_ci(router['image'], 'accuracy')}** "
        f"(n={router['image']['n']}); study-level accuracy "
        f"{format_with_ci(router['study'], 'accuracy')}. Intervals throughout: 95% patient "
        "bootstrap, 1000 resamples, seed 0 (exact where degenerate; report.json names each).",
        "",
        "The router knows every part below; "
        + (
            f"{', '.join(without_model)} have no abnormality model (the service answers 422 "
            "for them rather than another part's verdict). "
            if without_model
            else ""
        )
        + "Confusion matrix (rows true, columns predicted):",
        "",
        "| true \\ predicted | " + " | ".join(display_name(p) for p in classes) + " |",
        "|---" * (len(classes) + 1) + "|",
    ]
    for part, row in zip(classes, router["image"]["confusion_matrix"], strict=True):
        lines.append(f"| {display_name(part)} | " + " | ".join(str(v) for v in row) + " |")
    return lines


def _operating_points_section(report: dict[str, Any], parts: list[str]) -> list[str]:
    """Each part's abnormality model at its image and study thresholds (true body part),
    then all parts pooled and the mean of parts."""
    lines = [
        "",
        "## Abnormality at both operating points (test split, true body part)",
        "",
        "Each part has two thresholds at the served operating point, both chosen on the "
        "validation split: the **image** one is what `POST /predict` applies to a single "
        "view, the **study** one what `POST /predict/study` applies to the mean over a "
        "study's views (raw scores here; the served, calibrated thresholds are in the "
        "operating-points table below).",
        "",
        "| body part | level | n | AUROC | kappa | sensitivity | specificity | threshold |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for part in parts:
        for level in ("image", "study"):
            m = report["parts"][part][level]
            label = display_name(part) if level == "image" else ""
            lines.append(_row(f"{label} | {level}", m, format_metric(m["threshold"])))
    for key, title in _SUMMARIES:
        for level in ("image", "study"):
            m = {"n": "", **report["overall"][key][level]}
            lines.append(_row(f"**{title}** | {level}", m, "per part"))
    return lines


def _two_stage_section(report: dict[str, Any], parts: list[str]) -> list[str]:
    """Router then the routed part's model, as the service answers, per true body part."""
    two_stage = report["two_stage"]
    unanswered = two_stage.get("unanswered", {})
    lines = [
        "",
        "## Two-stage, as the service answers (router, then the routed part's model)",
        "",
        "Images: routed one by one, decided at the image threshold. Studies: routed once "
        "(summed router probabilities), every view scored by that part's model, the mean "
        "decided at the study threshold.",
        "",
        f"Unanswered (routed to a part without a model): "
        f"{unanswered.get('images', 0)} images, {unanswered.get('studies', 0)} studies.",
        "",
        "| true body part | level | n | AUROC | kappa | sensitivity | specificity |",
        "|---|---|---|---|---|---|---|",
    ]
    for part in parts:
        for level in ("image", "study"):
            m = two_stage["parts"][part][level]
            label = display_name(part) if level == "image" else ""
            lines.append(_row(f"{label} | {level}", m))
    for key, title in _SUMMARIES:
        for level in ("image", "study"):
            m = {"n": "", **two_stage["overall"][key][level]}
            lines.append(_row(f"**{title}** | {level}", m))
    return lines


def _skipped_section(bad: dict[str, Any]) -> list[str]:
    """The images the run could not read, with why (the first 50)."""
    if not bad:
        return []
    lines = [f"## Skipped images ({len(bad)})", ""] + [
        f"- `{p}`: {r}" for p, r in list(bad.items())[:50]
    ]
    lines.append("")
    return lines


def plot_roc(test: pd.DataFrame, parts: list[str], path: Path) -> None:
    """Study-level ROC per body part (true part) with AUROC in the legend."""
    fig, ax = plt.subplots(figsize=(5, 5))
    for part in parts:
        studies = study_level(test[test["body_part"] == part], "prob_true_part")
        if studies["label"].nunique() < 2:
            continue
        fpr, tpr, _ = roc_curve(studies["label"], studies["prob"])
        auc = np.trapezoid(tpr, fpr)
        ax.plot(fpr, tpr, label=f"{display_name(part)} (AUROC {auc:.3f})")
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", title="Study-level ROC (test)")
    ax.legend(loc="lower right")
    save_figure(fig, path)


def plot_confusions(report: dict[str, Any], path: Path) -> None:
    """Router confusion matrix plus each part's study-level confusion matrix."""
    parts = list(report["parts"])
    classes = report["router"]["image"]["classes"]
    fig, axes = plt.subplots(1, 1 + len(parts), figsize=(3.2 * (1 + len(parts)) + 1, 3.4))
    _matrix(
        axes[0],
        report["router"]["image"]["confusion_matrix"],
        [display_name(p) for p in classes],
        "Router (images)",
    )
    for ax, part in zip(axes[1:], parts, strict=True):
        _matrix(
            ax,
            report["parts"][part]["study"]["confusion_matrix"],
            ["normal", "abnormal"],
            f"{display_name(part)} (studies)",
        )
    save_figure(fig, path)


def _matrix(ax, matrix: list[list[int]], labels: list[str], title: str) -> None:
    data = np.asarray(matrix)
    ax.imshow(data, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=30)
    ax.set_yticks(range(len(labels)), labels)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    for (i, j), value in np.ndenumerate(data):
        ax.text(
            j,
            i,
            str(value),
            ha="center",
            va="center",
            color="white" if value > data.max() / 2 else "black",
        )


def plot_training_curves(histories: dict[str, pd.DataFrame], path: Path) -> None:
    """Loss and the monitored metric per epoch, for every model."""
    fig, axes = plt.subplots(
        2, max(1, len(histories)), figsize=(3.4 * max(1, len(histories)), 5.5), squeeze=False
    )
    for col, (name, history) in enumerate(histories.items()):
        epochs = history["epoch"] + 1
        axes[0, col].plot(epochs, history["loss"], label="train")
        if "val_loss" in history:
            axes[0, col].plot(epochs, history["val_loss"], label="validation")
        axes[0, col].set(title=f"{name}: loss", xlabel="epoch")
        axes[0, col].legend()
        metric = "accuracy" if name == "router" else "auc"
        if metric in history:
            axes[1, col].plot(epochs, history[metric], label="train")
        if f"val_{metric}" in history:
            axes[1, col].plot(epochs, history[f"val_{metric}"], label="validation")
        axes[1, col].set(title=f"{name}: {metric}", xlabel="epoch")
        axes[1, col].legend()
    save_figure(fig, path)
