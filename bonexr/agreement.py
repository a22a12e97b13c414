"""Decisions against a reference, as one 2x2 table: sensitivity, specificity, accuracy,
agreement and Cohen's kappa.

Why one module: the training evaluation (model against label, with bootstrap intervals)
and the service's practice metrics (model against the reader, from the worklist) report the
same rates, and they must be computed the same way, degenerate cases included.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike


@dataclass(frozen=True)
class Table:
    """Counts of a yes/no decision against a yes/no reference ("abnormal" is yes)."""

    tp: int = 0
    fn: int = 0
    fp: int = 0
    tn: int = 0

    @classmethod
    def of(cls, reference: ArrayLike, decided: ArrayLike) -> Table:
        y, d = np.asarray(reference).astype(bool), np.asarray(decided).astype(bool)
        return cls(
            tp=int(np.sum(y & d)),
            fn=int(np.sum(y & ~d)),
            fp=int(np.sum(~y & d)),
            tn=int(np.sum(~y & ~d)),
        )

    @property
    def n(self) -> int:
        return self.tp + self.fn + self.fp + self.tn

    @property
    def sensitivity(self) -> float | None:
        """Of the reference's yes, the share decided yes (None without any)."""
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else None

    @property
    def specificity(self) -> float | None:
        """Of the reference's no, the share decided no (None without any)."""
        return self.tn / (self.tn + self.fp) if self.tn + self.fp else None

    @property
    def agreement(self) -> float | None:
        """The share decided as the reference says (accuracy; None when empty)."""
        return (self.tp + self.tn) / self.n if self.n else None

    @property
    def kappa(self) -> float | None:
        """Cohen's kappa; with one class on both sides, 1 when they agree, else 0."""
        n = self.n
        if n == 0:
            return None
        agree = (self.tp + self.tn) / n
        yes = (self.tp + self.fp) * (self.tp + self.fn)
        no = (self.fn + self.tn) * (self.fp + self.tn)
        chance = (yes + no) / (n * n)
        return (agree - chance) / (1 - chance) if chance < 1 else float(agree == 1.0)
