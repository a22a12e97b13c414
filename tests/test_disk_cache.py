"""The decoded-image cache on disk (for splits larger than --cache-memory-gb): written once,
reused without decoding again, rebuilt after an interruption, and still reporting the
images it skipped."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import training.pipeline as pipeline
from training.dataset import index_dataset
from training.pipeline import BadImageLog, disk_cache_prefix, make_dataset


def _frame(synthetic_small: Path, tmp_path: Path) -> pd.DataFrame:
    index, _ = index_dataset(synthetic_small)
    frame = index[index["body_part"] == "ELBOW"].head(24).reset_index(drop=True).copy()
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG not really")
    frame.loc[len(frame)] = {**frame.iloc[0].to_dict(), "path": str(broken), "rel_path": "x"}
    return frame


def _batches(frame: pd.DataFrame, cache_dir: Path, bad: BadImageLog) -> list[np.ndarray]:
    ds = make_dataset(
        frame,
        targets=frame["label"].to_numpy(),
        size=32,
        batch_size=8,
        training=False,
        bad_images=bad,
        disk_cache=cache_dir,
        memory_budget_gb=0.0,  # anything is over budget: always on disk
    )
    return [images.numpy() for images, _ in ds]


def test_the_cache_is_written_once_and_reused(
    synthetic_small: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    frame = _frame(synthetic_small, tmp_path)
    decoded: list[str] = []
    real = pipeline.preprocess_file

    def counting(path: str, size: int) -> np.ndarray:
        decoded.append(path)
        return real(path, size)

    monkeypatch.setattr(pipeline, "preprocess_file", counting)
    cache_dir = tmp_path / "cache"
    first_bad = BadImageLog()
    first = _batches(frame, cache_dir, first_bad)
    assert len(decoded) == len(frame)  # every image decoded once, in the cold pass
    assert list(first_bad.failures) == [frame["path"].iloc[-1]]
    prefix = disk_cache_prefix(
        cache_dir, frame["path"].astype(str).to_numpy(), (frame["label"].to_numpy(np.float32),), 32
    )
    assert prefix.with_name(prefix.name + ".index").is_file()

    decoded.clear()
    again_bad = BadImageLog()
    again = _batches(frame, cache_dir, again_bad)
    assert decoded == []  # a second run does not decode again ...
    assert again_bad.failures == first_bad.failures  # ... and still reports the skipped image
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
    assert sum(len(b) for b in again) == len(frame) - 1

    # other images (another model's split) get their own cache
    other = frame.iloc[:10]
    _batches(other, cache_dir, BadImageLog())
    assert len(decoded) == 10


def test_an_interrupted_cache_is_rebuilt(synthetic_small: Path, tmp_path: Path) -> None:
    frame = _frame(synthetic_small, tmp_path)
    cache_dir = tmp_path / "cache"
    paths = frame["path"].astype(str).to_numpy()
    prefix = disk_cache_prefix(cache_dir, paths, (frame["label"].to_numpy(np.float32),), 32)
    cache_dir.mkdir()
    for leftover in ("_0.lockfile", ".data-00000-of-00001"):  # what a crash leaves behind
        prefix.with_name(prefix.name + leftover).write_bytes(b"partial")
    batches = _batches(frame, cache_dir, BadImageLog())
    assert sum(len(b) for b in batches) == len(frame) - 1
    assert prefix.with_name(prefix.name + ".index").is_file()
