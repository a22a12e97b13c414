"""Tests for training.dataset: both layouts, every counted problem, every user error, the CLI."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from bonexr.cli import main
from bonexr.errors import ConfigError, DataError
from bonexr.labels import ALL_BODY_PARTS
from tests.mura_tree import (
    StudySpec,
    append_csv_rows,
    balanced_studies,
    write_mura_tree,
    write_peer_tree,
    write_png,
)
from training.dataset import COUNT_KEYS, INDEX_COLUMNS, index_dataset

CLEAN = dict.fromkeys(COUNT_KEYS, 0)


def counts(**nonzero: int) -> dict[str, int]:
    """The full expected ``counts`` dict: zeros except ``nonzero``."""
    return {**CLEAN, **nonzero}


# A MURA tree with exactly one of each problem (see messy_mura). FINGER is present but not
# selected by default; patient 5's study has no labeled_studies row; patient 3's folder says
# negative but the CSV says abnormal.
MESSY_STUDIES = [
    StudySpec("ELBOW", patient=1, label=0, n_images=2, modes=("L", "RGB")),
    StudySpec("ELBOW", patient=2, label=1),
    StudySpec("HAND", patient=3, label=1, n_images=2, folder_label=0),
    StudySpec("SHOULDER", patient=4, label=0),
    StudySpec("HAND", patient=5, label=0, in_study_csv=False),
    StudySpec("FINGER", patient=6, label=1),
    StudySpec("ELBOW", patient=10, label=1, source="valid"),
    StudySpec("SHOULDER", patient=11, label=0, n_images=2, source="valid"),
]
P1 = "train/XR_ELBOW/patient00001/study1_negative"


@pytest.fixture
def messy_mura(tmp_path: Path) -> Path:
    """A MURA tree in a folder *not* named MURA-v1.1, with one of each defect."""
    root = tmp_path / "my_mura"
    write_mura_tree(root, MESSY_STUDIES)
    write_png(root / P1 / "._image1.png")  # macOS resource fork
    (root / P1 / "notes.txt").write_text("not an image")
    write_png(root / "valid/XR_SHOULDER/patient00011/study1_negative/image3.png")  # unlisted
    append_csv_rows(
        root / "train_image_paths.csv",
        [
            "MURA-v1.1/train/XR_ELBOW/patient00002/study1_positive/image2.png",  # missing file
            f"MURA-v1.1/{P1}/image1.png",  # duplicate row
        ],
    )
    append_csv_rows(
        root / "train_labeled_studies.csv",
        [
            "MURA-v1.1/train/XR_ELBOW/patient00007/study1_negative/,0",  # study without images
            "MURA-v1.1/train/XR_ELBOW/patient00002/study1_positive/,1",  # duplicate row
        ],
    )
    return root


@pytest.fixture
def clean_mura(tmp_path: Path) -> Path:
    root = tmp_path / "MURA-v1.1"
    studies = balanced_studies(["ELBOW", "HAND", "SHOULDER"], patients_per_label=4)
    studies += balanced_studies(
        ["ELBOW", "HAND", "SHOULDER"], patients_per_label=1, source="valid", first_patient=100
    )
    write_mura_tree(root, studies)
    return root


# --------------------------------------------------------------------------- MURA layout


def test_messy_mura_counts_every_problem_exactly(messy_mura: Path) -> None:
    index, report = index_dataset(messy_mura)

    assert report.layout == "mura"
    assert report.counts == counts(
        missing_on_disk=1,
        not_in_csv=1,
        label_mismatch=1,
        study_not_in_csv=1,
        empty_study=1,
        duplicate_rows=2,
        hidden=1,
        not_image=1,
    )
    assert report.examples["missing_on_disk"] == [
        "train/XR_ELBOW/patient00002/study1_positive/image2.png"
    ]
    assert report.examples["not_in_csv"] == [
        "valid/XR_SHOULDER/patient00011/study1_negative/image3.png"
    ]
    assert report.examples["label_mismatch"] == ["train/XR_HAND/patient00003/study1_negative/"]
    assert report.examples["study_not_in_csv"] == [
        "train/XR_HAND/patient00005/study1_negative/image1.png"
    ]
    assert report.examples["empty_study"] == ["train/XR_ELBOW/patient00007/study1_negative/"]
    assert report.examples["hidden"] == [f"{P1}/._image1.png"]
    assert report.examples["not_image"] == [f"{P1}/notes.txt"]
    assert len(report.errors) == 5 and len(report.warnings) == 3
    assert report.other_parts == ("FINGER",)
    assert (report.n_images, report.n_studies, report.n_patients) == (9, 6, 6)
    assert len(index) == 9


def test_messy_mura_index_rows(messy_mura: Path) -> None:
    index, _ = index_dataset(messy_mura)

    assert list(index.columns) == list(INDEX_COLUMNS)
    assert index["rel_path"].tolist() == sorted(index["rel_path"])
    assert index["rel_path"].is_unique
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in index["path"])
    assert set(index["body_part"]) == {"ELBOW", "HAND", "SHOULDER"}
    assert index.groupby("split_source").size().to_dict() == {"train": 6, "valid": 3}
    assert index["label"].dtype == "int64" and (index["label"] == index["study_label"]).all()
    first = index.iloc[0]
    assert first["rel_path"] == f"{P1}/image1.png"
    assert first["study_id"] == P1
    assert first["patient_id"] == "patient00001"
    assert first["path"] == str(messy_mura.resolve() / P1 / "image1.png")
    # The RGB view is indexed like any other (indexing never decodes images).
    assert Image.open(index.iloc[1]["path"]).mode == "RGB"
    # The CSV label wins over the folder suffix.
    hand = index[index["patient_id"] == "patient00003"]
    assert hand["label"].tolist() == [1, 1]
    assert "patient00005" not in set(index["patient_id"])


def test_messy_mura_describe_and_log(messy_mura: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="training.dataset"):
        _, report = index_dataset(messy_mura)

    text = report.describe()
    assert "MURA-v1.1" in text and "not selected: FINGER" in text
    assert "indexed 9 images in 6 studies of 6 patients" in text
    assert "normal  abnormal  total" in text
    for message in report.errors + report.warnings:
        assert message in text
    assert any("CSV label (MURA's ground truth) was used" in m for m in report.errors)
    assert any("1 image(s) listed" in m and "image2.png" in m for m in report.errors)
    logged = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(logged) == 8


def test_problems_are_counted_only_for_selected_parts(messy_mura: Path) -> None:
    index, report = index_dataset(messy_mura, body_parts=["shoulder"])

    assert set(index["body_part"]) == {"SHOULDER"}
    assert len(index) == 3
    assert report.counts == counts(not_in_csv=1)
    assert report.other_parts == ("ELBOW", "FINGER", "HAND")


def test_clean_mura_has_no_problems(clean_mura: Path) -> None:
    index, report = index_dataset(clean_mura)

    assert report.counts == CLEAN
    assert report.errors == [] and report.warnings == []
    assert "no problems found" in report.describe()
    assert len(index) == 30
    table = report.table
    assert table.loc[("train", "HAND"), "abnormal"] == 4
    assert table.loc[("total", ""), "total"] == 30


def test_csv_paths_without_dataset_prefix(tmp_path: Path) -> None:
    root = tmp_path / "data"
    write_mura_tree(root, balanced_studies(["ELBOW"], patients_per_label=1), csv_prefix="")
    index, report = index_dataset(root, body_parts=["elbow"])
    assert len(index) == 2 and report.counts == CLEAN


def test_all_seven_body_parts(tmp_path: Path) -> None:
    root = tmp_path / "MURA-v1.1"
    write_mura_tree(root, balanced_studies(ALL_BODY_PARTS, patients_per_label=1))
    index, report = index_dataset(root, body_parts=ALL_BODY_PARTS)

    assert sorted(index["body_part"].unique()) == sorted(ALL_BODY_PARTS)
    assert index.groupby("body_part")["label"].nunique().eq(2).all()
    assert report.counts == CLEAN and report.other_parts == ()


def test_body_parts_as_comma_string_and_xr_names(clean_mura: Path) -> None:
    index, _ = index_dataset(clean_mura, body_parts="XR_HAND,elbow")
    assert set(index["body_part"]) == {"ELBOW", "HAND"}


def test_jpeg_extensions_any_case(tmp_path: Path) -> None:
    root = tmp_path / "MURA-v1.1"
    write_mura_tree(root, [StudySpec("ELBOW", 1, label=0), StudySpec("ELBOW", 2, label=1)])
    study = "train/XR_ELBOW/patient00001/study1_negative"
    for name in ("image2.JPG", "image3.jpeg"):
        Image.new("L", (16, 16)).save(root / study / name, format="JPEG")
    append_csv_rows(root / "train_image_paths.csv", [f"MURA-v1.1/{study}/image2.JPG"])
    _, report = index_dataset(root, body_parts=["elbow"])
    assert report.n_images == 3
    assert report.counts == counts(not_in_csv=1)  # image3.jpeg is an image, but unlisted


def test_patient_in_both_sources_is_a_warning(tmp_path: Path) -> None:
    root = tmp_path / "MURA-v1.1"
    write_mura_tree(
        root,
        [
            StudySpec("ELBOW", 1, label=0),
            StudySpec("ELBOW", 1, study=2, label=1, source="valid"),
        ],
    )
    _, report = index_dataset(root, body_parts=["elbow"])
    assert report.counts == counts(shared_patient=1)
    assert report.examples["shared_patient"] == ["patient00001"]


def test_indexing_never_opens_images(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """3000 empty "PNGs": any decoding would fail, and so would any image open (how long
    the walk takes at MURA scale is measured in bench/, not asserted here)."""
    root = tmp_path / "MURA-v1.1"
    write_mura_tree(root, [])
    rows, studies = [], []
    for patient in range(1, 1001):
        label = patient % 2
        study = f"train/XR_HAND/patient{patient:05d}/study1_{'positive' if label else 'negative'}"
        (root / study).mkdir(parents=True)
        studies.append(f"MURA-v1.1/{study}/,{label}")
        for i in (1, 2, 3):
            (root / study / f"image{i}.png").touch()
            rows.append(f"MURA-v1.1/{study}/image{i}.png")
    append_csv_rows(root / "train_image_paths.csv", rows)
    append_csv_rows(root / "train_labeled_studies.csv", studies)

    def no_images(*args: object, **kwargs: object) -> None:
        raise AssertionError("the indexer opened an image")

    monkeypatch.setattr("PIL.Image.open", no_images)
    index, report = index_dataset(root, body_parts=["hand"])
    assert len(index) == 3000 and report.counts == CLEAN


# --------------------------------------------------------------------------- peer layout


def test_peer_layout_counts_exactly(tmp_path: Path) -> None:
    root = tmp_path / "peer"
    write_peer_tree(
        root,
        [
            StudySpec("ELBOW", 1, label=1, n_images=2, modes=("RGB",)),
            StudySpec("HAND", 2, label=0),
            StudySpec("SHOULDER", 3, label=1),
            StudySpec("ELBOW", 1, study=2, label=0, source="valid"),
            StudySpec("WRIST", 4, label=0),
        ],
    )
    write_png(root / "train/Elbow/patient00009/study1/image1.png")  # no label suffix
    write_png(root / "train/Elbow/stray.png")  # not in a study folder
    write_png(root / "train/Elbow/patient00001/study1_positive/._image1.png")
    (root / "train/Elbow/.cache").mkdir()  # hidden folder: skipped, counted once
    write_png(root / "train/Elbow/.cache/image1.png")
    (root / "train/Hand/Thumbs.db").write_text("x")

    index, report = index_dataset(root)

    assert report.layout == "peer"
    assert report.counts == counts(
        no_label_suffix=1, hidden=2, not_image=1, misplaced=1, shared_patient=1
    )
    assert report.examples["no_label_suffix"] == ["train/Elbow/patient00009/study1/image1.png"]
    assert report.examples["misplaced"] == ["train/Elbow/stray.png"]
    assert report.other_parts == ("WRIST",)
    assert "peer" in report.describe()
    assert list(index.columns) == list(INDEX_COLUMNS)
    assert index["rel_path"].tolist() == [
        "train/Elbow/patient00001/study1_positive/image1.png",
        "train/Elbow/patient00001/study1_positive/image2.png",
        "train/Hand/patient00002/study1_negative/image1.png",
        "train/Shoulder/patient00003/study1_positive/image1.png",
        "valid/Elbow/patient00001/study2_negative/image1.png",
    ]
    assert index["label"].tolist() == [1, 1, 0, 1, 0]
    assert index["split_source"].tolist() == ["train"] * 4 + ["valid"]
    assert index["study_id"].iloc[0] == "train/Elbow/patient00001/study1_positive"
    assert index["body_part"].tolist() == ["ELBOW", "ELBOW", "HAND", "SHOULDER", "ELBOW"]


@pytest.mark.parametrize("folder", [lambda p: f"XR_{p}", str.lower, str.upper])
def test_peer_layout_part_folder_names_any_case(tmp_path: Path, folder) -> None:
    root = tmp_path / "peer"
    write_peer_tree(root, balanced_studies(["HAND"], patients_per_label=1), part_folder=folder)
    index, report = index_dataset(root, body_parts=["hand"])
    assert len(index) == 2 and report.counts == CLEAN and report.layout == "peer"


# --------------------------------------------------------------------------- user errors


def test_missing_root_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        index_dataset(tmp_path / "nope")


def test_file_root_is_a_data_error(tmp_path: Path) -> None:
    path = tmp_path / "file.txt"
    path.write_text("x")
    with pytest.raises(DataError, match="is not a folder"):
        index_dataset(path)


def test_empty_root_is_a_data_error(tmp_path: Path) -> None:
    (tmp_path / ".DS_Store").write_text("")
    with pytest.raises(DataError, match="is empty"):
        index_dataset(tmp_path)


def test_unrecognised_folder_is_a_data_error_with_a_hint(tmp_path: Path) -> None:
    write_mura_tree(tmp_path / "MURA-v1.1", balanced_studies(["ELBOW"], patients_per_label=1))
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(DataError, match=r"not a MURA dataset.*did you mean .*MURA-v1\.1"):
        index_dataset(tmp_path)


def test_no_images_for_requested_parts_names_found_and_requested(tmp_path: Path) -> None:
    root = tmp_path / "MURA-v1.1"
    write_mura_tree(root, balanced_studies(["WRIST", "FINGER"], patients_per_label=1))
    with pytest.raises(DataError, match=r"ELBOW, HAND, SHOULDER.*found: FINGER, WRIST"):
        index_dataset(root)


def test_all_listed_images_missing_says_so(tmp_path: Path) -> None:
    root = tmp_path / "MURA-v1.1"
    write_mura_tree(root, balanced_studies(["ELBOW"], patients_per_label=1))
    for study in (root / "train").glob("*/*/*"):
        for image in study.iterdir():
            image.unlink()
    with pytest.raises(DataError, match=r"2 image.*missing on disk"):
        index_dataset(root, body_parts=["elbow"])


def test_unknown_body_part_is_a_config_error(clean_mura: Path) -> None:
    with pytest.raises(ConfigError, match="unknown body part 'knee'"):
        index_dataset(clean_mura, body_parts=["knee"])


@pytest.mark.parametrize(
    ("csv", "row", "match"),
    [
        ("train_image_paths.csv", "MURA-v1.1/XR_ELBOW/image1.png", "cannot parse"),
        ("train_image_paths.csv", "MURA-v1.1/valid/XR_ELBOW/p1/study1_positive/i.png", "parse"),
        ("train_image_paths.csv", "MURA-v1.1/train/XR_ELBOW/p1/study1_positive/i.txt", "parse"),
        ("train_image_paths.csv", "MURA-v1.1/train/XR_KNEE/p1/study1_positive/i.png", "'XR_KNEE'"),
        ("train_labeled_studies.csv", "MURA-v1.1/train/XR_ELBOW/p1/study1_positive/,2", "parse"),
        ("valid_labeled_studies.csv", "path,label", "cannot parse 'path,label'"),
    ],
)
def test_unparseable_csv_row_names_file_and_line(
    clean_mura: Path, csv: str, row: str, match: str
) -> None:
    path = clean_mura / csv
    n_lines = len(path.read_text().splitlines())
    append_csv_rows(path, ["", row])  # a blank line first: line numbers count it
    with pytest.raises(DataError, match=match) as info:
        index_dataset(clean_mura)
    assert f"{csv}, line {n_lines + 2}" in str(info.value)


def test_half_a_csv_pair_is_a_data_error(clean_mura: Path) -> None:
    (clean_mura / "valid_labeled_studies.csv").unlink()
    with pytest.raises(DataError, match=r"has valid_image_paths\.csv but not valid_labeled"):
        index_dataset(clean_mura)


def test_study_with_two_labels_is_a_data_error(clean_mura: Path) -> None:
    study = "MURA-v1.1/train/XR_ELBOW/patient00001/study1_negative/"
    append_csv_rows(clean_mura / "train_labeled_studies.csv", [f"{study},1"])
    with pytest.raises(DataError, match="both labels"):
        index_dataset(clean_mura)


# --------------------------------------------------------------------------- CLI


def test_cli_index_prints_the_table(
    clean_mura: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "index.csv"
    assert main(["index", str(clean_mura), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "normal  abnormal  total" in printed and "no problems found" in printed
    written = pd.read_csv(out)
    assert len(written) == 30 and list(written.columns) == list(INDEX_COLUMNS)


def test_cli_index_strict_fails_on_problems(messy_mura: Path, capsys) -> None:
    assert main(["index", str(messy_mura)]) == 0
    assert main(["index", str(messy_mura), "--strict"]) == 1
    assert "missing on disk" in capsys.readouterr().out


def test_cli_index_missing_folder_is_one_error_line(capsys: pytest.CaptureFixture) -> None:

    assert main(["index", "/nonexistent"]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("error: ") and "does not exist" in captured.err
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err


def test_cli_unknown_part_is_an_argparse_error(clean_mura: Path, capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(["index", str(clean_mura), "--parts", "foo"])
    assert info.value.code == 2
    assert "unknown body part 'foo'" in capsys.readouterr().err
