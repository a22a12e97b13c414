"""Where the real radiographs are (FracAtlas, CC BY 4.0: Abedeen et al., Scientific Data
10, 521, 2023), and a small copy of them for tests that train.

The project's ``../shared/datasets/fracatlas`` (``BONEXR_FRACATLAS`` names another copy).
Tests that need it skip with the reason where it is absent; CI has it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]


def fracatlas_root() -> Path:
    """The FracAtlas folder, or a pytest skip naming where it was looked for."""
    given = os.environ.get("BONEXR_FRACATLAS")
    path = Path(given) if given else ROOT.parent / "shared" / "datasets" / "fracatlas"
    if not (path / "dataset.csv").is_file():
        pytest.skip(f"FracAtlas not found at {path} (set BONEXR_FRACATLAS to a copy)")
    return path


def small_fracatlas(
    destination: Path,
    per_part_label: int = 8,
    parts: tuple[str, ...] = ("hand", "leg", "shoulder"),
) -> Path:
    """A FracAtlas-shaped folder of ``per_part_label`` images per (part, fractured): the
    first readable ones in FracAtlas's order, linked, not copied, with their rows of
    ``dataset.csv`` and ``boxes.csv``."""
    source = fracatlas_root()
    table = pd.read_csv(source / "dataset.csv")
    groups = [(table["body_part"] == p) & (table["fractured"] == y) for p in parts for y in (0, 1)]
    picked = pd.concat([_readable(table[g], source, per_part_label) for g in groups])
    (destination / "images").mkdir(parents=True)
    for image_id in picked["image_id"]:
        os.symlink(source / "images" / image_id, destination / "images" / image_id)
    picked.to_csv(destination / "dataset.csv", index=False)
    boxes = pd.read_csv(source / "boxes.csv")
    boxes[boxes["image_id"].isin(picked["image_id"])].to_csv(destination / "boxes.csv", index=False)
    return destination


def _readable(rows: pd.DataFrame, source: Path, count: int) -> pd.DataFrame:
    """The first ``count`` rows whose images decode whole (FracAtlas has truncated ones)."""
    keep = []
    for index, image_id in rows["image_id"].items():
        if _decodes(source / "images" / image_id):
            keep.append(index)
        if len(keep) == count:
            break
    return rows.loc[keep]


def _decodes(path: Path) -> bool:
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.load()
        return True
    except OSError:
        return False
