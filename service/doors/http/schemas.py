"""Request and response models: the API contract as code, so ``/openapi.json`` documents it.

Every field carries a description because the OpenAPI schema *is* the client documentation
(``/docs``) and the schema the fuzz tests generate requests from.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from bonexr.manifest import INSUFFICIENT_DATA, OperatingPoint

#: Server-chosen upload names: sha256 of the stored (re-encoded) PNG.
FILENAME_PATTERN = r"^[0-9a-f]{64}\.png$"

#: An operating point's name as a request may give it.
OPERATING_POINT_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,39}$"
OperatingPointName = Annotated[str, Field(pattern=OPERATING_POINT_PATTERN)]


class FieldError(BaseModel):
    """One problem found while validating a request (never echoes the offending input)."""

    loc: list[str] = Field(description="Where the problem is, e.g. ['body', 'filename'].")
    msg: str = Field(description="What is wrong.")
    type: str = Field(description="Machine-readable error type.")


class ErrorResponse(BaseModel):
    """The body of every error response."""

    detail: str = Field(description="Human-readable reason.")
    code: str | None = Field(
        None,
        description="Stable machine code of a triage error (docs/api.md lists them); absent "
        "for protocol errors (unknown route, 405, validation).",
    )
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
    heatmap: bool = Field(
        False,
        description="Also prepare the heat map (same model pass) and return its URL.",
    )
    operating_point: OperatingPointName | None = Field(
        None,
        description="Decide at this operating point of the bundle (e.g. 'triage', 'balanced';"
        " see GET /model); default: the bundle's default.",
    )


class StudyRequest(BaseModel):
    """The views of one study (MURA's unit: one body part, one patient, one visit)."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"filenames": ["0" * 64 + ".png", "1" * 64 + ".png"]}]}
    )

    filenames: list[Annotated[str, Field(pattern=FILENAME_PATTERN)]] = Field(
        min_length=1,
        description="Filenames returned by POST /upload (at most BONEXR_MAX_STUDY_VIEWS; "
        "a name given twice counts once).",
    )
    view_names: list[Annotated[str, Field(max_length=128)]] | None = Field(
        None,
        description="What to call each view in the worklist (e.g. the file names), in the "
        "order of filenames; recorded, never used to judge.",
    )
    body_part: str | None = Field(
        None,
        description="Score every view with this body part's model (e.g. 'Hand') instead "
        "of routing the study; the answer says so.",
    )
    bone_type: str | None = Field(
        None,
        description="Deprecated: the old name of body_part (accepted until 0.8.0).",
        deprecated=True,
    )

    @model_validator(mode="after")
    def _names_match_views(self) -> StudyRequest:
        if self.view_names is not None and len(self.view_names) != len(self.filenames):
            raise ValueError(
                f"view_names names {len(self.view_names)} views and filenames "
                f"{len(self.filenames)}: give one name per filename, in the same order"
            )
        return self

    @model_validator(mode="after")
    def _one_body_part(self) -> StudyRequest:
        old = self.__dict__.get("bone_type")
        if old is not None and self.body_part is not None and old != self.body_part:
            raise ValueError(
                "body_part and its old name bone_type name different parts: send body_part"
            )
        if self.body_part is None and old is not None:
            self.body_part = old
        return self

    operating_point: OperatingPointName | None = Field(
        None,
        description="Decide at this operating point of the bundle (see GET /model); default: "
        "the bundle's default.",
    )


