"""The bundle manifest's schema: what ``manifest.json`` holds, as pydantic models.

Apart from :mod:`bonexr.bundle` (reading, verifying and publishing bundle folders) and
:mod:`bonexr.contract` (checking a manifest against this code and its models), because
both need these types and neither may import the other.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import PurePosixPath
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator

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
    """One trained model in both formats."""

    keras: str
    onnx: str | None = None
    backbone: str


class RouterSpec(ModelFiles):
    classes: list[str] = Field(description="Body parts in output order.")


class HeatmapSpec(BaseModel):
    """A part model's heat map: a second ONNX output, computed in the same pass."""

    method: Literal["cam"] = Field(
        "cam", description="Class activation map of the global-pooling head."
    )
    output: int = Field(1, ge=1, description="Index of the ONNX output holding the map.")
    grid: tuple[int, int] = Field(description="(rows, cols) of the map at the model input.")


class PartSpec(ModelFiles):
    """A body part's abnormality model and its two operating points, both chosen on the
    validation split: one for single images (``/predict``), one for the mean over a study's
    views (``/predict/study``, MURA's unit)."""

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

    @property
    def single_image_threshold(self) -> float:
        """The threshold for one image: its own when the bundle has one."""
        return self.threshold if self.image_threshold is None else self.image_threshold


class PrecisionSpec(BaseModel):
    """A reduced precision measured on the bundle's own test split at export."""

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

    def answer_fields(self) -> dict[str, Any]:
        """Every field that can change an answer, by dotted name, as JSON values.

        Thresholds, operating points and anything else a part carries, the router's
        classes in their order, the part list, precision verdicts and tolerances, the
        preprocessing, the synthetic flag and the intended use. Metrics, provenance and
        library versions describe the bundle but change no answer, so they stay out.
        """
        fields: dict[str, Any] = {
            "synthetic": self.synthetic,
            "intended_use": self.intended_use,
            "body_parts": list(self.body_parts),
            "input": self.input.model_dump(mode="json"),
            "router": self.router.model_dump(mode="json"),
        }
        for part, spec in sorted(self.parts.items()):
            fields[f"parts.{part}"] = spec.model_dump(mode="json")
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
