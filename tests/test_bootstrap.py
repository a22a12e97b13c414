"""The resampling behind every interval: fast statistics equal scikit-learn's, intervals
cover what they should, comparisons are paired, and flip bounds are exact."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score, roc_auc_score

from training.bootstrap import (
    CI,
    EXACT,
    EXACT_DIFFERENCE,
    PERCENTILE,
    binary_intervals,
    bootstrap_ci,
    bootstrap_intervals,
    clopper_pearson_interval,
    clopper_pearson_lower,
    clopper_pearson_upper,
    decision_rates,
    fast_auroc,
    paired_difference,
    proportion_interval,
    resamples,
    with_methods,
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
    # every resample agrees (0 difference): not a zero-wide claim of certainty, but the
    # exact bound on the share of 60 patients where the two could still disagree
    bound = clopper_pearson_upper(0, 60, 0.975)
    assert same["value"] == 0.0
    assert same["ci"] == pytest.approx((-bound, bound)) and bound == pytest.approx(0.0596, abs=1e-4)
    assert same["ci"].method == EXACT_DIFFERENCE
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


def test_clopper_pearson_against_published_values() -> None:
    # exact 95% intervals as tabulated (e.g. scipy.stats.binomtest(...).proportion_ci(
    # method="exact"), and the classic tables): 0/10, 5/10, 10/10, 13/13
    assert clopper_pearson_interval(0, 10) == pytest.approx((0.0, 0.30850), abs=1e-5)
    assert clopper_pearson_interval(5, 10) == pytest.approx((0.18709, 0.81291), abs=1e-5)
    assert clopper_pearson_interval(10, 10) == pytest.approx((0.69150, 1.0), abs=1e-5)
    # one-sided 95% lower bound of 13 caught of 13: 0.05 ** (1 / 13), about one half
    # chance that a sensitivity shown as 13/13 is really below 0.95 is what the rule prevents
    assert clopper_pearson_lower(13, 13) == pytest.approx(0.05 ** (1 / 13))
    assert clopper_pearson_lower(59, 59) >= 0.95 > clopper_pearson_lower(58, 58)
    assert clopper_pearson_lower(0, 10) == 0.0


def test_a_degenerate_bootstrap_falls_back_to_the_exact_interval() -> None:
    y = np.ones(13, int)
    caught = np.ones(13, bool)
    intervals = bootstrap_intervals(
        np.arange(13),
        lambda r: {"sensitivity": float(caught[r].mean()) if len(r) else None},
        trials={"sensitivity": 13},
    )
    interval = intervals["sensitivity"]
    assert interval is not None and interval[1] - interval[0] > 0.2  # never [1, 1]
    assert interval == pytest.approx(clopper_pearson_interval(13, 13))
    assert interval.method == EXACT
    assert y.sum() == 13


def test_copies_of_a_patient_do_not_narrow_the_interval() -> None:
    """Resampling is by patient: duplicating every patient's rows (two views each, the
    same values) must give the same interval, not a narrower one."""
    rng = np.random.default_rng(7)
    y = rng.integers(0, 2, 80)
    p = np.clip(0.3 * y + 0.7 * rng.random(80), 0, 1)
    patients = np.arange(80)
    once = binary_intervals(y, p, p >= 0.5, patients)
    twice = binary_intervals(
        np.r_[y, y], np.r_[p, p], np.r_[p, p] >= 0.5, np.r_[patients, patients]
    )
    for key in ("auroc", "sensitivity", "specificity", "kappa"):
        width_once = once[key][1] - once[key][0]
        width_twice = twice[key][1] - twice[key][0]
        assert width_twice == pytest.approx(width_once, rel=0.05), key
    # resampled as independent rows, the copies would narrow it by about 1/sqrt(2)
    rows = np.arange(160)
    naive = binary_intervals(np.r_[y, y], np.r_[p, p], np.r_[p, p] >= 0.5, rows)
    assert naive["auroc"][1] - naive["auroc"][0] < 0.85 * (once["auroc"][1] - once["auroc"][0])


def test_every_interval_names_its_method_in_a_report() -> None:
    report = {
        "auroc": 0.9,
        "auroc_ci": CI(0.8, 0.95),
        "nested": [{"sensitivity_ci": proportion_interval(3, 4)}],
        "plain": (1, 2),
    }
    out = with_methods(report)
    assert out["auroc_ci"] == [0.8, 0.95] and out["auroc_ci_method"] == PERCENTILE
    assert out["nested"][0]["sensitivity_ci_method"] == "exact Clopper-Pearson"
    assert out["plain"] == [1, 2] and "plain_method" not in out
