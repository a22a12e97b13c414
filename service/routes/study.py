"""POST /predict/study: one answer for the views of one study, by MURA's rule.

The study's body part comes from the router probabilities summed over its views (or the
client's ``bone_type``); every view is then scored by that part's model and the study's
P(abnormal) is their mean, decided at the part's *study* operating point. The rule lives in
:mod:`bonexr.study`, shared with the training evaluation.
"""

from __future__ import annotations

import asyncio

import numpy as np
from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool

from bonexr.labels import result_name
from bonexr.study import route_study, study_probability
from service.deps import Services, ServicesDep
from service.engine import Prediction
from service.errors import (
    InvalidStudyError,
    NotReadyError,
    UploadNotFoundError,
    error_responses,
)
from service.routes.predict import (
    body_part_warnings,
    load_pixels,
    no_model_error,
    prediction_warnings,
)
from service.schemas import ModelRef, StudyRequest, StudyResponse, StudyView

router = APIRouter(tags=["predict"])


def _study_part(services: Services, body: StudyRequest) -> str | None:
    """The client's body part in the bundle's spelling (None: let the router decide)."""
    if body.bone_type is None:
        return None
    parts = list(services.engine.manifest.parts) if services.engine.manifest else []
    for part in parts:
        if part.lower() == body.bone_type.strip().lower():
            return part
    raise InvalidStudyError(
        f"no abnormality model for '{body.bone_type[:40]}' in this bundle; it has "
        f"{', '.join(parts)}"
    )


async def _load_all(services: Services, names: list[str], size: int) -> list[np.ndarray]:
    """Prepared pixels of every view; one 404 naming every unknown view."""

    async def one(name: str) -> np.ndarray | None:
        try:
            return await run_in_threadpool(load_pixels, services, name, size)
        except UploadNotFoundError:
            return None

    loaded = await asyncio.gather(*(one(name) for name in names))
    missing = [name for name, pixels in zip(names, loaded, strict=True) if pixels is None]
    if missing:
        raise UploadNotFoundError(f"no upload with filename: {', '.join(missing)}")
    return [pixels for pixels in loaded if pixels is not None]


def _mixed_parts(
    names: list[str], routed: list[Prediction], study_part: str, floor: float
) -> list[str]:
    """Views the router confidently places in another part than the study's."""
    return [
        f"{name} -> {p.bone_type} ({p.router_confidence:.2f})"
        for name, p in zip(names, routed, strict=True)
        if p.bone_type != study_part and p.router_confidence >= floor
    ]


@router.post(
    "/predict/study",
    response_model=StudyResponse,
    summary="Classify a study (several views)",
    responses=error_responses(400, 404, 413, 422, 503),
)
async def predict_study(body: StudyRequest, services: ServicesDep) -> StudyResponse:
    """Route the study to one body part, score every view with that part's model, and
    decide the mean at the part's study operating point (MURA's rule).

    422 when views route to different body parts with confidence (unless ``bone_type`` is
    given), when too many views are named, or for an unknown ``bone_type``; 404 names every
    unknown filename.
    """
    engine, settings = services.engine, services.settings
    if not engine.ready or engine.manifest is None:
        raise NotReadyError(engine.not_ready_reason())
    names = list(dict.fromkeys(body.filenames))
    if len(names) > settings.max_study_views:
        raise InvalidStudyError(
            f"a study may have at most {settings.max_study_views} views; got {len(names)}"
        )
    forced = _study_part(services, body)
    with engine.incoming():
        pixels = await _load_all(services, names, engine.input_size)
    first = await asyncio.gather(*(engine.predict(p, forced) for p in pixels))
    study_part = forced or route_study([p.bone_type_probabilities for p in first])
    if study_part not in engine.manifest.parts:
        mean_confidence = float(np.mean([p.bone_type_probabilities[study_part] for p in first]))
        raise no_model_error(services, study_part, mean_confidence)
    if forced is None:
        mixed = _mixed_parts(names, first, study_part, settings.router_confidence_floor)
        if mixed:
            raise InvalidStudyError(
                f"the views route to different body parts (study: {study_part}): "
                f'{"; ".join(mixed)}. Send "bone_type" to score them all with one part\'s '
                "model."
            )
    # views the router placed elsewhere (unsure) are scored again by the study part's model
    views = list(
        await asyncio.gather(
            *(
                engine.predict(px, study_part) if p.scored_by != study_part else _done(p)
                for px, p in zip(pixels, first, strict=True)
            )
        )
    )
    probability = study_probability([v.abnormality_probability for v in views])
    threshold = float(engine.manifest.parts[study_part].threshold)
    warnings = _study_warnings(services, names, body, views, study_part, forced)
    classes = list(engine.manifest.router.classes)
    return StudyResponse(
        bone_type=study_part,
        bone_type_source="client" if forced else "router",
        bone_type_probabilities={
            c: float(np.mean([v.bone_type_probabilities[c] for v in views])) for c in classes
        },
        abnormality_probability=probability,
        threshold=threshold,
        result=result_name(probability >= threshold),
        views=[
            StudyView(
                filename=name,
                bone_type=v.bone_type,
                bone_type_probabilities=v.bone_type_probabilities,
                abnormality_probability=v.abnormality_probability,
                threshold=v.threshold,
                result=v.result,
            )
            for name, v in zip(names, views, strict=True)
        ],
        model=ModelRef(name=engine.model_name, version=engine.model_version),
        warnings=warnings,
    )


async def _done(prediction: Prediction) -> Prediction:
    return prediction


def _study_warnings(
    services: Services,
    names: list[str],
    body: StudyRequest,
    views: list[Prediction],
    study_part: str,
    forced: str | None,
) -> list[str]:
    found: list[str] = []
    if len(names) < len(body.filenames):
        found.append("duplicate filenames were counted once")
    if forced:
        found.append(f"every view was scored by the {forced} model, as the request asked")
    unsure = [
        f"{name} ({v.bone_type} {v.router_confidence:.2f})"
        for name, v in zip(names, views, strict=True)
        if v.bone_type != study_part
    ]
    if unsure and not forced:
        found.append(
            f"router placed some views elsewhere without confidence; they were scored as "
            f"{study_part}: {', '.join(unsure)}"
        )
    for message in prediction_warnings(services, views[0]):
        if "router is unsure" not in message:  # per-view unsureness is reported above
            found.append(message)
    found.extend(body_part_warnings(services, names, study_part))
    return found
