"""Tests for training.split: patient-level, stratified, deterministic, and strict about bad data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bonexr.cli import main
from bonexr.errors import ConfigError, DataError
from tests.mura_tree import balanced_studies, synthetic_index, write_mura_tree
from training.split import (
    SPLIT_COLUMNS,
    SPLITS,
    assign_folds,
    read_split,
    split_by_patient,
    split_summary,
    write_split,
)

TARGET = {"train": 72.0, "validation": 18.0, "test": 10.0}
PARTS = {"ELBOW", "HAND", "SHOULDER"}


@pytest.fixture(scope="module")
def index() -> pd.DataFrame:
    """~300 patients, 1-3 studies each (any of three parts), 1-4 images per study."""
    frame = synthetic_index(300, seed=0)
    assert frame["patient_id"].nunique() == 300
    assert frame.groupby("patient_id")["body_part"].nunique().max() > 1  # multi-part patients
    return frame


@pytest.fixture(scope="module")
def split(index: pd.DataFrame) -> pd.DataFrame:
    return split_by_patient(index, seed=0)


def split_root(frame: pd.DataFrame) -> Path:
    """The dataset root the frame's absolute paths hang off."""
    first = frame.iloc[0]
    return Path(first["path"][: -len(first["rel_path"])])


def splits_per_patient(frame: pd.DataFrame) -> pd.Series:
    return frame.groupby("patient_id")["split"].nunique()


def percentages(frame: pd.DataFrame, column: str | None) -> dict[str, float]:
    groups = frame.groupby("split")
    counts = groups.size() if column is None else groups[column].nunique()
    return (100 * counts / counts.sum()).to_dict()


# --------------------------------------------------------------------------- random mode


def test_returns_a_copy_with_a_split_column(index: pd.DataFrame, split: pd.DataFrame) -> None:
    assert "split" not in index.columns
    assert list(split.columns) == [*index.columns, "split"]
    assert split.drop(columns="split").equals(index)
    assert set(split["split"]) == set(SPLITS)


def test_no_patient_in_two_splits(split: pd.DataFrame) -> None:
    assert splits_per_patient(split).max() == 1


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_proportions_within_two_points(index: pd.DataFrame, seed: int) -> None:
    frame = split_by_patient(index, seed=seed)
    for column in (None, "patient_id"):  # images, then patients
        for name, pct in percentages(frame, column).items():
            assert abs(pct - TARGET[name]) <= 2.0, (seed, column, name, pct)


def test_every_split_has_every_part_and_both_labels(split: pd.DataFrame) -> None:
    for name in SPLITS:
        rows = split[split["split"] == name]
        assert set(rows["body_part"]) == PARTS
        assert rows.groupby("body_part")["label"].nunique().eq(2).all(), name


def test_same_seed_same_split_different_seed_different(
    index: pd.DataFrame, split: pd.DataFrame
) -> None:
    assert split_by_patient(index, seed=0)["split"].equals(split["split"])
    assert not split_by_patient(index, seed=1)["split"].equals(split["split"])


def test_split_does_not_depend_on_row_order(index: pd.DataFrame, split: pd.DataFrame) -> None:
    shuffled = index.sample(frac=1.0, random_state=7)
    again = split_by_patient(shuffled, seed=0).set_index("rel_path")["split"]
    assert again.sort_index().equals(split.set_index("rel_path")["split"].sort_index())


def test_rare_stratum_still_reaches_every_split(index: pd.DataFrame) -> None:
    """Three abnormal-humerus patients: the 1-in-10 test fold alone would usually miss one."""
    rare = synthetic_index(3, parts=("HUMERUS",), seed=3, abnormal_rate=1.0)
    rare["patient_id"] = rare["patient_id"].str.replace("patient", "rare")
    normal = synthetic_index(12, parts=("HUMERUS",), seed=4, abnormal_rate=0.0)
    normal["patient_id"] = normal["patient_id"].str.replace("patient", "normal")
    frame = pd.concat([index, rare, normal], ignore_index=True)
    for seed in range(5):
        result = split_by_patient(frame, seed=seed)
        humerus = result[result["body_part"] == "HUMERUS"]
        assert humerus.groupby("split")["label"].nunique().to_dict() == dict.fromkeys(SPLITS, 2)
        assert splits_per_patient(result).max() == 1


