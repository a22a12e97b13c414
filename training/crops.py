"""The fracture boxes as extra supervision: zoomed training crops around each box.

A hand radiograph shrunk from 1024 px to the model's 256 shows a hairline fracture as a
pixel or two; nothing tells a small model trained from scratch where to look. With boxes
(FracAtlas, the synthetic set, a labels CSV with box columns) each abnormal training image
also contributes ``per_image`` crops that contain one of its boxes, at a zoom where the
fracture is several times larger, labelled abnormal; normal training images contribute as
many crops of the same sizes at random places, labelled normal, so "being a crop" says
nothing about the label. Crops come from the training split only (validation and test
are untouched) and keep their source's patient, so they never cross the split.

The crops are written once per run (``<run>/<model>/crops/``, PNG) and added as rows; the
input pipeline reads them like any image.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from bonexr.errors import ImageError
from bonexr.imaging import decode_image, to_grayscale

#: A crop's side: this many times the box's longer side, at least this share of the
#: image's shorter side (so the context of the bone is kept).
BOX_CONTEXT = 3.0
MIN_SHARE = 0.35


def _open(path: str) -> Image.Image | None:
    try:
        return to_grayscale(decode_image(Path(path).read_bytes()))
    except (ImageError, OSError):
        return None


def _save(image: Image.Image, folder: Path, name: str) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / name
    if not target.is_file():
        image.save(target)
    return str(target)


def box_crops(
    train: pd.DataFrame, boxes: pd.DataFrame | None, per_image: int, folder: Path, seed: int
) -> pd.DataFrame:
    """Extra training rows (crops), abnormal ones around boxes and as many normal ones."""
    if boxes is None or per_image <= 0 or train.empty:
        return train.iloc[:0]
    rng = np.random.default_rng(seed)
    located = boxes[boxes["rel_path"].isin(train.loc[train["label"] == 1, "rel_path"])]
    rows: list[dict] = []
    shares: list[float] = []
    for rel_path, own in located.groupby("rel_path", sort=True):
        source: dict = train[train["rel_path"] == rel_path].iloc[0].to_dict()
        image = _open(source["path"])
        if image is None:
            continue
        width, height = image.size
        for k in range(per_image):
            x0, y0, x1, y1 = own.iloc[rng.integers(len(own))][["x0", "y0", "x1", "y1"]]
            side = max(BOX_CONTEXT * max(x1 - x0, y1 - y0), MIN_SHARE * min(width, height))
            side = int(min(side, width, height))
            left = rng.uniform(max(0.0, x1 - side), max(0.0, min(x0, width - side)) + 1e-6)
            top = rng.uniform(max(0.0, y1 - side), max(0.0, min(y0, height - side)) + 1e-6)
            crop = image.crop((int(left), int(top), int(left) + side, int(top) + side))
            name = f"{Path(str(rel_path)).stem}_box{k}.png"
            rows.append({**source, "path": _save(crop, folder, name), "rel_path": f"crops/{name}"})
            shares.append(side / min(width, height))
    normal = train[train["label"] == 0]
    for k, share in enumerate(shares):
        if normal.empty:
            break
        source = normal.iloc[rng.integers(len(normal))].to_dict()
        image = _open(source["path"])
        if image is None:
            continue
        width, height = image.size
        side = int(share * min(width, height))
        left, top = rng.integers(0, width - side + 1), rng.integers(0, height - side + 1)
        crop = image.crop((int(left), int(top), int(left) + side, int(top) + side))
        name = f"{Path(source['rel_path']).stem}_normal{k}.png"
        rows.append({**source, "path": _save(crop, folder, name), "rel_path": f"crops/{name}"})
    return pd.DataFrame(rows, columns=train.columns)