class AppliedOperatingPoint(BaseModel):
    """The operating point an answer was decided at, and what it was chosen for."""

    name: str = Field(description="'triage' (target sensitivity), 'balanced' (Youden's J).")
    threshold: float = Field(ge=0.0, le=1.0)
    rule: str = Field(description="How the threshold was chosen on the validation split.")
    guarantee: str | None = Field(
        None,
        description="Triage: 'guaranteed' (the one-sided 95% lower confidence bound of its "
        "sensitivity on the data that chose it reaches the target) or 'insufficient_data' "
        "(too few abnormal cases to show it); null for balanced or an older bundle.",
    )
    insufficient_data: bool = Field(
        False, description="True when the point could not be shown to reach its target."
    )
    guarantee_statement: str | None = Field(None, description="The guarantee in plain words.")
    guarantee_lower_bound: float | None = None
    guarantee_n: int | None = Field(None, description="Abnormal cases it was chosen on.")
    test_sensitivity: float | None = Field(
        None, description="Sensitivity at this point on the held-out test split."
    )
    test_sensitivity_ci: list[float] | None = Field(None, description="Its 95% interval.")
    test_specificity: float | None = Field(
        None, description="Specificity at this point on the held-out test split."
    )
    test_specificity_ci: list[float] | None = Field(None, description="Its 95% interval.")
    test_n: int | None = Field(None, description="Test cases (images or studies) measured.")
    validation_sensitivity: float | None = Field(
        None, description="Cross-fitted (out-of-fold) sensitivity on validation."
    )
    validation_specificity: float | None = Field(
        None, description="Cross-fitted (out-of-fold) specificity on validation."
    )


def applied_point(
    name: str, point: OperatingPoint | None, level: str = "study"
) -> AppliedOperatingPoint:
    """The response block for the operating point an answer used."""
    if point is None:
        raise ValueError("an answer always has an operating point")
    return AppliedOperatingPoint(
        name=name,
        threshold=point.threshold,
        rule=point.rule,
        guarantee=point.guarantee,
        insufficient_data=point.guarantee == INSUFFICIENT_DATA,
        guarantee_statement=point.guarantee_sentence(level),
        guarantee_lower_bound=point.guarantee_lower_bound,
        guarantee_n=point.guarantee_n,
        test_sensitivity=point.test_sensitivity,
        test_sensitivity_ci=point.test_sensitivity_ci,
        test_specificity=point.test_specificity,
        test_specificity_ci=point.test_specificity_ci,
        test_n=point.test_n,
        validation_sensitivity=point.validation_sensitivity,
        validation_specificity=point.validation_specificity,
    )


class ModelRef(BaseModel):
    """Which model bundle produced a result."""

    name: str = Field(description="Bundle name.")
    version: str = Field(description="Bundle version (content hash of the model files).")
    card_url: str = Field(
        "/model/card",
        description="The bundle's model card: what it was trained on (and how the data was "
        "split: by image where the data has no patient ids), what it is for, its figures.",
    )


class PredictionResponse(BaseModel):
    """Two-stage result: the router picks the body part, that part's model scores abnormality."""

    filename: str | None = Field(
        description="The upload that was classified (null: POST /predict/image kept nothing)."
    )
    body_part: str = Field(description="Body part with the highest router probability.")
    bone_type: str = Field(
        description="Deprecated: the same as body_part (answered until 0.8.0).", deprecated=True
    )
    result: Literal["abnormal", "normal"] = Field(
        description=(
            "'abnormal' when abnormality_probability >= threshold (the word the worklist, "
            "the export, the CSVs and the DICOM report use). For a MURA-trained bundle it "
            "follows MURA's label: any abnormality (fracture, hardware, degenerative change, "
            "...); for a fracture-trained bundle (FracAtlas) it means a fracture. Until "
            "0.7.0 this was 'fractured'."
        )
    )
    body_part_probabilities: dict[str, float] = Field(
        description="Router probability per body part (sums to 1)."
    )
    bone_type_probabilities: dict[str, float] = Field(
        description="Deprecated: the same as body_part_probabilities.", deprecated=True
    )
    abnormality_probability: float = Field(
        ge=0.0,
        le=1.0,
        description="P(abnormal) from the chosen body part's model, calibrated on validation "
        "data (image level) unless a warning says the bundle is uncalibrated.",
    )
    threshold: float = Field(
        ge=0.0, le=1.0, description="Image threshold of that body part at operating_point."
    )
    operating_point: AppliedOperatingPoint = Field(
        description="The operating point the verdict was decided at, and what it was chosen for."
    )
    content_score: float | None = Field(
        None,
        description="The router's out-of-distribution score (refused above the bundle's "
        "limit; see GET /model); null for a bundle without a content gate.",
    )
    model: ModelRef
    heatmap_url: str | None = Field(
        None, description="GET this for the heat map (when the request asked for it)."
    )
    warnings: list[str] = Field(
        description="Reasons to distrust this result (unsure router, demo model, ...)."
    )


