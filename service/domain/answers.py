"""What triage answers, as plain values: a view's prediction, an image's and a study's
answer, and a refusal.

Why values: a refused view is part of the study's answer (``StudyAnswer.refused``), not an
exception thrown through it, so a study with refused views is scored once and each door
(HTTP, ``bonexr predict``, the DICOM node, the worklist) says the same thing its own way.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from bonexr.labels import result_name
from bonexr.manifest import OperatingPoint


@dataclass(frozen=True)
class Prediction:
    """One image's two-stage result (model identity is the engine's ``model_name/version``).

    ``scored_by`` is the part whose model gave ``abnormality_probability``: the routed part,
    unless the caller named one (a study scores every view with the study's part).
    ``abnormality_probability`` is calibrated (image level) where the bundle has a
    calibration; ``raw_probability`` is the model's own output (what the study rule
    averages). ``threshold`` is that part's image threshold at ``operating_point``.
    ``content_score`` is the router's out-of-distribution score (None: no content gate).
    """

    bone_type: str
    bone_type_probabilities: dict[str, float]
    abnormality_probability: float
    threshold: float
    abnormal: bool
    scored_by: str = ""  # "" when the bundle has no model for bone_type: no verdict
    raw_probability: float = 0.0
    operating_point: str = ""
    content_score: float | None = None
    #: the scoring model's raw class activation map (feature grid), when it has one
    cam: np.ndarray | None = field(default=None, compare=False, repr=False)

    @property
    def has_verdict(self) -> bool:
        return bool(self.scored_by)

    @property
    def result(self) -> str:
        return result_name(self.abnormal)

    @property
    def router_confidence(self) -> float:
        return self.bone_type_probabilities[self.bone_type]


@dataclass(frozen=True)
class Refusal:
    """A view the model must not judge, and why: ``reason`` is the eligibility code
    (``modality``, ``body_part``, ``content``), ``detail`` the sentence a reader sees,
    ``score``/``limit`` the content gate's numbers where it decided, ``value`` the header's."""

    view: str
    reason: str
    detail: str
    score: float | None = None
    limit: float | None = None
    #: the header value that decided a metadata refusal (e.g. the Modality "CT")
    value: str | None = None

    @property
    def code(self) -> str:
        """The refusal code every door reports (``not_eligible:content`` ...)."""
        return f"not_eligible:{self.reason}"


@dataclass(frozen=True)
class ImageAnswer:
    """``/predict``'s answer for one view (a row of ``images.csv``)."""

    name: str
    prediction: Prediction
    warnings: list[str]
    heatmap_url: str | None = None
    #: the image threshold applied, with its rule and what it achieved on validation
    point: OperatingPoint | None = None


@dataclass(frozen=True)
class StudyAnswer:
    """``/predict/study``'s answer (a row of ``studies.csv``, the DICOM node's report)."""

    bone_type: str
    bone_type_source: str  # "router" or "client"
    bone_type_probabilities: dict[str, float]
    abnormality_probability: float
    threshold: float
    result: str
    views: list[tuple[str, Prediction]]
    warnings: list[str] = field(default_factory=list)
    operating_point: str = ""
    #: the study threshold applied, with its rule and what it achieved on validation
    point: OperatingPoint | None = None
    #: views set aside as not eligible (never in ``views``, never in the mean)
    refused: tuple[Refusal, ...] = ()
