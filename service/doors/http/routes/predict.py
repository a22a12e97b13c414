"""POST /predict: route an uploaded image to its body part and score abnormality."""

from __future__ import annotations

from fastapi import APIRouter

from service.doors.http.deps import PredictorDep, ReadyEngineDep
from service.doors.http.errors import error_responses
from service.doors.http.schemas import ModelRef, PredictionResponse, PredictRequest, applied_point

router = APIRouter(tags=["predict"])


@router.post(
    "/predict",
    response_model=PredictionResponse,
    summary="Classify an uploaded image",
    responses=error_responses(400, 404, 413, 422, 429, 503),
)
async def predict(
    body: PredictRequest, engine: ReadyEngineDep, predictor: PredictorDep
) -> PredictionResponse:
    """Route the image to a body part, then score abnormality with that part's model.

    422 for an image that is not eligible (``code: not_eligible``: DICOM modality or body
    part, or the content gate), a body part the bundle has no model for
    (``unsupported_body_part``) or an unknown ``operating_point``; 429 (with
    ``Retry-After``) when the queue is full, before any decoding; 503 past
    ``BONEXR_PREDICT_TIMEOUT_S``.
    """
    answer = await predictor.image(
        body.filename, heatmap=body.heatmap, operating_point=body.operating_point
    )
    prediction = answer.prediction
    return PredictionResponse(
        filename=body.filename,
        bone_type=prediction.bone_type,
        result=prediction.result,
        bone_type_probabilities=prediction.bone_type_probabilities,
        abnormality_probability=prediction.abnormality_probability,
        threshold=prediction.threshold,
        operating_point=applied_point(prediction.operating_point, answer.point, "image"),
        content_score=prediction.content_score,
        model=ModelRef(name=engine.model_name, version=engine.model_version),
        heatmap_url=answer.heatmap_url,
        warnings=answer.warnings,
    )
