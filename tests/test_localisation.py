"""The heat-map evaluation's mechanics on random-init models (the trained demo's score is
asserted in tests/test_demo_bundle.py): boxes from the generator, one guess per abnormal
image, the blank-map baseline, the report section and the example grid."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np

from training.dataset import index_dataset
from training.localisation import plot_examples, pointing_game, read_boxes
from training.report import localisation_markdown


def test_pointing_game_scores_every_boxed_abnormal_image(
    synthetic_small: Path, untrained_bundle: Path, tmp_path: Path
) -> None:
    boxes = read_boxes(synthetic_small)
    assert boxes is not None and {"rel_path", "defect", "x0", "y0", "x1", "y1"} <= set(boxes)
    assert set(boxes["defect"]) == {"fracture", "hardware"}
    index, _ = index_dataset(synthetic_small)
    abnormal = index[index["label"] == 1]
    assert set(boxes["rel_path"]) <= set(abnormal["rel_path"])  # boxes only where drawn
    test = index.sample(60, random_state=0).reset_index(drop=True)
    test["prob_true_part"] = np.random.default_rng(0).uniform(size=len(test))
    models = {
        name: keras.models.load_model(untrained_bundle / f"{name}.keras")
        for name in ("elbow", "hand", "shoulder")
    }
    parts = ["ELBOW", "HAND", "SHOULDER"]
    report, pointed = pointing_game(models, test, boxes, synthetic_small, parts, 64)
    expected = test.merge(boxes, on="rel_path")
    assert report["overall"]["n"] == len(pointed) == len(expected)
    for item in pointed:
        assert item.heat.shape[0] > 8 and item.heat.min() >= 0.0 and item.heat.max() <= 1.0
        x, y = item.guess
        assert item.hit == (
            item.box[0] - 0.05 * max(item.heat.shape)
            <= x
            <= item.box[2] + 0.05 * max(item.heat.shape)
            and item.box[1] - 0.05 * max(item.heat.shape)
            <= y
            <= item.box[3] + 0.05 * max(item.heat.shape)
        )
    assert 0.0 <= report["overall"]["heatmap"] <= 1.0
    assert 0.0 <= report["overall"]["centre"] <= 1.0
    assert "| **overall** |" in "\n".join(localisation_markdown(report))
    thresholds = {p: {"image": 0.5, "study": 0.5} for p in parts}
    grid = tmp_path / "heatmaps.png"
    plot_examples(pointed, models, test, thresholds, synthetic_small, 64, grid)
    assert grid.stat().st_size > 10_000


def test_a_dataset_without_boxes_is_skipped(tmp_path: Path) -> None:
    assert read_boxes(tmp_path) is None
