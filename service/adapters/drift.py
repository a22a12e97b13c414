"""Drift in what arrives: the population stability index (PSI) of the content-gate score
and of each part's calibrated probability, live window against a reference window.

A site's physicists are asked to watch whether the cases a model sees drift away from
those it was validated on (the ACR's Assess-AI registry asks it). The reference here is
the first ``reference_size`` answers after a bundle starts serving (a baseline the site
accepted when it went live), the current window the last ``window`` answers; PSI over
the reference's deciles,

    PSI = sum over bins (current share - reference share) * ln(current share / reference share)

is 0 for the same distribution; the conventional reading is < 0.1 stable, 0.1-0.25 a
moderate shift, > 0.25 a significant one (:data:`PSI_ALERT`, the alert rule's threshold).
Until both windows are full the statistic is not computed ("not enough answers (n of N)").

Why not the validation split as the reference: the bundles carry no sample of their
validation scores, only the gate's limit and the calibration maps. A bundle that carried
its validation quantiles would make a better reference; see docs/operations.md.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterator

import numpy as np
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

#: PSI above which the distribution has shifted significantly (the alert's threshold).
PSI_ALERT = 0.25
#: Empty bins get this share (a PSI term with a zero share is infinite).
_FLOOR = 1e-4


def psi(reference: np.ndarray, current: np.ndarray, bins: int = 10) -> float:
    """The population stability index of ``current`` against ``reference`` over the
    reference's quantile bins (ties merged)."""
    edges = np.unique(np.quantile(reference, np.linspace(0, 1, bins + 1)[1:-1]))
    expected = np.bincount(
        np.searchsorted(edges, reference, side="right"), minlength=len(edges) + 1
    )
    observed = np.bincount(np.searchsorted(edges, current, side="right"), minlength=len(edges) + 1)
    r = np.maximum(expected / expected.sum(), _FLOOR)
    c = np.maximum(observed / observed.sum(), _FLOOR)
    return float(np.sum((c - r) * np.log(c / r)))


class Signal:
    """One monitored value (a signal, a part): the reference fills first, then the window."""

    def __init__(self, reference_size: int, window: int) -> None:
        self.reference: list[float] = []
        self.reference_size = reference_size
        self.current: deque[float] = deque(maxlen=window)

    def add(self, value: float) -> None:
        if len(self.reference) < self.reference_size:
            self.reference.append(value)
        else:
            self.current.append(value)

    def statistic(self) -> float | None:
        """PSI, or None until both windows are full."""
        if len(self.reference) < self.reference_size or len(self.current) < (
            self.current.maxlen or 0
        ):
            return None
        return psi(np.asarray(self.reference), np.asarray(self.current))

    def status(self) -> str:
        need = self.reference_size + (self.current.maxlen or 0)
        have = len(self.reference) + len(self.current)
        return "ready" if have >= need else f"not enough answers ({have} of {need})"


class DriftMonitor(Collector):
    """Observes answers (thread-safe) and exports ``bonexr_drift_psi{signal, part}`` and
    ``bonexr_drift_answers{signal, part, window}`` to Prometheus."""

    def __init__(self, reference_size: int = 200, window: int = 200) -> None:
        self.reference_size, self.window = reference_size, window
        self._signals: dict[tuple[str, str], Signal] = {}
        self._lock = threading.Lock()

    def observe(self, signal: str, part: str, value: float | None) -> None:
        if value is None or not np.isfinite(value):
            return
        with self._lock:
            key = (signal, part)
            if key not in self._signals:
                self._signals[key] = Signal(self.reference_size, self.window)
            self._signals[key].add(float(value))

    def reset(self) -> None:
        """A new bundle serves: its answers are a new population (a new reference)."""
        with self._lock:
            self._signals.clear()

    def report(self) -> dict[str, dict[str, object]]:
        """``{"signal/part": {"psi": ..., "status": ...}}`` for a page or a log line."""
        with self._lock:
            return {
                f"{s}/{p}": {"psi": signal.statistic(), "status": signal.status()}
                for (s, p), signal in sorted(self._signals.items())
            }

    def describe(self) -> list[GaugeMetricFamily]:
        return list(self._families({}))

    def collect(self) -> Iterator[GaugeMetricFamily]:
        with self._lock:
            snapshot = {
                key: (signal.statistic(), len(signal.reference), len(signal.current))
                for key, signal in self._signals.items()
            }
        return iter(self._families(snapshot))

    @staticmethod
    def _families(
        snapshot: dict[tuple[str, str], tuple[float | None, int, int]],
    ) -> list[GaugeMetricFamily]:
        index = GaugeMetricFamily(
            "bonexr_drift_psi",
            "Population stability index of the live window against the reference window "
            f"(> {PSI_ALERT}: a significant shift; absent until both windows are full).",
            labels=["signal", "part"],
        )
        answers = GaugeMetricFamily(
            "bonexr_drift_answers",
            "Answers in each drift window.",
            labels=["signal", "part", "window"],
        )
        for (signal, part), (value, reference, current) in sorted(snapshot.items()):
            if value is not None:
                index.add_metric([signal, part], value)
            answers.add_metric([signal, part, "reference"], reference)
            answers.add_metric([signal, part, "current"], current)
        return [index, answers]
