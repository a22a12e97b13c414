"""Study-level aggregation and metrics against values computed by hand."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from training.metrics import binary_metrics, choose_threshold, router_metrics, study_level


@pytest.fixture
def views() -> pd.DataFrame:
    # study -> (label, view probabilities); D has an undecodable view (NaN)
    rows = [
        ("A", 1, 0.9), ("A", 1, 0.7),
        ("B", 0, 0.2), ("B", 0, 0.4),
        ("C", 1, 0.4),
        ("D", 0, 0.6), ("D", 0, 0.6), ("D", 0, np.nan),
    ]  # fmt: skip
    frame = pd.DataFrame(rows, columns=["study_id", "label", "prob"])
    frame["body_part"] = "HAND"
    return frame


def test_study_probability_is_mean_of_usable_views(views: pd.DataFrame) -> None:
    studies = study_level(views).set_index("study_id")
    assert studies["prob"].to_dict() == pytest.approx({"A": 0.8, "B": 0.3, "C": 0.4, "D": 0.6})
    assert studies["views"].to_dict() == {"A": 2, "B": 2, "C": 1, "D": 2}
    assert studies["label"].to_dict() == {"A": 1, "B": 0, "C": 1, "D": 0}


def test_binary_metrics_match_hand_computation(views: pd.DataFrame) -> None:
    studies = study_level(views)
    # positives {0.8, 0.4} vs negatives {0.3, 0.6}: 3 of 4 pairs ranked right
    m = binary_metrics(studies["label"], studies["prob"], threshold=0.35)
    assert m["auroc"] == pytest.approx(0.75)
    # predicted A1 B0 C1 D1: TP=2 FN=0 TN=1 FP=1
    assert m["confusion_matrix"] == [[1, 1], [0, 2]]
    assert m["sensitivity"] == pytest.approx(1.0)
    assert m["specificity"] == pytest.approx(0.5)
    # po = 3/4, pe = 0.5*0.75 + 0.5*0.25 = 0.5 -> kappa = 0.25 / 0.5
    assert m["kappa"] == pytest.approx(0.5)
    assert m["accuracy"] == pytest.approx(0.75)

    at_half = binary_metrics(studies["label"], studies["prob"], threshold=0.5)
    assert at_half["confusion_matrix"] == [[1, 1], [1, 1]]
    assert at_half["kappa"] == pytest.approx(0.0)


def test_youden_threshold(views: pd.DataFrame) -> None:
    studies = study_level(views)
    # J = 0.5 at 0.8 (TPR .5, FPR 0) and at 0.4 (TPR 1, FPR .5); the stricter one comes first
    assert choose_threshold(studies["label"], studies["prob"]) == pytest.approx(0.8)
    assert choose_threshold(np.array([1, 1]), np.array([0.2, 0.9])) == 0.5  # undefined -> 0.5


def test_router_metrics() -> None:
    true = pd.Series(["ELBOW", "ELBOW", "HAND", "SHOULDER"])
    pred = pd.Series(["ELBOW", "HAND", "HAND", "SHOULDER"])
    m = router_metrics(true, pred, ["ELBOW", "HAND", "SHOULDER"])
    assert m["accuracy"] == pytest.approx(0.75)
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 1, 0], [0, 0, 1]]
