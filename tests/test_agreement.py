"""One 2x2 table for the evaluation and the service's practice metrics, checked against
scikit-learn's reference implementations."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score, confusion_matrix, recall_score

from bonexr.agreement import Table


@pytest.mark.parametrize("seed", range(20))
def test_the_table_matches_scikit_learn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    reference = rng.integers(0, 2, 60)
    decided = np.where(rng.random(60) < 0.7, reference, 1 - reference)
    table = Table.of(reference, decided)
    tn, fp, fn, tp = confusion_matrix(reference, decided, labels=[0, 1]).ravel()
    assert (table.tn, table.fp, table.fn, table.tp) == (tn, fp, fn, tp)
    assert table.kappa == pytest.approx(cohen_kappa_score(reference, decided), abs=1e-12)
    assert table.sensitivity == pytest.approx(recall_score(reference, decided))
    assert table.specificity == pytest.approx(recall_score(1 - reference, 1 - decided))
    assert table.agreement == pytest.approx(float(np.mean(reference == decided)))


def test_degenerate_tables_follow_the_evaluation_rules() -> None:
    assert Table().kappa is None and Table().sensitivity is None
    assert Table.of([1, 1, 1], [1, 1, 1]).kappa == 1.0  # one class, agreeing
    assert Table.of([0, 0, 0], [1, 1, 1]).kappa == 0.0
    only_normal = Table.of([0, 0, 0, 0], [0, 1, 0, 0])
    assert only_normal.sensitivity is None and only_normal.specificity == 0.75
