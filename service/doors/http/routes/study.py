"""POST /predict/study: one answer for the views of one study, by MURA's rule.

The study's body part comes from the router probabilities summed over its views (or the
client's ``body_part``); every view is then scored by that part's model and the study's
P(abnormal) is their mean, decided at the part's *study* operating point. The rule lives in
:mod:`bonexr.study` and :class:`service.triage.predictor.AnswerRules`, shared with ``bonexr
predict`` and the training evaluation.
"""

from __future__ import annotations

import time
from typing import Literal

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool

from bonexr.labels import RESULT_ABNORMAL
from service.doors.http.deps import PredictorDep, ReadyEngineDep, ServicesDep
from service.doors.http.errors import error_responses
from service.doors.http.schemas import (
    ModelRef,
    StudyRequest,
    StudyResponse,
    StudyView,
    applied_point,
)
from service.triage.recording import record_answer, study_entry
from service.triage.shadow import ShadowJob, ShadowRunner

router = APIRouter(tags=["predict"])


@router.post(
    "/predict/study",
    response_model=StudyResponse,
    summary="Classify a study (several views)",
    responses=error_responses(400, 404, 413, 422, 429, 503),
)
async def predict_study(
    request: Request,
    body: StudyRequest,
    engine: ReadyEngineDep,
    predictor: PredictorDep,
    services: ServicesDep,
) -> StudyResponse:
    """Route the study to one body part, score every view with that part's model, and
    decide the mean at the part's study operating point (MURA's rule).

    422 when views route to different body parts with confidence (unless ``body_part`` is
    given), when too many views are named, for an unknown ``body_part`` or
    ``operating_point``, or when views are not eligible (each named); 404 names every
    unknown filename. The answer is recorded in the worklist (``record_id``); a records
    database that cannot take it is a 503 naming it.
    """
    started = time.perf_counter()
    answer = await predictor.study(body.filenames, body.body_part, body.operating_point)
    live_ms = 1000 * (time.perf_counter() - started)
    labels = dict(reversed(list(zip(body.filenames, body.view_names or [], strict=False))))
    entry = study_entry(answer, engine.model_name, engine.model_version, labels)
    record_id = await run_in_threadpool(record_answer, services, entry)
    shadow: ShadowRunner | None = request.app.state.shadow
    if shadow is not None:  # after the live answer, never before it
        shadow.offer(ShadowJob(record_id, tuple(name for name, _ in answer.views), live_ms))
    source: Literal["router", "client"] = (
        "client" if answer.bone_type_source == "client" else "router"
    )
    return StudyResponse(
        record_id=record_id,
        body_part=answer.bone_type,
        body_part_source=source,
        body_part_probabilities=answer.bone_type_probabilities,
        bone_type=answer.bone_type,
        bone_type_source=source,
        bone_type_probabilities=answer.bone_type_probabilities,
        abnormality_probability=answer.abnormality_probability,
        threshold=answer.threshold,
        result="abnormal" if answer.result == RESULT_ABNORMAL else "normal",
        operating_point=applied_point(answer.operating_point, answer.point),
        views=[
            StudyView(
                filename=name,
                body_part=v.bone_type,
                body_part_probabilities=v.bone_type_probabilities,
                bone_type=v.bone_type,
                bone_type_probabilities=v.bone_type_probabilities,
                abnormality_probability=v.abnormality_probability,
                threshold=v.threshold,
                result=v.result,
                content_score=v.content_score,
            )
            for name, v in answer.views
        ],
        model=ModelRef(name=engine.model_name, version=engine.model_version),
        warnings=answer.warnings,
    )
