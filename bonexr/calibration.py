"""Calibrated probabilities: the map from a model's raw P(abnormal) to one that means what
it says, and the operating points chosen on it.

A classifier trained on a few hundred images is rarely calibrated: its "0.3" may be
abnormal half the time. Platt scaling (a logistic regression on the raw logit, two
parameters) is fitted per body part and per level on the validation split at export
(:mod:`training.calibrate`) and applied here, by the service, ``bonexr predict`` and the
evaluation alike. Two parameters, because validation holds tens of studies per part: an
isotonic map would fit their noise. The slope is kept positive, so the map is strictly
increasing: it changes what a probability *says*, never which of two images ranks higher,
so AUROC, and every decision at a threshold mapped through it, are unchanged.

The study level has its own map: the mean of calibrated views is not itself calibrated
(views of one study are not independent), so the study map takes the mean of the views'
*raw* probabilities (MURA's rule, :mod:`bonexr.study`) to the study's calibrated one.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, Field

#: Raw probabilities are clipped to [EPSILON, 1 - EPSILON] before the logit.
EPSILON = 1e-6

Level = Literal["image", "study"]
LEVELS: tuple[Level, ...] = ("image", "study")


def logit(p: float) -> float:
    q = min(max(float(p), EPSILON), 1.0 - EPSILON)
    return math.log(q / (1.0 - q))


def sigmoid(z: float) -> float:
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


class Calibration(BaseModel):
    """Platt scaling: ``P = sigmoid(slope * logit(raw) + intercept)``, fitted on validation."""

    method: Literal["platt"] = "platt"
    slope: float = Field(gt=0.0, description="Positive: the map keeps every ranking.")
    intercept: float
    fitted_on: str = Field("validation", description="The split the map was fitted on.")
    n: int = Field(ge=1, description="Images (image level) or studies (study level) fitted.")

    def apply(self, raw: float) -> float:
        """The calibrated probability of a raw model output."""
        return sigmoid(self.slope * logit(raw) + self.intercept)

    def raw_for(self, calibrated: float) -> float:
        """The raw output that maps to ``calibrated`` (the inverse map)."""
        return sigmoid((logit(calibrated) - self.intercept) / self.slope)


def calibrate(raw: float, calibration: Calibration | None) -> float:
    """``raw`` through ``calibration``; unchanged when the bundle has none (older bundles)."""
    return float(raw) if calibration is None else calibration.apply(raw)
