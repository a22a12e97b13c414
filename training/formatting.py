"""How reports show figures and save plots, shared by :mod:`training.report` and the report
sections other modules render (:mod:`training.localisation`, cross-validation, model card).

Its own module so those modules depend on it instead of on each other.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def format_metric(value: Any) -> str:
    """How every table shows a figure: 3 decimals for a float, ``n/a`` when missing."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "n/a"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def save_figure(fig: Any, path: Path) -> None:
    """Write a matplotlib figure as a PNG (folders created) and free it."""
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
