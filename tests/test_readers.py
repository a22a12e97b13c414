"""Readers for real data sets: FracAtlas (as distributed and as the project's subset) and
the labels CSV; each validated before any training, with errors naming the file and row.
The real-FracAtlas tests skip where ``../shared/datasets/fracatlas`` is absent."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from bonexr.errors import DataError, ImageError
from bonexr.imaging import decode_upload, preprocess_file
from bonexr.labels import ALL_BODY_PARTS, normalize_body_part, study_type
from training.config import MIN_TRAIN_POSITIVES, TrainConfig
from training.dataset import index_dataset, read_boxes
from training.run import with_model_parts
from training.split import split_by_patient

from .fracatlas_support import fracatlas_root

ORIGINAL_COLUMNS = (
    "image_id,hand,leg,hip,shoulder,mixed,hardware,multiscan,fractured,fracture_count,"
    "frontal,lateral,oblique"
)


def test_the_vocabulary_grows_beyond_mura_in_one_table() -> None:
    assert {"LEG", "HIP"} <= set(ALL_BODY_PARTS)
    assert normalize_body_part("XR_LEG") == "LEG" and study_type("hip") == "XR_HIP"
    with pytest.raises(Exception, match=r"valid body parts are: .*leg, hip"):
        normalize_body_part("knee")


def test_the_shared_fracatlas_subset_indexes_one_row_per_single_part_image() -> None:
    root = fracatlas_root()
    index, report = index_dataset(root, body_parts=ALL_BODY_PARTS)
    table = pd.read_csv(root / "dataset.csv")
    single = table[table["body_part"] != "mixed"]
    assert len(index) == len(single)  # every single-part image, none of the mixed ones
    assert report.counts["several_parts"] == int((table["body_part"] == "mixed").sum())
    counts = index.groupby(["body_part", "label"]).size().to_dict()
    for (part, label), n in single.groupby(["body_part", "fractured"]).size().items():
        assert counts[(part.upper(), label)] == n
    # no patient ids: each image is its own patient and study, and the report says so
    assert (index["patient_id"] == index["study_id"]).all()
    assert index["patient_id"].is_unique
    assert report.counts["no_patient_ids"] == len(index)
    assert "split is by image" in report.describe()


def test_fracatlas_boxes_lie_on_their_images() -> None:
    root = fracatlas_root()
    boxes = read_boxes(root)
    assert boxes is not None and len(boxes) > 100
    assert (boxes["x1"] > boxes["x0"]).all() and (boxes["y1"] > boxes["y0"]).all()
    for row in boxes.head(20).to_dict("records"):
        with Image.open(root / row["rel_path"]) as image:
            assert row["x1"] <= image.width and row["y1"] <= image.height


def test_a_truncated_jpeg_is_refused_the_same_way_in_training_and_serving() -> None:
    root = fracatlas_root()
    truncated = root / "images" / "IMG0004070.jpg"  # cut short at the source (FracAtlas)
    if not truncated.is_file():
        pytest.skip("the truncated example is not in this copy")
    with pytest.raises(ImageError, match="truncated"):
        preprocess_file(truncated, 64)  # the training pipeline's decoder
    with pytest.raises(ImageError, match="truncated"):
        decode_upload(truncated.read_bytes())  # the service's


def _jpeg(path: Path, size: tuple[int, int] = (80, 60)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(str(path)))
    Image.fromarray(rng.integers(0, 255, (size[1], size[0]), dtype=np.uint8)).save(path)


def _distributed(root: Path, annotation: str) -> Path:
    """FracAtlas as downloaded: label folders, the original columns, one annotation kind."""
    rows = [
        ("IMG0000001.jpg", "1,0,0,0,0", 1),
        ("IMG0000002.jpg", "1,0,0,0,0", 0),
        ("IMG0000003.jpg", "0,1,0,0,0", 1),
        ("IMG0000004.jpg", "0,1,0,0,0", 0),
        ("IMG0000005.jpg", "1,1,0,0,1", 0),  # mixed: not indexed
    ]
    lines = [ORIGINAL_COLUMNS]
    for name, flags, label in rows:
        folder = "Fractured" if label else "Non_fractured"
        _jpeg(root / "images" / folder / name)
        lines.append(f"{name},{flags},0,0,{label},{label},1,0,0")
    (root / "dataset.csv").write_text("\n".join(lines) + "\n")
    if annotation == "coco":
        coco = {
            "images": [
                {"id": 1, "file_name": "IMG0000001.jpg"},
                {"id": 3, "file_name": "IMG0000003.jpg"},
            ],
            "annotations": [
                {"image_id": 1, "bbox": [10, 5, 20, 10]},
                {"image_id": 3, "bbox": [70, 50, 30, 30]},  # past the edge: left out
            ],
        }
        path = root / "Annotations" / "COCO JSON" / "COCO_fracture_masks.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps(coco))
    elif annotation == "yolo":
        folder = root / "Annotations" / "YOLO"
        folder.mkdir(parents=True)
        (folder / "IMG0000001.txt").write_text("0 0.25 0.166667 0.25 0.166667\n")
    else:
        folder = root / "Annotations" / "PASCAL VOC"
        folder.mkdir(parents=True)
        (folder / "IMG0000001.xml").write_text(
            "<annotation><filename>IMG0000001.jpg</filename><object><bndbox><xmin>10</xmin>"
            "<ymin>5</ymin><xmax>30</xmax><ymax>15</ymax></bndbox></object></annotation>"
        )
    return root


@pytest.mark.parametrize("annotation", ["coco", "yolo", "voc"])
def test_fracatlas_as_distributed(tmp_path: Path, annotation: str) -> None:
    root = _distributed(tmp_path / "FracAtlas", annotation)
    index, report = index_dataset(root, body_parts=ALL_BODY_PARTS)
    assert sorted(index["body_part"]) == ["HAND", "HAND", "LEG", "LEG"]
    assert index.set_index("patient_id")["label"].to_dict() == {
        "IMG0000001": 1, "IMG0000002": 0, "IMG0000003": 1, "IMG0000004": 0,
    }  # fmt: skip
    assert report.counts["several_parts"] == 1
    boxes = read_boxes(root)
    assert boxes is not None
    first = boxes[boxes["rel_path"] == "images/Fractured/IMG0000001.jpg"].iloc[0]
    corners = (first["x0"], first["y0"], first["x1"], first["y1"])
    assert corners == pytest.approx((10, 5, 30, 15), abs=1e-3)
    if annotation == "coco":
        assert report.counts["box_outside"] == 1 and len(boxes) == 1


def test_fracatlas_mistakes_are_named_before_training(tmp_path: Path) -> None:
    root = _distributed(tmp_path / "a", "coco")
    text = (root / "dataset.csv").read_text().splitlines()
    (root / "dataset.csv").write_text("\n".join([*text, text[1]]) + "\n")
    with pytest.raises(DataError, match=r"dataset.csv, line 7: image_id 'IMG0000001.jpg' appears"):
        index_dataset(root)
    (root / "dataset.csv").write_text(
        "\n".join(
            [text[0], ",".join(f if i != 8 else "2" for i, f in enumerate(text[1].split(",")))]
        )
    )
    with pytest.raises(DataError, match="line 2: label '2' is not 0 or 1"):
        index_dataset(root)


def _labels_csv(tmp_path: Path, rows: list[str]) -> Path:
    for name in ("a.png", "b.png", "c.png", "sub/d.png"):
        _jpeg(tmp_path / name, (50, 40))
    path = tmp_path / "labels.csv"
    path.write_text("\n".join(["path,body_part,label,patient_id,study_id,x,y,width,height", *rows]))
    return path


def test_a_labels_csv_with_patients_studies_and_boxes(tmp_path: Path) -> None:
    path = _labels_csv(
        tmp_path,
        [
            "a.png,hand,1,p1,s1,5,5,10,10",
            "a.png,hand,1,p1,s1,20,20,5,5",  # a second box of the same image
            "b.png,Hand,1,p1,s1,,,,",
            "c.png,XR_LEG,0,p2,,,,,",
            "sub/d.png,hip,0,,,,,,",
            "gone.png,hip,0,p3,s3,,,,",
        ],
    )
    index, report = index_dataset(path, body_parts=ALL_BODY_PARTS)
    assert sorted(index["rel_path"]) == ["a.png", "b.png", "c.png", "sub/d.png"]
    by_path = index.set_index("rel_path")
    assert by_path.loc["c.png", "study_id"] == "p2"  # no study id: the patient's
    assert by_path.loc["sub/d.png", "patient_id"] == "d"  # no patient id: the image's own
    assert report.counts["missing_on_disk"] == 1
    boxes = read_boxes(path)
    assert boxes is not None and len(boxes) == 2


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("a.png,knee,1,p1,s1,,,,", r"labels.csv, line 2: unknown body part 'knee'"),
        ("a.png,hand,2,p1,s1,,,,", r"line 2: label '2' is not 0 or 1"),
    ],
)
def test_labels_csv_mistakes_name_the_file_and_line(tmp_path: Path, row: str, message: str) -> None:
    with pytest.raises(DataError, match=message):
        index_dataset(_labels_csv(tmp_path, [row]))


def test_one_image_with_two_labels_is_refused(tmp_path: Path) -> None:
    path = _labels_csv(tmp_path, ["a.png,hand,1,p1,s1,,,,", "a.png,hand,0,p1,s1,,,,"])
    with pytest.raises(DataError, match=r"line 3: 'a\.png' appears again with another"):
        index_dataset(path)


def test_a_box_outside_its_image_is_left_out_and_counted(tmp_path: Path) -> None:
    path = _labels_csv(tmp_path, ["a.png,hand,1,p1,s1,40,30,30,30", "b.png,hand,0,p2,s2,,,,"])
    _, report = index_dataset(path)
    assert report.counts["box_outside"] == 1 and read_boxes(path) is None


def test_parts_without_enough_positives_get_no_model_but_stay_in_the_router() -> None:
    root = fracatlas_root()
    index, _ = index_dataset(root, body_parts=ALL_BODY_PARTS)
    split = split_by_patient(index, seed=0)
    config = TrainConfig(body_parts=(), router_parts=("HAND", "HIP", "LEG", "SHOULDER"))
    chosen = with_model_parts(config, split)
    # FracAtlas has 8 fractured hips and 8 shoulders: too few for a model of their own
    assert chosen.body_parts == ("HAND", "LEG")
    assert chosen.router_parts == ("HAND", "HIP", "LEG", "SHOULDER")
    named = with_model_parts(
        TrainConfig(body_parts=("HIP",), router_parts=config.router_parts), split
    )
    assert named.body_parts == ("HIP",)  # named explicitly: kept, with a warning
    assert MIN_TRAIN_POSITIVES == 30