# --------------------------------------------------------------------------- official mode


def test_official_mode_keeps_valid_as_test() -> None:
    index = synthetic_index(300, seed=0, first_valid_patient=250)
    result = split_by_patient(index, mode="official", seed=0)

    from_valid = result["split_source"] == "valid"
    assert (result.loc[from_valid, "split"] == "test").all()
    assert set(result.loc[~from_valid, "split"]) == {"train", "validation"}
    assert splits_per_patient(result).max() == 1
    train_side = result[~from_valid]
    val_share = 100 * (train_side["split"] == "validation").mean()
    assert abs(val_share - 20.0) <= 2.0
    for name in SPLITS:
        rows = result[result["split"] == name]
        assert rows.groupby("body_part")["label"].nunique().to_dict() == dict.fromkeys(PARTS, 2)


def test_official_mode_without_valid_rows_is_a_data_error(index: pd.DataFrame) -> None:
    with pytest.raises(DataError, match="valid"):
        split_by_patient(index, mode="official")


def test_official_mode_refuses_patients_in_both_sources() -> None:
    index = synthetic_index(300, seed=0, first_valid_patient=250)
    index.loc[index.index[-1], "patient_id"] = "patient00001"
    with pytest.raises(DataError, match=r"both train/ and valid/.*patient00001"):
        split_by_patient(index, mode="official")


# --------------------------------------------------------------------------- errors


def test_too_small_stratum_names_part_label_and_count(index: pd.DataFrame) -> None:
    rare = synthetic_index(2, parts=("WRIST",), seed=0, abnormal_rate=1.0)
    rare["patient_id"] = rare["patient_id"].str.replace("patient", "wrist")
    normal = synthetic_index(10, parts=("WRIST",), seed=0, abnormal_rate=0.0)
    normal["patient_id"] = normal["patient_id"].str.replace("patient", "wristn")
    frame = pd.concat([index, rare, normal], ignore_index=True)
    with pytest.raises(DataError, match=r"WRIST has only 2 patient\(s\) with abnormal.*at least 3"):
        split_by_patient(frame)


def test_part_with_one_label_is_a_data_error(index: pd.DataFrame) -> None:
    normal = synthetic_index(20, parts=("FINGER",), seed=0, abnormal_rate=0.0)
    normal["patient_id"] = normal["patient_id"].str.replace("patient", "finger")
    with pytest.raises(DataError, match="FINGER has only normal images"):
        split_by_patient(pd.concat([index, normal], ignore_index=True))


def test_empty_index_is_a_data_error(index: pd.DataFrame) -> None:
    with pytest.raises(DataError, match="empty"):
        split_by_patient(index.iloc[:0])


def test_bad_mode_and_fractions_are_config_errors(index: pd.DataFrame) -> None:
    with pytest.raises(ConfigError, match="unknown split mode"):
        split_by_patient(index, mode="nope")
    with pytest.raises(ConfigError, match="fractions"):
        split_by_patient(index, fractions=(0.5, 0.2, 0.2))
    with pytest.raises(ConfigError, match="whole folds"):
        split_by_patient(index, fractions=(0.5, 0.2, 0.3))


def test_other_fractions(index: pd.DataFrame) -> None:
    result = split_by_patient(index, fractions=(0.6, 0.2, 0.2))  # 5 folds, then 4
    pct = percentages(result, None)
    assert abs(pct["test"] - 20) <= 2 and abs(pct["validation"] - 20) <= 2


# --------------------------------------------------------------------------- folds


def test_assign_folds_by_patient_stratified_deterministic(index: pd.DataFrame) -> None:
    folds = assign_folds(index, k=5, seed=0)

    assert folds.index.equals(index.index) and folds.dtype == np.int64
    assert sorted(folds.unique()) == [0, 1, 2, 3, 4]
    assert index.assign(fold=folds).groupby("patient_id")["fold"].nunique().max() == 1
    sizes = folds.value_counts(normalize=True)
    assert (abs(sizes - 0.2) < 0.03).all()
    per_fold = index.assign(fold=folds).groupby("fold")
    assert per_fold["body_part"].nunique().eq(3).all() and per_fold["label"].nunique().eq(2).all()
    assert assign_folds(index, k=5, seed=0).equals(folds)
    assert not assign_folds(index, k=5, seed=1).equals(folds)
    with pytest.raises(ConfigError):
        assign_folds(index, k=1)


