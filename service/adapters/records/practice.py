"""How the model does in practice, against its readers: Prometheus metrics from the records.

Computed at scrape time from the reviewed studies (the first reader's verdict of each;
studies without a finding are left out), per body part: the agreement between model and
reader, and the reader-confirmed sensitivity (of the studies the reader called abnormal,
the share the model flagged) and specificity. A scrape that cannot reach the database
reports nothing for these rather than failing ``/metrics``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from bonexr.agreement import Table

log = logging.getLogger("bonexr.records")

Counts = dict[str, dict[tuple[str, str], int]]


def practice_table(cells: dict[tuple[str, str], int]) -> Table:
    """(model, reader) counts as a 2x2 table, the reader as the reference."""
    return Table(
        tp=cells.get(("abnormal", "abnormal"), 0),
        fn=cells.get(("normal", "abnormal"), 0),
        fp=cells.get(("abnormal", "normal"), 0),
        tn=cells.get(("normal", "normal"), 0),
    )


class PracticeCollector(Collector):
    """Model-vs-reader gauges per body part (see the module docstring)."""

    def __init__(self, counts: Callable[[], Counts]) -> None:
        self._counts = counts

    def describe(self) -> list[GaugeMetricFamily]:
        return list(self._families({}))

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            counts = self._counts()
        except Exception as exc:  # the database is down: /metrics must still answer
            log.warning("practice metrics unavailable (%s)", type(exc).__name__)
            return iter(())
        return iter(self._families(counts))

    @staticmethod
    def _families(counts: Counts) -> list[GaugeMetricFamily]:
        reviewed = GaugeMetricFamily(
            "bonexr_practice_reviewed_studies",
            "Studies with a model finding and a reader's verdict.",
            labels=["part"],
        )
        agreement = GaugeMetricFamily(
            "bonexr_practice_agreement",
            "Share of reviewed studies where the model's result equals the first reader's.",
            labels=["part"],
        )
        sensitivity = GaugeMetricFamily(
            "bonexr_practice_sensitivity",
            "Of the studies the reader called abnormal, the share the model called abnormal.",
            labels=["part"],
        )
        specificity = GaugeMetricFamily(
            "bonexr_practice_specificity",
            "Of the studies the reader called normal, the share the model called normal.",
            labels=["part"],
        )
        for part, cells in sorted(counts.items()):
            table = practice_table(cells)
            reviewed.add_metric([part], table.n)
            for family, rate in (
                (agreement, table.agreement),
                (sensitivity, table.sensitivity),
                (specificity, table.specificity),
            ):
                if rate is not None:
                    family.add_metric([part], rate)
        return [reviewed, agreement, sensitivity, specificity]