class StudyView(BaseModel):
    """One view of a study: scored by the study's body-part model."""

    filename: str
    body_part: str = Field(description="This view's own top router part.")
    body_part_probabilities: dict[str, float]
    bone_type: str = Field(description="Deprecated: the same as body_part.", deprecated=True)
    bone_type_probabilities: dict[str, float] = Field(
        description="Deprecated: the same as body_part_probabilities.", deprecated=True
    )
    abnormality_probability: float = Field(
        ge=0.0, le=1.0, description="Calibrated P(abnormal) of this view alone (image level)."
    )
    threshold: float = Field(ge=0.0, le=1.0, description="Image threshold of that part.")
    result: Literal["abnormal", "normal"] = Field(
        description="This view alone at the image threshold of the operating point."
    )
    content_score: float | None = None


class StudyResponse(BaseModel):
    """One answer for the study: MURA's rule (mean of the part model over the views)."""

    body_part: str = Field(description="The study's body part.")
    body_part_source: Literal["router", "client"] = Field(
        description="'router': summed router probabilities over the views; 'client': the "
        "request's body_part."
    )
    body_part_probabilities: dict[str, float] = Field(
        description="Router probabilities averaged over the views."
    )
    bone_type: str = Field(description="Deprecated: the same as body_part.", deprecated=True)
    bone_type_source: Literal["router", "client"] = Field(
        description="Deprecated: the same as body_part_source.", deprecated=True
    )
    bone_type_probabilities: dict[str, float] = Field(
        description="Deprecated: the same as body_part_probabilities.", deprecated=True
    )
    abnormality_probability: float = Field(
        ge=0.0,
        le=1.0,
        description="The study's P(abnormal): the mean of the views' raw model outputs "
        "(MURA's rule), calibrated by the part's study-level map.",
    )
    threshold: float = Field(
        ge=0.0, le=1.0, description="Study threshold of that part at operating_point."
    )
    result: Literal["abnormal", "normal"] = Field(
        description="'abnormal' when abnormality_probability >= threshold."
    )
    operating_point: AppliedOperatingPoint = Field(
        description="The operating point the verdict was decided at, and what it was chosen for."
    )
    views: list[StudyView]
    model: ModelRef
    warnings: list[str] = Field(description="Reasons to distrust this result.")
    record_id: str | None = Field(
        None, description="The study's id in the worklist (GET /worklist/{id})."
    )


class HealthResponse(BaseModel):
    """Liveness: the process is up and serving HTTP."""

    status: Literal["ok"] = "ok"


class DicomDestinationStatus(BaseModel):
    """Where the DICOM node sends results, and how that is going."""

    name: Literal["dicomweb", "dicom"]
    target: str = Field(description="STOW-RS URL or C-STORE AE@host:port.")
    pending: int = Field(description="Results waiting on disk to be delivered (retried).")
    failed: int = Field(description="Results the destination refused for good (kept).")
    last_error: str | None = Field(description="Why the last attempt failed (None: it worked).")


class DicomNodeStatus(BaseModel):
    """The DICOM node: its listener and its result destinations."""

    listener: str | None = Field(
        description="The Storage SCP as AE@host:port (None: BONEXR_DICOM_PORT unset)."
    )
    stow: str = Field("/dicom-web/studies", description="The STOW-RS endpoint (always on).")
    destinations: list[DicomDestinationStatus]


