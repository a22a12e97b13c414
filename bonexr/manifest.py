"""The bundle manifest's schema: what ``manifest.json`` holds, as pydantic models.

Apart from :mod:`bonexr.bundle` (reading, verifying and publishing bundle folders) and
:mod:`bonexr.contract` (checking a manifest against this code and its models), because
both need these types and neither may import the other.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import PurePosixPath
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from bonexr.calibration import LEVELS, Calibration, Level
from bonexr.errors import BundleError
from bonexr.imaging import PREPROCESSING_ID
from bonexr.labels import ROUTER, model_key

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"

INTENDED_USE = (
    "Research and triage aid for adult upper-extremity radiographs (MURA study types). "
    "It flags studies that may be abnormal (MURA 'positive': fracture, hardware, "
    "degenerative or other findings) for earlier review. It is not a diagnosis and not a "
    "medical device; every result must be reviewed by a qualified reader."
)
SYNTHETIC_USE = (
    "DEMO ONLY: trained on procedurally generated synthetic images, not on radiographs. "
    "Not for clinical use of any kind."
)


class InputSpec(BaseModel):
    """How pixels must be prepared for the models (see :mod:`bonexr.imaging`)."""

    size: int = Field(gt=0, description="Square side in pixels the models take.")
    channels: int = Field(1, description="Channels fed to the model (replicated to 3 inside).")
    preprocessing: str = Field(PREPROCESSING_ID, description="Recipe id of bonexr.imaging.")
    dtype: str = "float32"
    value_range: tuple[float, float] = (0.0, 255.0)
    normalization: str = Field("inside-model", description="Backbone normalisation location.")


class ModelFiles(BaseModel):
    """One trained model: its Keras file (None in a serving-only copy, which ships the
    ONNX alone) and its ONNX export."""

    keras: str | None = None
    onnx: str | None = None
    backbone: str


class ContentGate(BaseModel):
    """The router's out-of-distribution score and the limit above which a view is refused.

    The score is the Mahalanobis distance of the router's pooled features from the nearest
    body part's mean (class means and a shared, shrunk covariance fitted on the training
    split), computed inside the router's ONNX graph as a second output, so every runtime
    and precision computes it in the same pass. The limit is the ``acceptance`` quantile
    of the validation split's scores: that share of in-distribution views is accepted.
    """

    method: Literal["mahalanobis"] = "mahalanobis"
    output: int = Field(1, ge=1, description="Index of the router's ONNX output holding it.")
    limit: float = Field(gt=0.0, allow_inf_nan=False, description="Refused above this score.")
    acceptance: float = Field(
        gt=0.5, le=1.0, description="Share of validation views at or below the limit."
    )
    fitted_on: str = "class means and covariance: train split; limit: validation split"
    validation_views: int = Field(ge=1, description="Validation views the limit came from.")


class RouterSpec(ModelFiles):
    classes: list[str] = Field(description="Body parts in output order.")
    ood: ContentGate | None = Field(
        None, description="The content gate; None in bundles exported before it existed."
    )


class HeatmapSpec(BaseModel):
    """A part model's heat map: a second ONNX output, computed in the same pass."""

    method: Literal["cam"] = Field(
        "cam",
        description="The global-pooling head's exact attribution: CAM for average pooling, "
        "the average branch as CAM plus the max branch at each channel's arg-max for "
        "average + max pooling (it sums to the logit).",
    )
    output: int = Field(1, ge=1, description="Index of the ONNX output holding the map.")
    grid: tuple[int, int] = Field(description="(rows, cols) of the map at the model input.")


#: The operating point a bundle serves when neither the request nor the export names one.
TRIAGE = "triage"
#: Youden's J: sensitivity and specificity weighted alike (the default before triage).
BALANCED = "balanced"


#: An operating point's guarantee: the one-sided 95% Clopper-Pearson lower bound of its
#: sensitivity, on the data that chose it, reaches the target ...
GUARANTEED = "guaranteed"
#: ... or cannot: too few abnormal cases (0 misses among n needs n >= 59 for 0.95).
INSUFFICIENT_DATA = "insufficient_data"

