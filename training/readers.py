"""Readers for real data sets beside MURA: FracAtlas and a plain labels CSV.

Each reader turns a data set into the one index every later step reads (the columns of
:data:`training.dataset.INDEX_COLUMNS`) plus the defect boxes the heat maps are scored
against (``rel_path, defect, x0, y0, x1, y1`` in the stored image's pixels, as the
synthetic generator writes them). Problems are found before any training starts: a hard
mistake (unknown body part, label outside {0, 1}, one id with two labels, no such
column) raises :class:`~bonexr.errors.DataError` naming the file and the row; what can be
skipped (a missing file, an image of several parts, a box outside its image) is counted
in the :class:`~training.dataset.IndexReport` with examples.

* **FracAtlas** (Abedeen et al., Scientific Data 10, 521, 2023; CC BY 4.0), found by its
  ``dataset.csv``: as distributed (``images/Fractured|Non_fractured/*.jpg`` and boxes in
  ``Annotations/COCO JSON``, ``Annotations/YOLO`` or ``Annotations/PASCAL VOC``), or as
  the project's ``../shared`` subset (``images/*.jpg``, a ``body_part`` column and
  ``boxes.csv``). FracAtlas has no patient ids: each image is its own patient and study,
  so a split is by image (said in the report, the model card and every answer's card).
* **Labels CSV** (in-house data): ``path,body_part,label`` with optional ``patient_id``,
  ``study_id`` and a fracture box ``x,y,width,height``; paths relative to the CSV's
  folder; one row per box (the other columns repeated).
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from bonexr.errors import ConfigError, DataError
from bonexr.labels import normalize_body_part

#: The body-part flags of FracAtlas's ``dataset.csv``, in its order.
FRACATLAS_PART_FLAGS: tuple[str, ...] = ("hand", "leg", "hip", "shoulder")
FRACATLAS_CSV = "dataset.csv"
#: The ``../shared`` subset's box file (``image_id,x,y,width,height``).
FRACATLAS_BOXES = "boxes.csv"
#: Where the original's annotation folders are (COCO is read first, then YOLO, then VOC).
COCO_JSON = Path("Annotations") / "COCO JSON" / "COCO_fracture_masks.json"
YOLO_DIR = Path("Annotations") / "YOLO"
VOC_DIR = Path("Annotations") / "PASCAL VOC"
#: FracAtlas's own folder per label.
FRACATLAS_FOLDERS = {1: "Fractured", 0: "Non_fractured"}
#: The one defect type of a real data set's boxes.
FRACTURE = "fracture"
BOX_COLUMNS: tuple[str, ...] = ("x", "y", "width", "height")
#: ``split_source`` of indexes that have no split of their own.
NO_SOURCE_SPLIT = "all"


@dataclass(frozen=True)
class ReadDataset:
    """What a reader found: the index rows (before the shared finishing step), the boxes,
    and the skipped rows by reason (``IndexReport`` keys) with their paths."""

    rows: pd.DataFrame
    boxes: pd.DataFrame
    skipped: dict[str, list[str]]
    parts_found: set[str]


def is_fracatlas(root: Path) -> bool:
    """A folder with FracAtlas's ``dataset.csv`` (its ``image_id`` and ``fractured``)."""
    path = root / FRACATLAS_CSV
    if not path.is_file():
        return False
    with path.open(encoding="utf-8", errors="replace") as handle:
        header = handle.readline().strip().split(",")
    return "image_id" in header and "fractured" in header