class ReadyResponse(BaseModel):
    """Readiness: the bundle is loaded, verified and warmed."""

    status: Literal["ready"] = "ready"
    model: ModelRef
    providers: list[str] = Field(description="ONNX Runtime execution providers in use.")
    runtime: str = Field(description="Runtime and precision serving, and why they were chosen.")
    warnings: list[str] = Field(
        default_factory=list, description="What a user of this bundle must know."
    )
    dicom: DicomNodeStatus


class OperatingPoints(BaseModel):
    """A part's two decision thresholds on P(abnormal), both chosen on validation data."""

    image: float = Field(description="Applied by POST /predict to one image.")
    image_rule: str = Field(description="How the image threshold was chosen.")
    study: float = Field(description="Applied by POST /predict/study to the views' mean.")
    study_rule: str = Field(description="How the study threshold was chosen.")


class ModelInfo(BaseModel):
    """Summary of the loaded bundle's manifest."""

    name: str
    version: str
    software_version: str = Field(
        description="The bonexr release serving it (bonexr --version; CHANGELOG.md)."
    )
    created_at: str
    synthetic: bool = Field(description="True for a demo bundle trained on synthetic images.")
    body_parts: list[str]
    thresholds: dict[str, OperatingPoints] = Field(
        description="The default operating point's two thresholds per body part."
    )
    default_operating_point: str = Field(description="What answers use unless asked.")
    operating_points: dict[str, dict[str, dict[str, Any]]] = Field(
        description="Body part -> operating point -> level (image, study) -> threshold, "
        "rule, guarantee, cross-fitted validation and held-out test sensitivity/specificity."
    )
    guarantees: dict[str, dict[str, str]] = Field(
        default_factory=dict,
        description="Body part -> level -> the triage point's guarantee in plain words "
        "(or why it has none: insufficient_data, an older bundle).",
    )
    calibration: dict[str, dict[str, Any]] = Field(
        description="Body part -> level -> the calibrator (temperature, platt, isotonic or "
        "none: raw P served) and how it was chosen; empty for an uncalibrated bundle."
    )
    content_gate: dict[str, Any] | None = Field(
        description="The router's out-of-distribution score and its limit; null: no gate."
    )
    input_size: int = Field(description="Square side in pixels the models take.")
    preprocessing: str = Field(description="Preprocessing recipe id (bonexr.imaging).")
    backbones: dict[str, str] = Field(description="Backbone per model (router and parts).")
    metrics: dict[str, Any] = Field(description="Evaluation metrics recorded in the bundle.")
    intended_use: str
    providers: list[str] = Field(description="ONNX Runtime execution providers in use.")
    runtime: str = Field(description="Runtime and precision serving, and why they were chosen.")
    precisions: dict[str, Any] = Field(
        default_factory=dict, description="Reduced precisions measured at export, with the gate."
    )
    served_precision: dict[str, Any] = Field(
        default_factory=dict,
        description="The precision serving now and, for a reduced one, its test study AUROC "
        "per part beside fp32 (scored once at export, after the label-free verdict); for "
        "fp32 the evaluation's figures in `metrics` apply.",
    )
    warnings: list[str] = Field(
        default_factory=list, description="What a user of this bundle must know."
    )


class Rules(BaseModel):
    """Usage rules, generated from the live configuration and the loaded bundle."""

    accepted_formats: list[str]
    max_upload_bytes: int
    max_pixels: int
    min_side_pixels: int
    body_parts: list[str] = Field(description="Body parts the loaded model routes between.")
    abnormal_means: str = Field(description="What an 'abnormal' result means.")
    fractured_means: str = Field(
        description="Deprecated: the same as abnormal_means (until 0.8.0).", deprecated=True
    )
    not_a_medical_device: str
    intended_use: str
    model: ModelRef | None = Field(None, description="Loaded bundle; null while not ready.")
    model_status: str = Field(description="'ready' or why no model is loaded.")
    synthetic: bool | None = None
    retention_hours: float | None = Field(None, description="Uploads deleted after this long.")
    api_key_required: bool