#: Keys added to a part's spec after bundles were first hashed: left out of the answer
#: fields' hashes while unset (so older bundles keep their versions), and the descriptive
#: ones (test figures, how a map was chosen) always, as metrics are.
_LATER_KEYS = {"points_raw", "points_calibrated", "guarantee", "guarantee_lower_bound"}
_LATER_KEYS |= {"guarantee_n", "validation_rule"}
_DESCRIPTIVE_KEYS = {"selection", "test_sensitivity", "test_sensitivity_ci", "test_n"}
_DESCRIPTIVE_KEYS |= {"test_specificity", "test_specificity_ci", "test_n_abnormal"}


def _without_later_defaults(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            k: _without_later_defaults(v)
            for k, v in value.items()
            if k not in _DESCRIPTIVE_KEYS and not (k in _LATER_KEYS and v in (None, [], {}))
        }
    return value


class OperatingPoint(BaseModel):
    """One decision threshold on the served (calibrated) P(abnormal): the rule that chose
    it, the guarantee it carries, and what it achieved on the test split (for the record:
    the test split chose nothing)."""

    threshold: float = Field(ge=0.0, le=1.0, allow_inf_nan=False)
    rule: str = Field(description="How it was chosen, e.g. sensitivity>=0.95-on-validation.")
    target_sensitivity: float | None = Field(None, gt=0.0, le=1.0)
    validation_sensitivity: float | None = Field(
        None, ge=0.0, le=1.0, description="Cross-fitted (out-of-fold) sensitivity on validation."
    )
    validation_specificity: float | None = Field(
        None, ge=0.0, le=1.0, description="Cross-fitted (out-of-fold) specificity on validation."
    )
    validation_n: int | None = Field(None, ge=0, description="Images or studies it saw.")
    validation_rule: str | None = Field(
        None, description="How the validation figures were measured (cross-fitting)."
    )
    guarantee: Literal["guaranteed", "insufficient_data"] | None = Field(
        None,
        description="Triage only: whether the one-sided 95% lower confidence bound of its "
        "sensitivity on the data that chose it reaches the target; None in bundles exported "
        "before guarantees existed.",
    )
    guarantee_lower_bound: float | None = Field(None, ge=0.0, le=1.0)
    guarantee_n: int | None = Field(None, ge=0, description="Abnormal cases it was chosen on.")
    test_sensitivity: float | None = Field(None, ge=0.0, le=1.0)
    test_sensitivity_ci: list[float] | None = None
    test_specificity: float | None = Field(None, ge=0.0, le=1.0)
    test_specificity_ci: list[float] | None = None
    test_n: int | None = Field(None, ge=0)
    test_n_abnormal: int | None = Field(None, ge=0)

    def guarantee_sentence(self, level: str = "study") -> str | None:
        """The plain-words statement of the guarantee (None where no target applies)."""
        if self.target_sensitivity is None:
            return None
        target = f"{self.target_sensitivity:.0%}"
        if self.guarantee is None:
            return (
                f"This operating point aims at {target} sensitivity but carries no guarantee: "
                "its bundle was exported before guarantees were measured."
            )
        bound = f"{(self.guarantee_lower_bound or 0.0):.2f}"
        n = self.guarantee_n or 0
        cases = {"image": "images", "study": "studies"}.get(level, f"{level}s")
        if self.guarantee == GUARANTEED:
            return (
                f"With 95% confidence its {level}-level sensitivity is at least {target}: the "
                f"lower bound reached on {n} abnormal validation {cases} is {bound}."
            )
        return (
            f"Insufficient data: {n} abnormal validation {cases} cannot show {target} "
            f"sensitivity (the 95% lower bound reached is {bound}; catching all of "
            f"{cases_needed(self.target_sensitivity)} is the least that could); its test "
            "figures are the evidence."
        )


def cases_needed(target: float, confidence: float = 0.95) -> int:
    """The fewest abnormal cases, all caught, whose one-sided exact lower bound on the
    sensitivity reaches ``target`` (``(1 - confidence) ** (1 / n) >= target``: 59 for 0.95)."""
    return math.ceil(math.log(1.0 - confidence) / math.log(target))


