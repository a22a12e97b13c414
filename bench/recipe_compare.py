"""Which part model to train on real radiographs: variants compared on one split.

Each variant trains one part's abnormality model (``--only PART``) on the same split of a
real data set (FracAtlas by default) and is judged on the **validation** split, the one
that chooses checkpoints: study AUROC with its 95% interval (patient bootstrap, exact
where degenerate), plus the training time on this machine. The test split is never read
here: the winner's test figures come from the recipe's own report.

    python -m bench.recipe_compare ../shared/datasets/fracatlas --part hand

writes ``bench/results/recipe_compare_<part>.json`` and prints a markdown table
(docs/training.md "The FracAtlas recipe" quotes it with its command and commit).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import keras
import numpy as np

from training.bootstrap import auroc_interval, fast_auroc, paired_difference
from training.config import FRACATLAS_CPU, TrainConfig
from training.pipeline import BadImageLog, predict_frame
from training.run import run_training
from training.split import read_split

#: The variants: name -> fields changed from the FracAtlas CPU recipe.
VARIANTS: dict[str, dict[str, Any]] = {
    "tiny-128": {"input_size": 128, "router_input_size": 128},
    "tiny-256": {},
    "tiny-384": {"input_size": 384, "router_input_size": 128},
    "tiny-256-no-jitter": {"jitter": False},
    "small-256": {"part_backbone": "small"},
    "small-256-no-jitter": {"part_backbone": "small", "jitter": False},
    "small-256-box-crops": {"part_backbone": "small", "box_crops": 2},
    "tiny-256-box-crops": {"box_crops": 2},
    "resnet50-128": {"input_size": 128, "router_input_size": 128, "part_backbone": "resnet50"},
}


def validation_scores(
    model_file: Path, split: Any, part: str, size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(labels, P, patients) of a trained part model on its readable validation images."""
    model = keras.models.load_model(model_file)
    rows = split[(split["split"] == "validation") & (split["body_part"] == part.upper())]
    # the training pipeline's own batched prediction (unreadable images come back NaN)
    probs = predict_frame(model, rows, size=size, batch_size=32, bad_images=BadImageLog())[:, 0]
    readable = ~np.isnan(probs)
    return (
        rows["label"].to_numpy().astype(int)[readable],
        probs[readable],
        rows["patient_id"].astype(str).to_numpy()[readable],
    )


def validation_auroc(model_file: Path, split: Any, part: str, size: int) -> dict[str, Any]:
    """Study AUROC of a trained part model on its validation images, with its interval."""
    return auroc_interval(*validation_scores(model_file, split, part, size))


def paired(root: Path, part: str, first: str, second: str, out: Path) -> dict[str, Any]:
    """AUROC of ``first`` minus ``second`` on the same validation images, paired bootstrap
    (both variants trained on the same split)."""
    split = read_split(out / first / "split.csv", root)
    sizes = {
        name: TrainConfig(**{**FRACATLAS_CPU, **VARIANTS[name]}).input_size
        for name in (first, second)
    }
    y, a, groups = validation_scores(out / first / part / "best.keras", split, part, sizes[first])
    y2, b, _ = validation_scores(out / second / part / "best.keras", split, part, sizes[second])
    assert np.array_equal(y, y2), "the two variants were not judged on the same images"
    return paired_difference(
        groups, lambda r: fast_auroc(y[r], a[r]), lambda r: fast_auroc(y[r], b[r])
    )


def compare(root: Path, part: str, variants: list[str], epochs: int, out: Path) -> list[dict]:
    # the comparison trains in bf16 mixed precision (AMX makes the small part models ~1.5x
    # faster; the recipe itself trains in float32); only a part model trains here, so the
    # router's own epoch count is left at its default
    fixed = {"epochs": epochs, "progress": False, "mixed_precision": True, "router_epochs": 0}
    base = TrainConfig(**{**FRACATLAS_CPU, **fixed})
    rows = []
    split_csv: Path | None = None
    for name in variants:
        config = dataclasses.replace(base, name=name, **VARIANTS[name])
        run_dir = out / name
        started = time.perf_counter()
        run_training(
            root,
            config,
            out=out / f"{name}-bundle",
            run_dir=run_dir,
            split_csv=split_csv,
            resume=(run_dir / "config.json").is_file(),
            only=[part],
        )
        seconds = time.perf_counter() - started
        split_csv = split_csv or run_dir / "split.csv"
        split = read_split(run_dir / "split.csv", root)
        done = json.loads((run_dir / part / "done.json").read_text())
        measured = validation_auroc(run_dir / part / "best.keras", split, part, config.input_size)
        rows.append(
            {"variant": name, **VARIANTS[name], "seconds": round(seconds, 1), **done, **measured}
        )
        print(_table(rows), flush=True)
    return rows


def _table(rows: list[dict]) -> str:
    lines = [
        "| variant | validation study AUROC [95% CI] | best epoch / run | train time |",
        "|---|---|---|---|",
    ]
    for r in rows:
        ci = r.get("auroc_ci") or (float("nan"), float("nan"))
        lines.append(
            f"| {r['variant']} | {r['auroc']:.3f} [{ci[0]:.3f}, {ci[1]:.3f}] | "
            f"{r['best_epoch']} / {r['epochs_run']} | {r['seconds']:.0f} s |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="the data set (FracAtlas folder)")
    parser.add_argument("--part", default="hand")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path("runs/compare"))
    parser.add_argument(
        "--paired", help="A,B: the paired AUROC difference of two variants already trained"
    )
    args = parser.parse_args()
    if args.paired:
        first, second = args.paired.split(",")
        gap = paired(args.root, args.part, first, second, args.out)
        low, high = gap["ci"]
        method = gap["ci"].method
        print(f"{first} - {second}: {gap['value']:+.3f} [{low:+.3f}, {high:+.3f}] ({method})")
        return
    rows = compare(args.root, args.part, args.variants.split(","), args.epochs, args.out)
    results = Path("bench/results")
    results.mkdir(parents=True, exist_ok=True)
    (results / f"recipe_compare_{args.part}.json").write_text(json.dumps(rows, indent=2))
    print(_table(rows))


if __name__ == "__main__":
    main()
