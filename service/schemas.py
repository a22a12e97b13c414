"""Request and response models: the API contract as code, so ``/openapi.json`` documents it.

Every field carries a description because the OpenAPI schema *is* the client documentation
(``/docs``) and the schema the fuzz tests generate requests from.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

#: Server-chosen upload names: sha256 of the stored (re-encoded) PNG.
FILENAME_PATTERN = r"^[0-9a-f]{64}\.png$"


class FieldError(BaseModel):
    """One problem found while validating a request (never echoes the offending input)."""

    loc: list[str] = Field(description="Where the problem is, e.g. ['body', 'filename'].")
    msg: str = Field(description="What is wrong.")
    type: str = Field(description="Machine-readable error type.")


class ErrorResponse(BaseModel):
    """The body of every error response."""

    detail: str = Field(description="Human-readable reason.")
    errors: list[FieldError] | None = Field(
        None, description="Per-field problems (validation errors only)."
    )


class UploadResponse(BaseModel):
    """What the server stored. Use ``filename`` in ``POST /predict``."""

    filename: str = Field(
        pattern=FILENAME_PATTERN,
        description="Server-chosen name: sha256 of the stored pixel-only PNG + '.png'.",
    )
    width: int = Field(description="Image width in pixels (after EXIF orientation).")
    height: int = Field(description="Image height in pixels (after EXIF orientation).")
    format: Literal["PNG", "JPEG", "WEBP", "DICOM"] = Field(
        description="Format detected from the file's magic bytes (not its name or type)."
    )
    bytes: int = Field(description="Size of the uploaded file in bytes.")
    stored_bytes: int = Field(description="Size of the stored grayscale PNG in bytes.")
    body_part_examined: str | None = Field(
        None,
        description="DICOM BodyPartExamined when the file names one (reported, never stored); "
        "the body part used for prediction always comes from the router.",
    )
    warnings: list[str] = Field(
        default_factory=list,
        description="What a reader must know about the decoding (e.g. only the first frame "
        "of a multi-frame DICOM was used).",
    )


class PredictRequest(BaseModel):
    """Which stored upload to classify."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"filename": "0" * 64 + ".png"}]})

    filename: str = Field(
        pattern=FILENAME_PATTERN,
        description="A filename returned by POST /upload.",
    )


class ModelRef(BaseModel):
    """Which model bundle produced a result."""

    name: str = Field(description="Bundle name.")
    version: str = Field(description="Bundle version (content hash of the model files).")


class PredictionResponse(BaseModel):
    """Two-stage result: the router picks the body part, that part's model scores abnormality."""

    filename: str = Field(description="The upload that was classified.")
    bone_type: str = Field(description="Body part with the highest router probability.")
    result: Literal["fractured", "normal"] = Field(
        description=(
            "'fractured' when abnormality_probability >= threshold. It follows MURA's label: "
            "any abnormality (fracture, hardware, degenerative change, ...), not only fractures."
        )
    )
    bone_type_probabilities: dict[str, float] = Field(
        description="Router probability per body part (sums to 1)."
    )
    abnormality_probability: float = Field(
        ge=0.0, le=1.0, description="P(abnormal) from the chosen body part's model."
    )
    threshold: float = Field(ge=0.0, le=1.0, description="Decision threshold of that body part.")
    model: ModelRef
    warnings: list[str] = Field(
        description="Reasons to distrust this result (unsure router, demo model, ...)."
    )


class HealthResponse(BaseModel):
    """Liveness: the process is up and serving HTTP."""

    status: Literal["ok"] = "ok"


class ReadyResponse(BaseModel):
    """Readiness: the bundle is loaded, verified and warmed."""

    status: Literal["ready"] = "ready"
    model: ModelRef
    providers: list[str] = Field(description="ONNX Runtime execution providers in use.")


class ModelInfo(BaseModel):
    """Summary of the loaded bundle's manifest."""

    name: str
    version: str
    created_at: str
    synthetic: bool = Field(description="True for a demo bundle trained on synthetic images.")
    body_parts: list[str]
    thresholds: dict[str, float] = Field(description="Decision threshold per body part.")
    threshold_rules: dict[str, str] = Field(description="How each threshold was chosen.")
    input_size: int = Field(description="Square side in pixels the models take.")
    preprocessing: str = Field(description="Preprocessing recipe id (bonexr.imaging).")
    backbones: dict[str, str] = Field(description="Backbone per model (router and parts).")
    metrics: dict[str, Any] = Field(description="Evaluation metrics recorded in the bundle.")
    intended_use: str
    providers: list[str] = Field(description="ONNX Runtime execution providers in use.")


class Rules(BaseModel):
    """Usage rules, generated from the live configuration and the loaded bundle."""

    accepted_formats: list[str]
    max_upload_bytes: int
    max_pixels: int
    min_side_pixels: int
    body_parts: list[str] = Field(description="Body parts the loaded model routes between.")
    fractured_means: str
    not_a_medical_device: str
    intended_use: str
    model: ModelRef | None = Field(None, description="Loaded bundle; null while not ready.")
    model_status: str = Field(description="'ready' or why no model is loaded.")
    synthetic: bool | None = None
    retention_hours: float | None = Field(None, description="Uploads deleted after this long.")
    api_key_required: bool