class PartSpec(ModelFiles):
    """A body part's abnormality model, its calibration and its operating points.

    Each operating point has a threshold per level, chosen on the validation split: one
    for single images (``/predict``), one for the study (``/predict/study``, MURA's unit).
    ``threshold`` and ``image_threshold`` repeat the default point's values for readers of
    older manifests; bundles written before operating points existed have only those two
    (served as ``balanced``).
    """

    threshold: float = Field(
        ge=0.0, le=1.0, description="Study operating point: threshold on the views' mean."
    )
    threshold_rule: str = "youden-j-on-validation-study-level"
    image_threshold: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="Image operating point; None in bundles written before it existed "
        "(the study threshold is then used, with a warning).",
    )
    image_threshold_rule: str | None = None
    heatmap: HeatmapSpec | None = Field(
        None, description="Where the ONNX model outputs its heat map; None: no heat maps."
    )
    calibration: dict[Level, Calibration] = Field(
        default_factory=dict,
        description="Platt scaling per level (image, study); empty: uncalibrated (bundles "
        "exported before calibration existed).",
    )
    operating_points: dict[str, dict[Level, OperatingPoint]] = Field(
        default_factory=dict,
        description="Operating point name -> a threshold per level; empty in older bundles.",
    )

    @field_validator("calibration", "operating_points")
    @classmethod
    def _both_levels(cls, value: dict[str, Any], info: Any) -> dict[str, Any]:
        def check(levels: dict[str, Any], where: str) -> None:
            missing = [level for level in LEVELS if level not in levels]
            if missing:
                raise ValueError(f"{where}needs both levels (image, study); missing {missing}")

        if info.field_name == "calibration":
            if value:
                check(value, "")
        else:
            for name, levels in value.items():
                if not name.isidentifier():
                    raise ValueError(f"operating point name {name!r} must be a plain word")
                check(levels, f"operating point {name!r} ")
        return value

    @property
    def single_image_threshold(self) -> float:
        """The threshold for one image: its own when the bundle has one."""
        return self.threshold if self.image_threshold is None else self.image_threshold

    def points(self) -> dict[str, dict[Level, OperatingPoint]]:
        """The operating points, older bundles' two thresholds as ``balanced``."""
        if self.operating_points:
            return self.operating_points
        return {
            BALANCED: {
                "image": OperatingPoint(
                    threshold=self.single_image_threshold,
                    rule=self.image_threshold_rule or self.threshold_rule,
                ),
                "study": OperatingPoint(threshold=self.threshold, rule=self.threshold_rule),
            }
        }


class PrecisionSpec(BaseModel):
    """A reduced precision decided at export on a label-free pool and validation, then
    scored once on test for the record (``training.precision``)."""

    allowed: bool = Field(description="Within the accuracy gate; only then may it serve.")
    runtime: str = Field(description="The runtime that was measured (e.g. openvino).")
    reason: str = Field(description="Why allowed or not, with the figures.")
    tolerance: float = Field(
        ge=0.0, description="Largest |P - P(fp32)| allowed at load (reference check)."
    )
    measured: dict[str, Any] = Field(default_factory=dict, description="The gate's figures.")
    files: dict[str, str] = Field(
        default_factory=dict,
        description="Model name (router, elbow ...) -> the file served at this precision "
        "(an OpenVINO IR .xml with its .bin beside it); empty: the ONNX files (bf16).",
    )

    @field_validator("files")
    @classmethod
    def _inside_the_bundle(cls, files: dict[str, str]) -> dict[str, str]:
        for rel in files.values():
            path = PurePosixPath(rel)
            if path.is_absolute() or ".." in path.parts or path.suffix != ".xml":
                raise ValueError(f"{rel!r}: must be a bundle-relative .xml path")
        return files


