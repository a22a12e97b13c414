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


def format_interval(value: Any, interval: Any) -> str:
    """A figure with its 95% interval, ``0.812 [0.70, 0.91]``; the figure alone without one."""
    if interval is None or value is None:
        return format_metric(value)
    low, high = interval
    return f"{format_metric(value)} [{low:.2f}, {high:.2f}]"


def format_with_ci(metrics: dict[str, Any], key: str) -> str:
    """``metrics[key]`` with ``metrics[key + "_ci"]`` when the report has it."""
    return format_interval(metrics.get(key), metrics.get(f"{key}_ci"))


def save_figure(fig: Any, path: Path) -> None:
    """Write a matplotlib figure as a PNG (folders created) and free it."""
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
