"""Atomic file writes for training outputs (CSV tables, text reports)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from bonexr.atomic import write_text_atomic

__all__ = ["write_csv_atomic", "write_text_atomic"]


def write_csv_atomic(frame: pd.DataFrame, path: str | Path) -> None:
    """Write a DataFrame as CSV (no index column) atomically."""
    write_text_atomic(path, frame.to_csv(index=False))
