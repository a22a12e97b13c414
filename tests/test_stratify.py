"""Hidden stratification on a hand-made test frame: per-defect and per-view-count rates
equal what counting by hand gives, at each part's own thresholds."""

from __future__ import annotations

import pandas as pd
import pytest

from training.stratify import hidden_stratification, stratification_markdown


def _frame() -> tuple[pd.DataFrame, pd.DataFrame]:
    rows = []
    # ELBOW (threshold 0.5): two fracture studies (2 views each), one caught, one missed
    for study, prob in (("e1", 0.9), ("e2", 0.2)):
        for view in (1, 2):
            rows.append(("ELBOW", f"{study}/v{view}", study, 1, prob))
    # HAND (threshold 0.8): one hardware study of one view at 0.85 (caught at 0.8)
    rows.append(("HAND", "h1/v1", "h1", 1, 0.85))
    # normals: an elbow study of three views below its threshold, a hand view above 0.8
    rows += [("ELBOW", f"n1/v{v}", "n1", 0, 0.1) for v in (1, 2, 3)]
    rows.append(("HAND", "n2/v1", "n2", 0, 0.9))
    test = pd.DataFrame(
        rows, columns=["body_part", "rel_path", "study_id", "label", "prob_true_part"]
    )
    boxes = pd.DataFrame(
        {
            "rel_path": ["e1/v1", "e1/v2", "e2/v1", "e2/v2", "h1/v1"],
            "defect": ["fracture"] * 4 + ["hardware"],
        }
    )
    return test, boxes


def test_rates_per_defect_type_and_view_count() -> None:
    test, boxes = _frame()
    thresholds = {"ELBOW": {"image": 0.5, "study": 0.5}, "HAND": {"image": 0.8, "study": 0.8}}
    report = hidden_stratification(test, thresholds, ["ELBOW", "HAND"], boxes)
    fracture, hardware = report["defects"]["fracture"], report["defects"]["hardware"]
    assert fracture["image"]["n_abnormal"] == 4 and fracture["image"]["sensitivity"] == 0.5
    assert fracture["study"]["n_abnormal"] == 2 and fracture["study"]["sensitivity"] == 0.5
    assert hardware["study"]["sensitivity"] == 1.0
    low, high = fracture["image"]["sensitivity_ci"]
    assert low == 0.0 and high == 1.0  # two studies: the interval says how little that is
    one, two, three = (report["views"][k] for k in ("1 view", "2 views", "3+ views"))
    assert (one["n"], one["n_abnormal"], one["sensitivity"], one["specificity"]) == (2, 1, 1.0, 0.0)
    assert (two["n"], two["sensitivity"]) == (2, 0.5)
    assert (three["n"], three["specificity"], three["sensitivity"]) == (1, 1.0, None)
    markdown = "\n".join(stratification_markdown(report))
    assert "| fracture | 4 | 0.500 [0.00, 1.00] | 2 |" in markdown


def test_without_boxes_only_view_counts_are_reported() -> None:
    test, _ = _frame()
    thresholds = {p: {"image": 0.5, "study": 0.5} for p in ("ELBOW", "HAND")}
    report = hidden_stratification(test, thresholds, ["ELBOW", "HAND"], None)
    assert report["defects"] is None and set(report["views"]) == {"1 view", "2 views", "3+ views"}
    assert report["views"]["1 view"]["specificity"] == pytest.approx(0.0)
