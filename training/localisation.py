"""Are the heat maps right? The pointing game on the synthetic test split.

The synthetic generator records where it drew each abnormality (``defect_boxes.csv``: the
fracture site or the metal, in pixels of that image). For every abnormal test image of a
part with a model, the part model's class activation map is mapped back onto the image
exactly as the service does it (:func:`bonexr.heatmap.to_image_grid`) and its hottest
point is a *hit* when it falls inside the box, grown by a small tolerance. The baseline
is a blank map, whose pointing-game guess is the image centre. A map that only decorates
scores like the baseline; a map that localises beats it.

A real MURA checkout has no boxes: the evaluation then says so and skips this part.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pandas as pd

from bonexr.heatmap import overlay, peak, to_image_grid
from bonexr.imaging import decode_image, model_input, prepare_pixels
from bonexr.labels import display_name, model_key
from training.formatting import save_figure
from training.models import with_cam

#: The generator's box file, at the dataset root.
BOXES_CSV = "defect_boxes.csv"
#: A guess this close to the box (share of the image's longer side) still counts.
TOLERANCE = 0.05
#: Images per category in the example grid.
EXAMPLES_PER_KIND = 4


def read_boxes(root: Path) -> pd.DataFrame | None:
    """The generator's defect boxes (``rel_path, defect, x0, y0, x1, y1``), if any."""
    path = Path(root) / BOXES_CSV
    if not path.is_file():
        return None
    return pd.read_csv(path)


@dataclass(frozen=True)
class Pointed:
    """One scored image: its heat map, the map's peak, the box and whether it hit."""

    rel_path: str
    part: str
    heat: np.ndarray
    guess: tuple[int, int]
    box: tuple[float, float, float, float]
    hit: bool
    centre_hit: bool


def _inside(point: tuple[float, float], box: tuple[float, ...], slack: float) -> bool:
    x, y = point
    x0, y0, x1, y1 = box
    return x0 - slack <= x <= x1 + slack and y0 - slack <= y <= y1 + slack


def point(
    cam_model: keras.Model, path: Path, size: int, box: tuple[float, float, float, float]
) -> tuple[np.ndarray, tuple[int, int], bool, bool]:
    """The image's map, its peak, and whether the peak / the centre falls in the box."""
    image = decode_image(Path(path).read_bytes())
    outputs = cam_model(model_input(prepare_pixels(image, size)), training=False)
    cam = np.asarray(outputs[1])[0]
    heat = to_image_grid(cam, image.width, image.height, size)
    guess = peak(heat)
    slack = TOLERANCE * max(image.width, image.height)
    centre = (image.width / 2, image.height / 2)
    return heat, guess, _inside(guess, box, slack), _inside(centre, box, slack)


def pointing_game(
    models: dict[str, keras.Model],
    test: pd.DataFrame,
    boxes: pd.DataFrame,
    root: Path,
    parts: list[str],
    size: int,
) -> tuple[dict[str, Any], list[Pointed]]:
    """Pointing-game accuracy per part and pooled, heat map vs blank map (the centre)."""
    located = test.merge(boxes, on="rel_path", how="inner")
    results: list[Pointed] = []
    report: dict[str, Any] = {
        "method": "CAM pointing game: the map's hottest point inside the drawn defect box",
        "tolerance": f"{TOLERANCE:.0%} of the image's longer side",
        "baseline": "blank map (its guess is the image centre)",
        "parts": {},
    }
    for part in parts:
        rows = located[(located["body_part"] == part) & (located["label"] == 1)]
        if rows.empty:
            continue
        cam_model = with_cam(models[model_key(part)])
        for row in rows.to_dict("records"):
            rel_path = str(row["rel_path"])
            box = (float(row["x0"]), float(row["y0"]), float(row["x1"]), float(row["y1"]))
            try:
                heat, guess, hit, centre_hit = point(cam_model, root / rel_path, size, box)
            except Exception:  # unreadable images are reported by the evaluation already
                continue
            results.append(Pointed(rel_path, part, heat, guess, box, hit, centre_hit))
        mine = [r for r in results if r.part == part]
        report["parts"][part] = _accuracy(mine)
    report["overall"] = _accuracy(results)
    return report, results


