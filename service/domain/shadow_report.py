"""The comparison of a candidate bundle's shadow answers with the live ones: how often the
two agree, how each ranks against the readers where they reviewed, and what the shadow
costs. Plain functions over the rows :class:`~service.adapters.records.shadow.ShadowStore`
gives; ``bonexr shadow-report`` and ``GET /shadow`` print them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from bonexr.agreement import Table

#: Reader-reviewed studies (of each class) needed before an AUROC is given.
MIN_REVIEWS = 20


def auroc(labels: Sequence[int], scores: Sequence[float]) -> float:
    """Area under the ROC curve: the chance a random positive outranks a random negative
    (ties count half); what scikit-learn's ``roc_auc_score`` gives (tested against it),
    without making the service depend on it."""
    y, s = np.asarray(labels, bool), np.asarray(scores, float)
    positive, negative = s[y], s[~y]
    if not len(positive) or not len(negative):
        raise ValueError("an AUROC needs both classes")
    wins = (positive[:, None] > negative[None, :]).sum()
    ties = (positive[:, None] == negative[None, :]).sum()
    return float((wins + 0.5 * ties) / (len(positive) * len(negative)))


def _against_readers(rows: list[dict[str, Any]], key: str) -> dict[str, Any]:
    reviewed = [r for r in rows if r["reader_result"] and r[key] is not None]
    labels = [r["reader_result"] == "abnormal" for r in reviewed]
    positives, negatives = sum(labels), len(labels) - sum(labels)
    if min(positives, negatives) < MIN_REVIEWS:
        return {
            "auroc": None,
            "status": f"not enough reviews ({positives} abnormal and {negatives} normal of "
            f"{MIN_REVIEWS} each needed)",
        }
    return {"auroc": auroc(labels, [r[key] for r in reviewed]), "status": "ready"}


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Agreement (and Cohen's kappa) of shadow and live results, each one's AUROC against
    the readers, the shadow's refusals and its time per study against the live one's."""
    both = [r for r in rows if r["live_result"] and r["shadow_result"]]
    table = Table.of(
        [r["live_result"] == "abnormal" for r in both],
        [r["shadow_result"] == "abnormal" for r in both],
    )
    shadow_ms = [r["shadow_ms"] for r in rows]
    live_ms = [r["live_ms"] for r in rows if r["live_ms"]]
    return {
        "studies": len(rows),
        "bundles": sorted({r["shadow_bundle"] for r in rows}),
        "compared": len(both),
        "agreement": table.agreement,
        "kappa": table.kappa,
        "shadow_refused": sum(r["shadow_result"] is None for r in rows),
        "live": _against_readers(rows, "live_probability"),
        "shadow": _against_readers(rows, "shadow_probability"),
        "shadow_ms_mean": float(np.mean(shadow_ms)) if shadow_ms else None,
        "live_ms_mean": float(np.mean(live_ms)) if live_ms else None,
        "time_ratio": float(np.mean(shadow_ms) / np.mean(live_ms))
        if shadow_ms and live_ms
        else None,
    }


def describe(summary: dict[str, Any]) -> str:
    """The summary as a few lines for a terminal."""

    def rate(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.3f}"

    def against(side: dict[str, Any]) -> str:
        return rate(side["auroc"]) if side["auroc"] is not None else side["status"]

    return "\n".join(
        [
            f"shadow bundle(s): {', '.join(summary['bundles']) or 'none yet'}",
            f"studies scored in shadow: {summary['studies']} ({summary['shadow_refused']} "
            f"refused by the shadow); compared with live: {summary['compared']}",
            f"agreement with the live results: {rate(summary['agreement'])} "
            f"(kappa {rate(summary['kappa'])})",
            f"AUROC against the readers: live {against(summary['live'])}; "
            f"shadow {against(summary['shadow'])}",
            f"time per study: shadow {rate(summary['shadow_ms_mean'])} ms, live "
            f"{rate(summary['live_ms_mean'])} ms (ratio {rate(summary['time_ratio'])})",
        ]
    )
