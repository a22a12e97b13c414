"""k-fold cross-validation by patient, for datasets too small for one fixed test split.

Fold ``i`` is the test set, fold ``i+1`` the validation set (thresholds, early stopping),
the rest the training set; patients never cross folds. Every fold trains the full set of
models through the same code as ``bonexr train`` and is evaluated the same way; the
summary reports mean and standard deviation of the headline metrics.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bonexr.atomic import write_json_atomic
from bonexr.errors import ConfigError
from bonexr.labels import ALL_BODY_PARTS, display_name
from training.config import TrainConfig
from training.dataset import index_dataset
from training.distribute import get_distribution
from training.formatting import format_metric
from training.io import say, write_text_atomic
from training.pipeline import BadImageLog
from training.run import evaluate_run, prepare_run, start_device, train_all, with_router_parts
from training.split import assign_folds, write_split


def fold_split(index: pd.DataFrame, folds: pd.Series, fold: int, k: int) -> pd.DataFrame:
    """The train/validation/test assignment for one fold."""
    split = index.copy()
    split["split"] = np.where(
        folds == fold, "test", np.where(folds == (fold + 1) % k, "validation", "train")
    )
    return split


def summarize(per_fold: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Mean and standard deviation over folds of every numeric headline metric."""
    flat: dict[str, list[float]] = {}

    def collect(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for sub, v in value.items():
                collect(f"{prefix}.{sub}" if prefix else str(sub), v)
        elif isinstance(value, int | float) and not isinstance(value, bool):
            flat.setdefault(prefix, []).append(float(value))  # names and intervals are skipped

    for fold in per_fold:
        collect("", fold)
    return {
        key: {
            "mean": float(np.mean(v)),
            "std": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0,
            "n": len(v),
        }
        for key, v in flat.items()
    }


def cross_validate(
    root: Path, config: TrainConfig, *, folds: int, run_dir: Path, resume: bool = False
) -> str:
    """Run k-fold CV; write ``cv_report.json``/``.md`` into ``run_dir``; return the Markdown.

    Runs on one machine (``--strategy default`` or ``mirrored``): cross-validation is for
    datasets too small for one fixed test split, not for a cluster.
    """
    if config.strategy == "multiworker":
        raise ConfigError(
            "bonexr cv runs on one machine (--strategy default or mirrored); "
            "--strategy multiworker is for bonexr train"
        )
    if folds < 3:
        raise ConfigError("--folds must be at least 3 (test, validation and training folds)")
    from training.evaluate import headline

    start_device(config)
    distribution = get_distribution(config.strategy)
    run_dir = Path(run_dir)
    index, report = index_dataset(root, body_parts=config.router_parts or ALL_BODY_PARTS)
    say(report.describe())
    config = with_router_parts(config, index)
    assignment = assign_folds(index, k=folds, seed=config.seed)
    results = []
    for fold in range(folds):
        paths = prepare_run(
            run_dir / f"fold{fold}", config, resume=resume, distribution=distribution
        )
        split = fold_split(index, assignment, fold, folds)
        if not paths.split.is_file():
            write_split(split, paths.split)
        say(f"=== fold {fold + 1}/{folds}")
        bad_images = BadImageLog()
        train_all(split, config, paths, only=None, bad_images=bad_images, distribution=distribution)
        fold_report = evaluate_run(split, config, paths, bad_images, Path(root)).report
        results.append(headline(fold_report))
    summary = summarize(results)
    write_json_atomic(run_dir / "cv_report.json", {"folds": results, "summary": summary})
    lines = [
        f"# {folds}-fold cross-validation by patient: {config.name}",
        "",
        "| metric | mean | std | folds |",
        "|---|---|---|---|",
    ]
    for key, stats in summary.items():
        mean, std = format_metric(stats["mean"]), format_metric(stats["std"])
        lines.append(f"| {key} | {mean} | {std} | {stats['n']} |")
    parts = ", ".join(display_name(p) for p in config.body_parts)
    lines += ["", f"Body parts: {parts}. Per-fold reports: `fold*/report/report.md`.", ""]
    markdown = "\n".join(lines)
    write_text_atomic(run_dir / "cv_report.md", markdown)
    return markdown
