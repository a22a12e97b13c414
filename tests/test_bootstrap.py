"""The resampling behind every interval: fast statistics equal scikit-learn's, intervals
cover what they should, comparisons are paired, and flip bounds are exact."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score, roc_auc_score

from training.bootstrap import (
    binary_intervals,
    bootstrap_ci,
    clopper_pearson_upper,
    decision_rates,
    fast_auroc,
    paired_difference,
    resamples,
)
from training.metrics import binary_metrics


def test_fast_auroc_equals_scikit_learn_with_ties() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        y = rng.integers(0, 2, 40)
        scores = rng.integers(0, 6, 40) / 5.0  # many ties
        if len(np.unique(y)) == 2:
            assert fast_auroc(y, scores) == pytest.approx(roc_auc_score(y, scores))
    assert fast_auroc(np.ones(5, int), np.arange(5.0)) is None


def test_decision_rates_equal_scikit_learn() -> None:
    rng = np.random.default_rng(1)
    y, d = rng.integers(0, 2, 50), rng.integers(0, 2, 50)
    rates = decision_rates(y, d)
    assert rates["kappa"] == pytest.approx(cohen_kappa_score(y, d))
    assert rates["sensitivity"] == pytest.approx(d[y == 1].mean())
    assert rates["specificity"] == pytest.approx(1 - d[y == 0].mean())
    assert decision_rates(np.ones(4, int), np.ones(4, int))["kappa"] == 1.0


def test_resamples_keep_groups_whole() -> None:
    groups = np.array(["a", "a", "b", "c", "c", "c"])
    for rows in resamples(groups, samples=20, seed=3):
        picked = groups[rows]
        for g, size in (("a", 2), ("b", 1), ("c", 3)):
            assert np.sum(picked == g) % size == 0  # a group comes with all its rows


def test_interval_covers_the_truth_and_narrows_with_data() -> None:
    rng = np.random.default_rng(2)
    widths = []
    for n in (40, 400):
        y = rng.random(n) < 0.3
        low, high = bootstrap_ci(np.arange(n), lambda r, y=y: float(y[r].mean()))  # type: ignore[misc]
        assert low <= 0.3 <= high or abs(y.mean() - 0.3) > 0.1
        widths.append(high - low)
    assert widths[1] < widths[0] / 2  # ~1/sqrt(n): 10x the data, ~3x narrower


def test_binary_metrics_carry_intervals_around_their_point() -> None:
    rng = np.random.default_rng(4)
    y = rng.integers(0, 2, 120)
    p = np.clip(y * 0.3 + rng.random(120) * 0.7, 0, 1)
    studies = np.arange(120) // 2
    m = binary_metrics(y, p, 0.5, studies)
    for key in ("auroc", "kappa", "sensitivity", "specificity"):
        low, high = m[f"{key}_ci"]
        assert low <= m[key] <= high and high - low > 0.01
    assert "auroc_ci" not in binary_metrics(y, p, 0.5)  # no groups, no interval
    assert set(binary_intervals(y, p, p >= 0.5, studies)) == {
        "auroc",
        "kappa",
        "sensitivity",
        "specificity",
    }


def test_paired_difference_of_a_scorer_with_itself_is_exactly_zero() -> None:
    rng = np.random.default_rng(5)
    y, p = rng.integers(0, 2, 60), rng.random(60)
    groups = np.arange(60)
    same = paired_difference(
        groups, lambda r: fast_auroc(y[r], p[r]), lambda r: fast_auroc(y[r], p[r])
    )
    assert same["value"] == 0.0 and same["ci"] == (0.0, 0.0)
    better = paired_difference(
        groups, lambda r: fast_auroc(y[r], y[r] + p[r]), lambda r: fast_auroc(y[r], p[r])
    )
    assert better["value"] > 0 and better["ci"][0] > 0  # paired: a real gain is resolved


def test_clopper_pearson_upper_bound() -> None:
    # 0 events: the bound is 1 - 0.05 ** (1 / n) (the "rule of three" ~ 3 / n)
    assert clopper_pearson_upper(0, 286) == pytest.approx(1 - 0.05 ** (1 / 286))
    assert clopper_pearson_upper(0, 286) > 0.01 > clopper_pearson_upper(0, 4000)
    assert clopper_pearson_upper(5, 100) > 0.05
    assert clopper_pearson_upper(3, 3) == 1.0 and clopper_pearson_upper(0, 0) == 1.0