class Manifest(BaseModel):
    """Everything a consumer needs to trust and use a bundle."""

    schema_version: int = SCHEMA_VERSION
    name: str
    version: str = ""
    created_at: str = Field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    synthetic: bool = False
    intended_use: str = INTENDED_USE
    body_parts: list[str]
    input: InputSpec
    router: RouterSpec
    parts: dict[str, PartSpec]
    metrics: dict[str, Any] = Field(default_factory=dict)
    data: dict[str, Any] = Field(default_factory=dict)
    training: dict[str, Any] = Field(default_factory=dict)
    libraries: dict[str, str] = Field(default_factory=dict)
    files: dict[str, str] = Field(default_factory=dict, description="relative path -> sha256")
    field_hashes: dict[str, str] = Field(
        default_factory=dict,
        description="Answer-changing field (dotted name) -> sha256 of its value at export; "
        "the version covers them. Empty in bundles exported before it existed (their version "
        "covers the model files only).",
    )
    precisions: dict[str, PrecisionSpec] = Field(
        default_factory=dict,
        description="Reduced precisions measured at export (fp32 is always allowed).",
    )
    default_operating_point: str | None = Field(
        None,
        description="The operating point answers use unless the request names one; None in "
        "bundles exported before operating points existed (they serve 'balanced').",
    )

    @model_validator(mode="after")
    def _same_points_everywhere(self) -> Manifest:
        names = {part: sorted(spec.points()) for part, spec in self.parts.items()}
        if len({tuple(n) for n in names.values()}) > 1:
            raise ValueError(f"parts.*.operating_points: every part needs the same ones: {names}")
        default = self.default_operating_point
        if default is not None and names and default not in next(iter(names.values())):
            raise ValueError(
                f"default_operating_point: {default!r} is not an operating point of the parts"
            )
        return self

    @property
    def operating_point_names(self) -> list[str]:
        """The operating points every part has (the same for all parts)."""
        first = next(iter(self.parts.values()), None)
        return sorted(first.points()) if first else []

    @property
    def default_point(self) -> str:
        return self.default_operating_point or BALANCED

    @property
    def calibrated(self) -> bool:
        return bool(self.parts) and all(spec.calibration for spec in self.parts.values())

    def answer_fields(self) -> dict[str, Any]:
        """Every field that can change an answer, by dotted name, as JSON values.

        Thresholds, operating points and anything else a part carries, the router's
        classes in their order, the part list, precision verdicts and tolerances, the
        preprocessing, the synthetic flag and the intended use. Metrics, provenance and
        library versions describe the bundle but change no answer, so they stay out.
        Fields added later (content gate, calibration, operating points) are left out
        while unset, so a bundle written before them keeps its recorded hashes.
        """
        router = self.router.model_dump(mode="json")
        if self.router.ood is None:
            router.pop("ood")
        fields: dict[str, Any] = {
            "synthetic": self.synthetic,
            "intended_use": self.intended_use,
            "body_parts": list(self.body_parts),
            "input": self.input.model_dump(mode="json"),
            "router": router,
        }
        if self.default_operating_point is not None:
            fields["default_operating_point"] = self.default_operating_point
        for part, spec in sorted(self.parts.items()):
            dumped = _without_later_defaults(spec.model_dump(mode="json"))
            for later in ("calibration", "operating_points"):
                if not dumped[later]:
                    dumped.pop(later)
            fields[f"parts.{part}"] = dumped
        for name, precision in sorted(self.precisions.items()):
            fields[f"precisions.{name}"] = precision.model_dump(
                mode="json", include={"allowed", "runtime", "tolerance", "files"}
            )
        return fields

    def precision_allowed(self, name: str) -> bool:
        spec = self.precisions.get(name)
        return name == "fp32" or (spec is not None and spec.allowed)

    def precision_note(self, name: str) -> str:
        spec = self.precisions.get(name)
        return spec.reason if spec else f"{name} was not measured when this bundle was exported"

    def model_files(self) -> list[str]:
        """Every model file the manifest points at (Keras, ONNX and reduced-precision IR)."""
        specs: list[ModelFiles] = [self.router, *self.parts.values()]
        variants = [
            f
            for spec in self.precisions.values()
            for xml in spec.files.values()
            for f in (xml, str(PurePosixPath(xml).with_suffix(".bin")))
        ]
        return [f for spec in specs for f in (spec.keras, spec.onnx) if f] + variants

    def served_file(self, name: str, precision: str) -> str:
        """The file model ``name`` (``router`` or a part) is served from at ``precision``."""
        spec: ModelFiles = self.router if name == ROUTER else self.parts[name]
        variants = self.precisions[precision].files if precision in self.precisions else {}
        key = ROUTER if name == ROUTER else model_key(name)
        if variants:
            if key not in variants:
                raise BundleError(f"bundle has no {precision} file for {name}")
            return variants[key]
        if not spec.onnx:
            raise BundleError(f"no ONNX export for {name} (the service runs ONNX)")
        return spec.onnx
