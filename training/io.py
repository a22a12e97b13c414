"""Training outputs: atomic file writes (CSV tables, text reports) and the run's narrative.

The narrative (``== training router ...``, the split summary, the final report) goes to the
``bonexr.run`` logger, not ``print``: a caller that embeds training (a notebook, a test)
chooses where it goes, and the CLI shows it plainly on standard output
(:func:`show_run_messages`).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pandas as pd

from bonexr.atomic import write_text_atomic

__all__ = ["say", "show_run_messages", "write_csv_atomic", "write_text_atomic"]

RUN_LOG = logging.getLogger("bonexr.run")


def say(message: str) -> None:
    """One message of a training run's narrative."""
    RUN_LOG.info(message)


def show_run_messages() -> None:
    """Send the run narrative to standard output, unprefixed (once per process)."""
    if any(getattr(h, "_bonexr_run", False) for h in RUN_LOG.handlers):
        return
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler._bonexr_run = True  # type: ignore[attr-defined]
    RUN_LOG.addHandler(handler)
    RUN_LOG.setLevel(logging.INFO)
    RUN_LOG.propagate = False


def write_csv_atomic(frame: pd.DataFrame, path: str | Path) -> None:
    """Write a DataFrame as CSV (no index column) atomically."""
    write_text_atomic(path, frame.to_csv(index=False))