# --------------------------------------------------------------------------- files


def test_write_read_round_trip(split: pd.DataFrame, tmp_path: Path) -> None:
    path = tmp_path / "out" / "split.csv"
    write_split(split, path)
    on_disk = pd.read_csv(path, dtype=str)
    assert "path" not in on_disk.columns  # shareable: dataset-relative paths only
    assert not on_disk["rel_path"].str.startswith("/").any()
    back = read_split(path, root=split_root(split))

    assert list(back.columns) == [*SPLIT_COLUMNS, "split_source"]
    expected = split[list(back.columns)].reset_index(drop=True)
    pd.testing.assert_frame_equal(back, expected, check_dtype=False)
    assert back["label"].dtype == np.int64
    assert not list(tmp_path.joinpath("out").glob("*.tmp"))


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda f: f.drop(columns="patient_id"), "lacks column"),
        (lambda f: f.assign(split=f["split"].where(f.index != 3, "holdout")), "line 5: split"),
        (lambda f: f.assign(label=f["label"].where(f.index != 0, 7)), "line 2: label"),
        (lambda f: f.assign(body_part="KNEE"), "unknown body part"),
        (lambda f: f.iloc[:0], "no rows"),
        (lambda f: pd.concat([f, f.iloc[:1]]), "repeats"),
        (lambda f: f.assign(split=np.where(f.index == 0, "test", "train")), "more than one split"),
    ],
)
def test_read_split_rejects_bad_files(split: pd.DataFrame, tmp_path: Path, edit, match) -> None:
    path = tmp_path / "split.csv"
    frame = split.sort_values("patient_id", ignore_index=True)[list(SPLIT_COLUMNS)]
    edit(frame).to_csv(path, index=False)
    with pytest.raises(DataError, match=match):
        read_split(path, root=tmp_path)


@pytest.mark.parametrize("content", [b"", b'"unterminated\n', b"\xff\xfe\x00garbage"])
def test_read_split_rejects_unreadable_files(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "split.csv"
    path.write_bytes(content)
    with pytest.raises(DataError, match=str(path)):
        read_split(path, root=tmp_path)


def test_read_split_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        read_split(tmp_path / "nope.csv", root=tmp_path)


def test_split_summary(split: pd.DataFrame) -> None:
    summary = split_summary(split)

    assert list(summary.index) == list(SPLITS)
    assert summary[("all", "images")].sum() == len(split)
    assert summary[("all", "patients")].sum() == split["patient_id"].nunique()
    parts = summary.drop(columns="all", level=0)
    assert parts.sum(axis=1).equals(summary[("all", "images")])
    assert summary.loc["test", ("HAND", "abnormal")] == len(
        split.query("split == 'test' and body_part == 'HAND' and label == 1")
    )
    assert "% images" in summary.to_string()


# --------------------------------------------------------------------------- CLI


def test_cli_split_writes_the_csv(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = tmp_path / "MURA-v1.1"
    write_mura_tree(root, balanced_studies(["ELBOW", "HAND", "SHOULDER"], patients_per_label=5))
    out = tmp_path / "split.csv"

    assert main(["split", str(root), "--out", str(out), "--seed", "3"]) == 0
    printed = capsys.readouterr().out
    assert "% images" in printed and f"wrote {out}" in printed
    written = read_split(out, root=root)
    assert len(written) == 30 and set(written["split"]) == set(SPLITS)
    assert splits_per_patient(written).max() == 1


def test_cli_split_too_few_patients_is_one_error_line(tmp_path: Path, capsys) -> None:
    root = tmp_path / "MURA-v1.1"
    write_mura_tree(root, balanced_studies(["ELBOW"], patients_per_label=2))
    out = tmp_path / "split.csv"
    assert main(["split", str(root), "--parts", "elbow", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: body part ELBOW has only 2 patient(s)") and err.count("\n") == 1
    assert not out.exists()
