"""POST /predict: route an uploaded image to its body part and score abnormality."""

from __future__ import annotations

import numpy as np
from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool

from bonexr.errors import ConfigError
from bonexr.imaging import prepare_pixels
from bonexr.labels import display_name, normalize_body_part
from service.deps import Services, ServicesDep
from service.engine import Prediction
from service.errors import NoPartModelError, NotReadyError, error_responses
from service.heatmaps import save_cam
from service.schemas import ModelRef, PredictionResponse, PredictRequest

router = APIRouter(tags=["predict"])


def load_pixels(services: Services, filename: str, size: int) -> np.ndarray:
    """Prepared pixels of a stored upload: from the cache, else decoded from the store."""
    cached = services.pixels.get(filename, size)
    if cached is not None and services.store.exists(filename):
        return cached
    data = services.store.read(filename)
    with services.decode_slot():
        pixels = prepare_pixels(services.decode(data).image, size)
    services.pixels.put(filename, size, pixels)
    return pixels


def no_model_error(services: Services, part: str, confidence: float) -> NoPartModelError:
    """422 for a body part the router knows but the bundle has no abnormality model for:
    the router's answer, never another part's verdict."""
    floor = services.settings.router_confidence_floor
    unsure = (
        f" (router confidence {confidence:.2f} is below the floor {floor:.2f}: check the image)"
        if confidence < floor
        else ""
    )
    return NoPartModelError(
        f"no abnormality model for {part} in bundle '{services.engine.model_name}'{unsure}",
        bone_type=part,
    )


def body_part_warnings(services: Services, filenames: list[str], bone_type: str) -> list[str]:
    """A warning per view whose DICOM BodyPartExamined disagrees with the router."""
    found = []
    for filename in filenames:
        examined = services.store.body_part(filename)
        if not examined:
            continue
        try:
            named = display_name(normalize_body_part(examined))
        except ConfigError:
            named = None
        if named != bone_type:
            found.append(
                f"{filename}: the DICOM header says BodyPartExamined {examined}; "
                f"the router says {bone_type}"
            )
    return found


def prediction_warnings(services: Services, prediction: Prediction) -> list[str]:
    """What a reader must know about this answer (unsure router, demo model)."""
    settings, engine = services.settings, services.engine
    found: list[str] = []
    floor = settings.router_confidence_floor
    if prediction.router_confidence < floor:
        parts = ", ".join(prediction.bone_type_probabilities)
        found.append(
            f"router is unsure of the body part: {prediction.router_confidence:.2f} for "
            f"{prediction.bone_type} is below the confidence floor {floor:.2f}. Check that the "
            f"image is a radiograph of one of: {parts}."
        )
    found.extend(engine.threshold_warnings)
    if engine.manifest is not None and engine.manifest.synthetic:
        found.append(
            f"model '{engine.model_name}' is a demo trained on synthetic images: "
            "not for clinical use."
        )
    return found


@router.post(
    "/predict",
    response_model=PredictionResponse,
    summary="Classify an uploaded image",
    responses=error_responses(400, 404, 413, 422, 503),
)
async def predict(body: PredictRequest, services: ServicesDep) -> PredictionResponse:
    """Route the image to a body part, then score abnormality with that part's model."""
    engine = services.engine
    if not engine.ready:
        raise NotReadyError(engine.not_ready_reason())
    with engine.incoming():  # lets the batcher wait for this request while it decodes
        pixels = await run_in_threadpool(load_pixels, services, body.filename, engine.input_size)
    prediction = await engine.predict(pixels)
    if not prediction.has_verdict:
        raise no_model_error(services, prediction.bone_type, prediction.router_confidence)
    heatmap_url = None
    extra: list[str] = []
    if body.heatmap and prediction.cam is not None:
        await run_in_threadpool(
            save_cam, services, body.filename, prediction.scored_by, prediction.cam
        )
        heatmap_url = f"/heatmap/{body.filename}"
    elif body.heatmap:
        extra.append(f"bundle '{engine.model_name}' has no heat maps")
    return PredictionResponse(
        filename=body.filename,
        bone_type=prediction.bone_type,
        result=prediction.result,
        bone_type_probabilities=prediction.bone_type_probabilities,
        abnormality_probability=prediction.abnormality_probability,
        threshold=prediction.threshold,
        model=ModelRef(name=engine.model_name, version=engine.model_version),
        heatmap_url=heatmap_url,
        warnings=[
            *prediction_warnings(services, prediction),
            *body_part_warnings(services, [body.filename], prediction.bone_type),
            *extra,
        ],
    )
