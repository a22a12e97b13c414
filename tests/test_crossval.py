"""k-fold cross-validation: the per-fold split and the summary over folds (no training)."""

from __future__ import annotations

import pandas as pd
import pytest

from bonexr.errors import ConfigError
from tests.mura_tree import synthetic_index
from training.config import TrainConfig
from training.crossval import cross_validate, fold_split, summarize
from training.split import assign_folds

K = 5


@pytest.fixture(scope="module")
def index() -> pd.DataFrame:
    return synthetic_index(120, seed=3)


@pytest.fixture(scope="module")
def folds(index: pd.DataFrame) -> pd.Series:
    return assign_folds(index, k=K, seed=0)


@pytest.mark.parametrize("fold", range(K))
def test_each_fold_tests_on_its_fold_and_validates_on_the_next(
    index: pd.DataFrame, folds: pd.Series, fold: int
) -> None:
    split = fold_split(index, folds, fold, K)
    assert (split.loc[folds == fold, "split"] == "test").all()
    assert (split.loc[folds == (fold + 1) % K, "split"] == "validation").all()
    others = ~folds.isin([fold, (fold + 1) % K])
    assert (split.loc[others, "split"] == "train").all()
    assert split.groupby("patient_id")["split"].nunique().max() == 1  # no patient leaks


def test_every_row_is_tested_exactly_once_over_the_folds(
    index: pd.DataFrame, folds: pd.Series
) -> None:
    tested = sum((fold_split(index, folds, f, K)["split"] == "test").astype(int) for f in range(K))
    assert (tested == 1).all()


def test_fold_split_leaves_the_index_untouched(index: pd.DataFrame, folds: pd.Series) -> None:
    before = index.copy()
    fold_split(index, folds, 0, K)
    pd.testing.assert_frame_equal(index, before)


def test_summary_gives_mean_sample_std_and_count_skipping_missing_values() -> None:
    per_fold = [
        {"router_accuracy": 0.9, "study_auroc": {"Elbow": 0.8, "Hand": None}},
        {"router_accuracy": 1.0, "study_auroc": {"Elbow": 0.6, "Hand": 0.7}},
        {"router_accuracy": None, "study_auroc": {"Elbow": 0.7, "Hand": 0.9}},
    ]
    summary = summarize(per_fold)
    assert summary["router_accuracy"] == pytest.approx({"mean": 0.95, "std": 0.0707107, "n": 2})
    assert summary["study_auroc.Elbow"] == pytest.approx({"mean": 0.7, "std": 0.1, "n": 3})
    assert summary["study_auroc.Hand"] == pytest.approx({"mean": 0.8, "std": 0.1414214, "n": 2})


def test_summary_of_a_single_value_has_zero_spread() -> None:
    assert summarize([{"kappa": 0.5}]) == {"kappa": {"mean": 0.5, "std": 0.0, "n": 1}}


def test_summary_skips_names_and_intervals_of_a_headline() -> None:
    """A fold's headline carries its operating point's name and bootstrap intervals:
    neither is a figure to average over folds."""
    fold = {"kappa": 0.5, "kappa_ci": [0.2, 0.7], "default_operating_point": "triage"}
    assert summarize([fold, fold]) == {"kappa": {"mean": 0.5, "std": 0.0, "n": 2}}


def test_fewer_than_three_folds_is_refused_before_any_work(tmp_path) -> None:
    with pytest.raises(ConfigError, match="at least 3"):
        cross_validate(tmp_path / "nowhere", TrainConfig(), folds=2, run_dir=tmp_path / "cv")
