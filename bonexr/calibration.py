"""Calibrated probabilities: the map from a model's raw P(abnormal) to one that means what
it says, applied the same way by the service, ``bonexr predict`` and the evaluation.

A classifier trained on a few hundred images is rarely calibrated: its "0.3" may be
abnormal half the time. The map is fitted per body part and per level at export
(:mod:`training.calibrate`), chosen by cross-fitted measurement among

* ``temperature``: ``sigmoid(logit(raw) / T)``, one parameter (Guo et al. 2017);
* ``platt``: ``sigmoid(a logit(raw) + b)``, two parameters, L2-regularised;
* ``isotonic``: a monotone step map through the validation points (only above a minimum
  count: with tens of studies it fits their noise), made strictly increasing by a
  1e-3 share of the identity so that no two raw scores tie after it;
* ``none``: too few validation cases to fit any map; the raw P is served and every
  answer says it is uncalibrated.

Every map is strictly increasing: it changes what a probability *says*, never which of
two images ranks higher, so AUROC, and every decision at a threshold mapped through it,
are unchanged (a raw threshold and its mapped value make the same decisions).

The study level has its own map: the mean of calibrated views is not itself calibrated
(views of one study are not independent), so the study map takes the mean of the views'
*raw* probabilities (MURA's rule, :mod:`bonexr.study`) to the study's calibrated one.
"""

from __future__ import annotations

import bisect
import math
from typing import Literal

from pydantic import BaseModel, Field, model_validator

#: Raw probabilities are clipped to [EPSILON, 1 - EPSILON] before the logit.
EPSILON = 1e-6
#: The identity's share in an isotonic map (keeps it strictly increasing).
ISOTONIC_IDENTITY_SHARE = 1e-3

Level = Literal["image", "study"]
LEVELS: tuple[Level, ...] = ("image", "study")
Method = Literal["platt", "temperature", "isotonic", "none"]


def logit(p: float) -> float:
    q = min(max(float(p), EPSILON), 1.0 - EPSILON)
    return math.log(q / (1.0 - q))


def sigmoid(z: float) -> float:
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


class Calibration(BaseModel):
    """One level's map from raw to calibrated P (see the module docstring)."""

    method: Method = "platt"
    slope: float = Field(1.0, gt=0.0, description="Positive: the map keeps every ranking.")
    intercept: float = 0.0
    #: Isotonic only: the step map's breakpoints on the raw P and its values there.
    points_raw: list[float] = Field(default_factory=list)
    points_calibrated: list[float] = Field(default_factory=list)
    fitted_on: str = Field("validation", description="The data the map was fitted on.")
    n: int = Field(ge=1, description="Images (image level) or studies (study level) fitted.")
    #: How the map was chosen: each candidate's cross-fitted log-loss, or why none was.
    selection: dict[str, float | int | str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self) -> Calibration:
        if self.method == "isotonic":
            if len(self.points_raw) < 2 or len(self.points_raw) != len(self.points_calibrated):
                raise ValueError("an isotonic map needs two or more matching breakpoints")
            if any(b < a for a, b in zip(self.points_raw, self.points_raw[1:], strict=False)):
                raise ValueError("isotonic breakpoints must be sorted")
        return self

    @property
    def calibrated(self) -> bool:
        """Whether answers through this map may call their P calibrated."""
        return self.method != "none"

    def apply(self, raw: float) -> float:
        """The calibrated probability of a raw model output."""
        if self.method == "none":
            return float(raw)
        if self.method == "isotonic":
            step = _interpolate(self.points_raw, self.points_calibrated, float(raw))
            share = ISOTONIC_IDENTITY_SHARE
            return (1.0 - share) * step + share * min(max(float(raw), 0.0), 1.0)
        return sigmoid(self.slope * logit(raw) + self.intercept)

    def raw_for(self, calibrated: float) -> float:
        """The raw output that maps to ``calibrated`` (the inverse map, by bisection where
        it has no closed form)."""
        if self.method == "none":
            return float(calibrated)
        if self.method == "isotonic":
            low, high = 0.0, 1.0
            for _ in range(60):
                middle = (low + high) / 2
                low, high = (middle, high) if self.apply(middle) < calibrated else (low, middle)
            return (low + high) / 2
        return sigmoid((logit(calibrated) - self.intercept) / self.slope)


def _interpolate(xs: list[float], ys: list[float], x: float) -> float:
    """Piecewise-linear through ``(xs, ys)``, constant beyond the ends (``np.interp``)."""
    if x <= xs[0]:
        return ys[0]
    if x >= xs[-1]:
        return ys[-1]
    i = bisect.bisect_right(xs, x)
    x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
    return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)


def calibrate(raw: float, calibration: Calibration | None) -> float:
    """``raw`` through ``calibration``; unchanged when the bundle has none (older bundles)."""
    return float(raw) if calibration is None else calibration.apply(raw)