def _read_csv(path: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc


def _need_columns(path: Path, frame: pd.DataFrame, columns: tuple[str, ...]) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(f"{path} has no column(s) {', '.join(missing)}")


def _row_error(path: Path, row: int, message: str) -> DataError:
    """An error naming the CSV and its 1-based line (the header is line 1)."""
    return DataError(f"{path}, line {row + 2}: {message}")


def _labels(path: Path, values: pd.Series) -> pd.Series:
    bad = ~values.str.strip().isin(["0", "1", "0.0", "1.0"])
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise _row_error(path, row, f"label {values.iloc[row]!r} is not 0 or 1 ({bad.sum()} rows)")
    return values.str.strip().astype(float).astype("int64")


def _parts(path: Path, values: pd.Series) -> pd.Series:
    out = []
    for row, value in enumerate(values):
        try:
            out.append(normalize_body_part(value))
        except ConfigError as exc:
            raise _row_error(path, row, str(exc)) from exc
    return pd.Series(out, index=values.index, dtype=object)


def _fracatlas_part(row: dict[Any, Any]) -> str | None:
    """The one body part of a FracAtlas row, or None when it shows several (or none)."""
    given = row.get("body_part", "").strip().lower()
    if given:
        return None if given == "mixed" else given
    if row.get("mixed", "0").strip() == "1":
        return None
    flagged = [p for p in FRACATLAS_PART_FLAGS if row.get(p, "0").strip() == "1"]
    return flagged[0] if len(flagged) == 1 else None


def _image_size(path: Path) -> tuple[int, int] | None:
    """Width and height from the header (no decode); None when it cannot be read."""
    try:
        with Image.open(path) as image:
            return image.size
    except (OSError, ValueError, Image.DecompressionBombError):
        return None


def read_fracatlas(root: Path) -> ReadDataset:
    """FracAtlas as distributed or as the ``../shared`` subset; see the module docstring."""
    csv = root / FRACATLAS_CSV
    table = _read_csv(csv)
    _need_columns(csv, table, ("image_id", "fractured"))
    duplicated = table["image_id"].duplicated(keep=False)
    if duplicated.any():
        row = int(np.flatnonzero(duplicated.to_numpy())[1])
        raise _row_error(csv, row, f"image_id {table['image_id'].iloc[row]!r} appears twice")
    labels = _labels(csv, table["fractured"])
    skipped: dict[str, list[str]] = {"several_parts": [], "missing_on_disk": []}
    rows, found = [], set()
    for i, record in enumerate(table.to_dict("records")):
        image_id, label = str(record["image_id"]).strip(), int(labels.iloc[i])
        flat = Path("images") / image_id
        rel = (
            flat
            if (root / flat).is_file()
            else Path("images") / FRACATLAS_FOLDERS[label] / image_id
        )
        part = _fracatlas_part(record)
        if part is None:
            skipped["several_parts"].append(rel.as_posix())
            continue
        try:
            body_part = normalize_body_part(part)
        except ConfigError as exc:
            raise _row_error(csv, i, str(exc)) from exc
        found.add(body_part)
        if not (root / rel).is_file():
            skipped["missing_on_disk"].append(rel.as_posix())
            continue
        stem = Path(image_id).stem
        rows.append((rel.as_posix(), body_part, stem, label))
    index = pd.DataFrame(rows, columns=["rel_path", "body_part", "patient_id", "label"])
    index["study_id"] = index["patient_id"]
    boxes, outside = _fracatlas_boxes(root, index)
    skipped["box_outside"] = outside
    skipped["no_patient_ids"] = list(index["rel_path"])
    return ReadDataset(_with_source(index), boxes, skipped, found)


def _with_source(index: pd.DataFrame) -> pd.DataFrame:
    index["split_source"] = NO_SOURCE_SPLIT
    index["study_label"] = index["label"]
    return index


def _fracatlas_boxes(root: Path, index: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Boxes as ``rel_path, defect, x0, y0, x1, y1`` from whichever annotation is there."""
    by_name = {Path(rel).name: rel for rel in index["rel_path"]}
    if (root / FRACATLAS_BOXES).is_file():
        table = _read_csv(root / FRACATLAS_BOXES)
        _need_columns(root / FRACATLAS_BOXES, table, ("image_id", *BOX_COLUMNS))
        raw = [
            (r["image_id"], *(float(r[c]) for c in BOX_COLUMNS)) for r in table.to_dict("records")
        ]
    elif (root / COCO_JSON).is_file():
        raw = _coco_boxes(root / COCO_JSON)
    elif (root / YOLO_DIR).is_dir():
        raw = _yolo_boxes(root / YOLO_DIR, root, by_name)
    elif (root / VOC_DIR).is_dir():
        raw = _voc_boxes(root / VOC_DIR)
    else:
        raw = []
    # FracAtlas's annotations name images by file name alone
    return _checked_boxes(root, raw, lambda name: by_name.get(Path(name).name))


def _coco_boxes(path: Path) -> list[tuple[str, float, float, float, float]]:
    try:
        coco = json.loads(path.read_text())
        names = {image["id"]: image["file_name"] for image in coco["images"]}
        return [(names[a["image_id"]], *map(float, a["bbox"])) for a in coco["annotations"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"cannot read the COCO boxes {path}: {exc}") from exc


def _yolo_boxes(
    folder: Path, root: Path, by_name: dict[str, str]
) -> list[tuple[str, float, float, float, float]]:
    """YOLO's normalised ``class cx cy w h`` lines, scaled by each image's size."""
    out = []
    for name, rel in by_name.items():
        label = folder / (Path(name).stem + ".txt")
        size = _image_size(root / rel) if label.is_file() else None
        if size is None:
            continue
        width, height = size
        for line in label.read_text().splitlines():
            fields = line.split()
            if len(fields) != 5:
                continue
            cx, cy, w, h = (float(v) for v in fields[1:])
            out.append((name, (cx - w / 2) * width, (cy - h / 2) * height, w * width, h * height))
    return out


def _voc_boxes(folder: Path) -> list[tuple[str, float, float, float, float]]:
    out = []
    for xml in sorted(folder.glob("*.xml")):
        try:
            tree = ElementTree.parse(xml)
        except (OSError, ElementTree.ParseError) as exc:
            raise DataError(f"cannot read the PASCAL VOC boxes {xml}: {exc}") from exc
        name = tree.findtext("filename") or xml.stem + ".jpg"
        for box in tree.iter("bndbox"):
            x0, y0, x1, y1 = (float(box.findtext(k) or 0) for k in ("xmin", "ymin", "xmax", "ymax"))
            out.append((name, x0, y0, x1 - x0, y1 - y0))
    return out


def _checked_boxes(
    root: Path,
    raw: list[tuple[str, float, float, float, float]],
    indexed: Callable[[str], str | None],
) -> tuple[pd.DataFrame, list[str]]:
    """Boxes of indexed images, in corner form; those outside their image are left out
    (a box a little past the edge, from rounding, is clipped: up to 1% of the side)."""
    kept, outside = [], []
    for name, x, y, w, h in raw:
        rel = indexed(str(name))
        if rel is None:  # a box of an image that is not indexed (missing, several parts)
            continue
        size = _image_size(root / rel)
        if size is None:
            continue
        width, height = size
        slack = 0.01 * max(width, height)
        if (
            w <= 0
            or h <= 0
            or x < -slack
            or y < -slack
            or x + w > width + slack
            or y + h > height + slack
        ):
            outside.append(rel)
            continue
        kept.append(
            (rel, FRACTURE, max(0.0, x), max(0.0, y), min(width, x + w), min(height, y + h))
        )
    boxes = pd.DataFrame(kept, columns=["rel_path", "defect", "x0", "y0", "x1", "y1"])
    return boxes, outside


def read_labels_csv(path: Path) -> ReadDataset:
    """A labels CSV (``path,body_part,label[,patient_id,study_id][,x,y,width,height]``)."""
    table = _read_csv(path)
    _need_columns(path, table, ("path", "body_part", "label"))
    table["label"] = _labels(path, table["label"])
    table["body_part"] = _parts(path, table["body_part"])
    has_patient = "patient_id" in table.columns
    for column in ("patient_id", "study_id"):
        if column not in table.columns:
            table[column] = ""
    blank = table["patient_id"].str.strip() == ""
    table.loc[blank, "patient_id"] = table.loc[blank, "path"].map(lambda p: Path(p).stem)
    blank = table["study_id"].str.strip() == ""
    table.loc[blank, "study_id"] = table.loc[blank, "patient_id"]
    keys = ["path", "body_part", "label", "patient_id", "study_id"]
    conflicting = table.groupby("path")[keys[1:]].nunique().gt(1).any(axis=1)
    if conflicting.any():
        name = conflicting.index[conflicting][0]
        row = int(np.flatnonzero((table["path"] == name).to_numpy())[1])
        raise _row_error(path, row, f"{name!r} appears again with another part, label or id")
    study_parts = table.groupby("study_id")[["body_part", "label"]].nunique().gt(1).any(axis=1)
    if study_parts.any():
        study = study_parts.index[study_parts][0]
        row = int(np.flatnonzero((table["study_id"] == study).to_numpy())[-1])
        raise _row_error(path, row, f"study {study!r} mixes body parts or labels")
    folder = path.parent
    images = table.drop_duplicates("path")
    exists = images["path"].map(lambda p: (folder / p).is_file())
    index = images.loc[exists, keys].rename(columns={"path": "rel_path"}).reset_index(drop=True)
    skipped = {"missing_on_disk": list(images.loc[~exists, "path"])}
    if not has_patient:
        skipped["no_patient_ids"] = list(index["rel_path"])
    raw = []
    if all(c in table.columns for c in BOX_COLUMNS):
        with_box = table[(table[list(BOX_COLUMNS)] != "").all(axis=1)]
        raw = [
            (r["path"], *(float(r[c]) for c in BOX_COLUMNS)) for r in with_box.to_dict("records")
        ]
    paths = set(index["rel_path"])
    boxes, outside = _checked_boxes(folder, raw, lambda name: name if name in paths else None)
    skipped["box_outside"] = outside
    return ReadDataset(_with_source(index), boxes, skipped, set(table["body_part"]))