def _accuracy(results: list[Pointed]) -> dict[str, Any]:
    n = len(results)
    return {
        "n": n,
        "heatmap": float(np.mean([r.hit for r in results])) if n else None,
        "centre": float(np.mean([r.centre_hit for r in results])) if n else None,
    }


def plot_examples(
    results: list[Pointed],
    models: dict[str, keras.Model],
    test: pd.DataFrame,
    thresholds: dict[str, dict[str, float]],
    root: Path,
    size: int,
    path: Path,
) -> None:
    """A grid of overlays: true positives, misses and false positives (image threshold),
    with the drawn defect box (cyan) and the map's peak (x)."""
    import matplotlib.pyplot as plt

    scored = test.dropna(subset=["prob_true_part"]).set_index("rel_path")
    probs: dict[str, float] = {str(k): float(v) for k, v in scored["prob_true_part"].items()}
    cut = {p: t["image"] for p, t in thresholds.items()}

    def positive(rel_path: str, part: str) -> bool:
        return probs[rel_path] >= cut[part]

    abnormal = [r for r in results if r.rel_path in probs]
    true_pos = [r for r in abnormal if positive(r.rel_path, r.part)][:EXAMPLES_PER_KIND]
    missed = [r for r in abnormal if not positive(r.rel_path, r.part)][:EXAMPLES_PER_KIND]
    false_pos: list[tuple[str, str, np.ndarray, tuple[int, int]]] = []
    cam_models: dict[str, keras.Model] = {}  # built once per part, not once per image
    normals = scored[(scored["label"] == 0) & scored["body_part"].isin(list(cut))]
    for rel_path, part in normals["body_part"].items():
        if len(false_pos) == EXAMPLES_PER_KIND:
            break
        if positive(str(rel_path), str(part)):
            if str(part) not in cam_models:
                cam_models[str(part)] = with_cam(models[model_key(str(part))])
            heat, guess, _, _ = point(
                cam_models[str(part)],
                root / str(rel_path),
                size,
                (0.0, 0.0, 0.0, 0.0),
            )
            false_pos.append((str(rel_path), str(part), heat, guess))
    kinds: list[tuple[str, list[tuple[Any, ...]]]] = [
        ("true positive", [(r.rel_path, r.part, r.heat, r.guess, r.box) for r in true_pos]),
        (
            "missed (below threshold)",
            [(r.rel_path, r.part, r.heat, r.guess, r.box) for r in missed],
        ),
        ("false positive", [(*f, None) for f in false_pos]),
    ]
    fig, axes = plt.subplots(
        len(kinds),
        EXAMPLES_PER_KIND,
        figsize=(3 * EXAMPLES_PER_KIND, 3.2 * len(kinds)),
        squeeze=False,
    )
    for r, (title, items) in enumerate(kinds):
        for c in range(EXAMPLES_PER_KIND):
            ax = axes[r][c]
            ax.axis("off")
            if c >= len(items):
                continue
            rel_path, part, heat, guess, box = items[c]
            image = decode_image((root / rel_path).read_bytes())
            ax.imshow(overlay(image, heat, 0.55))
            if box is not None:
                x0, y0, x1, y1 = box
                ax.add_patch(
                    plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec="cyan", lw=1.5)
                )
            ax.plot(*guess, marker="x", color="lime", markersize=10, mew=2)
            prob = probs[rel_path]
            ax.set_title(f"{title}\n{display_name(part)} P(abnormal)={prob:.2f}", fontsize=8)
    fig.suptitle("Heat maps (CAM), test split: cyan = drawn defect, x = the map's peak")
    save_figure(fig, path)
