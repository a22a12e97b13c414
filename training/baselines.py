"""Baselines that see no fracture: what the model must beat to claim it found one.

Real data sets carry shortcuts. In FracAtlas a leg with orthopaedic hardware is almost
always a fractured one (52 of 212 fractured legs, 2 of 1,912 normal), and the pixel spread
of a 16x16 thumbnail alone ranks hands at AUROC ~0.63. So beside every part's test AUROC
the report puts scorers that cannot see a fracture:

* ``orientation``: height / width of the stored image;
* ``size``: its pixel count;
* ``thumbnail_spread``: the standard deviation of a 16x16 grey thumbnail;
* ``combined``: a logistic regression on the three, fitted on the **train** split;
* ``hardware``: the data set's own hardware flag, where it has one (FracAtlas).

Each single feature is oriented on the train split (a feature that ranks backwards there
is negated), so the baselines are as strong as the training data makes them. Every AUROC
carries its 95% patient-bootstrap interval, and the model's paired difference to the
strongest baseline its own. The model is also scored without the images that show
hardware, where a data set records it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from bonexr.labels import display_name
from training.bootstrap import auroc_interval, difference_interval, fast_auroc
from training.metrics import patients_of

FEATURES: tuple[str, ...] = ("orientation", "size", "thumbnail_spread")
THUMBNAIL = 16


def image_features(path: Path) -> tuple[float, float, float]:
    """(height / width, pixels, thumbnail spread) of one image; NaN where unreadable."""
    try:
        with Image.open(path) as image:
            width, height = image.size
            thumb = image.convert("L").resize((THUMBNAIL, THUMBNAIL), Image.Resampling.BILINEAR)
            spread = float(np.asarray(thumb, dtype=np.float64).std())
    except (OSError, ValueError, Image.DecompressionBombError):
        return float("nan"), float("nan"), float("nan")
    return height / width, float(width * height), spread


def with_features(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with a column per no-fracture feature (read from each row's ``path``)."""
    values = np.asarray([image_features(Path(p)) for p in frame["path"]], dtype=np.float64)
    out = frame.copy()
    for i, name in enumerate(FEATURES):
        out[name] = values[:, i] if len(values) else np.zeros(0)
    return out


def hardware_flags(root: Path) -> dict[str, int] | None:
    """``{rel_path basename: hardware}`` from a FracAtlas ``dataset.csv``; None without."""
    table_path = Path(root) / "dataset.csv"
    if not table_path.is_file():
        return None
    table = pd.read_csv(table_path)
    if "hardware" not in table or "image_id" not in table:
        return None
    return dict(zip(table["image_id"].astype(str), table["hardware"].astype(int), strict=True))


def _usable(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    return frame.dropna(subset=columns)


def part_baselines(
    train: pd.DataFrame,
    test: pd.DataFrame,
    hardware: dict[str, int] | None,
    prob_column: str = "prob_true_part",
) -> dict[str, Any]:
    """One part's image-level AUROC of the model and of every baseline, with intervals."""
    train = _usable(train, list(FEATURES))
    test = _usable(test, [*FEATURES, prob_column])
    y, groups = test["label"].to_numpy().astype(int), patients_of(test)
    if len(np.unique(y)) < 2 or len(np.unique(train["label"])) < 2:
        return {"n": len(test), "note": "one class only: no AUROC"}
    scores: dict[str, np.ndarray] = {}
    for name in FEATURES:
        sign = (
            1.0
            if (fast_auroc(train["label"].to_numpy(), train[name].to_numpy()) or 0.5) >= 0.5
            else -1.0
        )
        scores[name] = sign * test[name].to_numpy()
    scaler = StandardScaler().fit(train[list(FEATURES)])
    combined = LogisticRegression(C=1.0).fit(
        scaler.transform(train[list(FEATURES)]), train["label"]
    )
    scores["combined"] = combined.predict_proba(scaler.transform(test[list(FEATURES)]))[:, 1]
    if hardware is not None:
        scores["hardware"] = (
            test["rel_path"].map(lambda r: hardware.get(Path(r).name, 0)).to_numpy()
        )
    model = test[prob_column].to_numpy(dtype=np.float64)
    out: dict[str, Any] = {
        "n": len(test),
        "n_abnormal": int(y.sum()),
        "model": auroc_interval(y, model, groups),
    }
    out["baselines"] = {name: auroc_interval(y, s, groups) for name, s in scores.items()}
    strongest = max(out["baselines"], key=lambda k: out["baselines"][k]["auroc"] or 0.0)
    best = scores[strongest]

    def gap(rows: np.ndarray) -> float | None:
        a, b = fast_auroc(y[rows], model[rows]), fast_auroc(y[rows], best[rows])
        return None if a is None or b is None else a - b

    value = gap(np.arange(len(y)))
    out["strongest"] = strongest
    out["model_minus_strongest"] = {"value": value, "ci": difference_interval(groups, gap, value)}
    interval = out["model"]["auroc_ci"]
    ceiling = max((b["auroc_ci"] or (0.0, 0.0))[1] for b in out["baselines"].values())
    out["beats_every_baseline"] = bool(interval is not None and interval[0] > ceiling)
    if hardware is not None:
        clean = scores["hardware"] == 0
        out["model_without_hardware"] = auroc_interval(y[clean], model[clean], groups[clean])
        out["hardware_images"] = int((~clean).sum())
    return out


def baselines_report(
    split: pd.DataFrame, test: pd.DataFrame, parts: list[str], root: Path
) -> dict[str, Any]:
    """:func:`part_baselines` for every part with a model (the report's ``baselines``)."""
    hardware = hardware_flags(root)
    train = with_features(split[(split["split"] == "train") & split["body_part"].isin(parts)])
    scored = with_features(test[test["body_part"].isin(parts)])
    return {
        "method": "image-level AUROC; single features oriented on train, the combined one a "
        "logistic regression fitted on train; 95% patient-bootstrap intervals",
        "parts": {
            display_name(part): part_baselines(
                train[train["body_part"] == part], scored[scored["body_part"] == part], hardware
            )
            for part in parts
        },
    }


def baselines_markdown(block: dict[str, Any] | None) -> list[str]:
    """The report's and model card's table of the model against the no-fracture baselines."""
    if not block:
        return []
    lines = [
        "## Against baselines that see no fracture",
        "",
        f"Image-level test AUROC ({block['method']}). A model that finds fractures must beat "
        "all of them; `hardware` is the data set's own flag for orthopaedic hardware.",
        "",
        "| body part | model | "
        + " | ".join([*FEATURES, "combined", "hardware"])
        + " | model - strongest | without hardware |",
        "|---|---|" + "---|" * (len(FEATURES) + 2) + "---|---|",
    ]

    def cell(entry: dict[str, Any] | None) -> str:
        if not entry or entry.get("auroc") is None:
            return "n/a"
        ci = entry.get("auroc_ci")
        return f"{entry['auroc']:.3f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")

    for part, entry in block["parts"].items():
        if "model" not in entry:
            lines.append(f"| {part} | {entry.get('note', 'n/a')} |")
            continue
        base = entry["baselines"]
        diff = entry["model_minus_strongest"]
        ci = diff["ci"]
        gap = f"{diff['value']:+.3f}" + (
            f" [{ci[0]:+.2f}, {ci[1]:+.2f}] vs {entry['strongest']}" if ci else ""
        )
        lines.append(
            f"| {part} | {cell(entry['model'])} | "
            + " | ".join(cell(base.get(name)) for name in [*FEATURES, "combined", "hardware"])
            + f" | {gap} | {cell(entry.get('model_without_hardware'))} |"
        )
    return [*lines, ""]
