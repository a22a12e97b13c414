"""POST /predict: route an uploaded image to its body part and score abnormality;
POST /predict/image: the same answer for an image sent in the request, in one round trip.

Both go through the same triage core: ``/predict/image`` stores the image exactly as
``/upload`` does (:func:`service.triage.ingest.ingest`: the same limits, gate and
content-addressed name) and then answers exactly as ``/predict`` does for that name, so
the heat map URL and ``/predict/study`` work on it afterwards.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Query, Request, UploadFile
from fastapi.concurrency import run_in_threadpool

from service.adapters.engine import InferenceEngine
from service.domain.answers import ImageAnswer
from service.domain.errors import InvalidRequestError
from service.doors.http.deps import PredictorDep, ReadyEngineDep, ServicesDep
from service.doors.http.errors import error_responses
from service.doors.http.routes.upload import read_file_part, store_upload
from service.doors.http.schemas import (
    OPERATING_POINT_PATTERN,
    ModelRef,
    PredictionResponse,
    PredictRequest,
    applied_point,
)

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
    return _response(body.filename, answer, engine)


@router.post(
    "/predict/image",
    response_model=PredictionResponse,
    summary="Classify an image sent in the request (one round trip)",
    responses=error_responses(400, 413, 415, 422, 429, 503, 507),
)
async def predict_image(
    services: ServicesDep,
    engine: ReadyEngineDep,
    predictor: PredictorDep,
    request: Request,
    file: Annotated[UploadFile, File(description="PNG, JPEG, WebP or DICOM; detected by content.")],
    store: Annotated[
        bool,
        Query(description="Also store it as /upload does: the answer names it, heat map allowed."),
    ] = False,
    heatmap: Annotated[bool, Query(description="Also prepare the heat map (needs store).")] = False,
    operating_point: Annotated[
        str | None,
        Query(pattern=OPERATING_POINT_PATTERN, description="Decide at this operating point."),
    ] = None,
) -> PredictionResponse:
    """The answer ``/predict`` gives, for an image in this request: one round trip, as
    LitServe's clients do. By default **nothing is kept**: the image is decoded under the
    upload limits and the eligibility gate, answered and dropped (``filename`` null). With
    ``store=true`` it is stored as ``/upload`` stores it, and the answer names it (for
    ``/predict/study`` and the heat map, ``heatmap=true``). Every error is the one
    ``/upload`` or ``/predict`` gives.
    """
    predictor.rules.operating_point(operating_point)  # an unknown one costs nothing
    if heatmap and not store:
        raise InvalidRequestError(
            "heatmap=true needs store=true: a heat map is kept with its image"
        )
    data = await read_file_part(services, request, file)
    if not store:
        answer, intake = await predictor.image_bytes(data, operating_point=operating_point)
        response = _response(None, answer, engine)
        response.warnings = [*intake.warnings, *response.warnings]
        return response
    stored, _ = await run_in_threadpool(store_upload, services, data)
    answer = await predictor.image(
        stored.filename, heatmap=heatmap, operating_point=operating_point
    )
    response = _response(stored.filename, answer, engine)
    response.warnings = [*stored.warnings, *response.warnings]
    return response


def _response(
    filename: str | None, answer: ImageAnswer, engine: InferenceEngine
) -> PredictionResponse:
    prediction = answer.prediction
    return PredictionResponse(
        filename=filename,
        body_part=prediction.bone_type,
        result=prediction.result,
        body_part_probabilities=prediction.bone_type_probabilities,
        bone_type=prediction.bone_type,
        bone_type_probabilities=prediction.bone_type_probabilities,
        abnormality_probability=prediction.abnormality_probability,
        threshold=prediction.threshold,
        operating_point=applied_point(prediction.operating_point, answer.point, "image"),
        content_score=prediction.content_score,
        model=ModelRef(name=engine.model_name, version=engine.model_version),
        heatmap_url=answer.heatmap_url,
        warnings=answer.warnings,
    )