# ------------------------------------------------------------------ worklist and audit


class WorklistView(BaseModel):
    """One view of a recorded study."""

    position: int
    filename: str | None = Field(description="The upload (None: a view never stored).")
    sop_instance_uid: str | None = Field(None, description="Its DICOM instance, when received.")
    abnormality_probability: float | None
    threshold: float | None
    result: Literal["abnormal", "normal"] | None
    refused: bool
    reason: str | None = Field(description="Why the view was not scored.")
    name: str | None = Field(
        None, description="What the sender called the view (the page sends the file's name)."
    )
    heatmap_url: str | None = Field(description="GET it for the view's heat map.")


class ReaderReview(BaseModel):
    id: int = Field(description="The review's id.")
    reader: str = Field(description="The API key's name.")
    reader_result: Literal["abnormal", "normal"]
    note: str | None
    at: str = Field(description="UTC, ISO 8601.")
    amends: int | None = Field(None, description="The review this one corrects.")
    replaced_by: int | None = Field(
        None, description="The review that corrected this one (then it no longer counts)."
    )


class RecordedStudy(BaseModel):
    """What every view of a recorded study shows."""

    id: str
    arrived_at: str = Field(description="UTC, ISO 8601.")
    source: Literal["api", "dicom"]
    body_part: str | None
    result: Literal["abnormal", "normal"] | None = Field(
        description="The model's study result (None: no finding, see refusal)."
    )
    abnormality_probability: float | None = Field(description="Calibrated, study level.")
    threshold: float | None
    operating_point: str | None
    status: Literal["unread", "reviewed"]
    refusal: str | None
    model: ModelRef
    replaces: str | None = Field(
        None,
        description="The earlier record of the same DICOM study this answer supersedes (a "
        "late instance arrived, or an instance was re-sent with new pixels).",
    )
    superseded_by: str | None = Field(
        None,
        description="The record that supersedes this one (then it is no longer listed in "
        "GET /worklist; read the newer one).",
    )


class WorklistItem(RecordedStudy):
    """A recorded study in the worklist."""

    views: int
    refused_views: int
    reviews: int = Field(description="Reviews that count (an amended one counts once).")


class WorklistCounts(BaseModel):
    unread: int
    reviewed: int
    all: int


class WorklistPage(BaseModel):
    """Studies in triage order: the model's abnormal first, then normal, then those without
    a finding; each group by descending probability, ties by arrival."""

    items: list[WorklistItem]
    next_cursor: str | None = Field(description="Pass as cursor for the next page.")
    counts: WorklistCounts


class WorklistVersion(BaseModel):
    """What a page polls: a token that changes whenever the worklist does, and the counts."""

    version: str
    counts: WorklistCounts


class Identity(BaseModel):
    """Who this API key is, as the records and the audit name it."""

    name: str
    admin: bool = Field(description="Whether it may read GET /audit.")


class WorklistStudy(RecordedStudy):
    """A recorded study whole: its views with heat-map links, and every reader's review."""

    views: list[WorklistView]
    reviews: list[ReaderReview]
    warnings: list[str]


class ReviewRequest(BaseModel):
    reader_result: Literal["abnormal", "normal"] = Field(description="The reader's verdict.")
    note: str | None = Field(None, max_length=2000)
    amend: bool = Field(
        False,
        description="Correct this reader's own current review (kept, marked replaced) "
        "instead of adding a second one.",
    )


class AuditItem(BaseModel):
    at: str = Field(description="UTC, ISO 8601.")
    key_name: str
    action: str
    study_id: str | None
    outcome: str


class AuditPageResponse(BaseModel):
    items: list[AuditItem]
    next_cursor: str | None
