"""The heat-map evaluation's mechanics on random-init models (the trained demo's score is
asserted in tests/test_demo_bundle.py): boxes from the generator, one guess per abnormal
image, the baselines (centre, random, brightest), the report section and the example grid."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image

from training.dataset import index_dataset, read_boxes
from training.localisation import (
    _inside,
    brightest_point,
    plot_examples,
    pointing_game,
    random_hit_probability,
    target_verdict,
)
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
    overall = report["overall"]
    for method in ("heatmap", "centre", "random", "brightest"):
        low, high = overall[f"{method}_ci"]
        assert 0.0 <= low <= overall[method] <= high <= 1.0
    assert "training_mean" not in overall  # no training split given
    assert set(report["defects"]) <= {"fracture", "hardware"}
    assert sum(m["n"] for m in report["defects"].values()) == overall["n"]
    gap = overall["difference"]["brightest"]
    assert gap["value"] == pytest.approx(overall["heatmap"] - overall["brightest"])
    assert isinstance(report["target"]["met"], bool)
    markdown = "\n".join(localisation_markdown(report))
    assert "| **overall** |" in markdown and "brightest (blurred)" in markdown
    thresholds = {p: {"image": 0.5, "study": 0.5} for p in parts}
    grid = tmp_path / "heatmaps.png"
    plot_examples(pointed, models, test, thresholds, synthetic_small, 64, grid)
    assert grid.stat().st_size > 10_000


def test_a_dataset_without_boxes_is_skipped(tmp_path: Path) -> None:
    assert read_boxes(tmp_path) is None


def test_baselines_know_where_bright_metal_and_a_box_are() -> None:
    """The brightness baseline finds a bright blob; the random point's hit rate is the
    grown box's share of the image; the verdict needs every part of the target."""
    pixels = np.full((100, 200), 40, np.uint8)
    pixels[60:70, 150:160] = 250  # drawn "metal"
    assert _inside(brightest_point(Image.fromarray(pixels)), (150, 60, 160, 70), 0)
    assert random_hit_probability((0, 0, 20, 10), 200, 100, slack=0) == pytest.approx(0.01)
    assert random_hit_probability((-5, -5, 300, 300), 200, 100, slack=10) == 1.0
    passing = {
        "overall": {"n": 10, "heatmap": 0.9, "brightest": 0.8},
        "defects": {"fracture": {"heatmap": 0.8, "brightest": 0.8}},
        "parts": {"ELBOW": {"heatmap": 0.5}, "HAND": {"heatmap": 0.95}},
    }
    assert target_verdict(passing)["met"]
    passing["parts"]["ELBOW"]["heatmap"] = 0.49
    verdict = target_verdict(passing)
    assert not verdict["met"] and verdict["checks"] == {
        "beat_brightest_overall": True,
        "beat_brightest_fracture": True,
        "part_minimum": False,
    }
