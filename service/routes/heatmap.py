"""GET /heatmap/{filename}: where the model looked, drawn on the stored image."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query, Response
from fastapi.concurrency import run_in_threadpool

from service.deps import ServicesDep
from service.errors import HeatmapUnavailableError, NotReadyError, error_responses
from service.heatmaps import load_cam, render, save_cam
from service.routes.predict import load_pixels, no_model_error
from service.schemas import FILENAME_PATTERN

router = APIRouter(tags=["predict"])


@router.get(
    "/heatmap/{filename}",
    response_class=Response,
    summary="Heat map of an upload",
    responses={
        200: {
            "content": {"image/png": {"schema": {"type": "string", "format": "binary"}}},
            "description": "PNG; the header X-Bonexr-Body-Part names the part whose model "
            "the map explains.",
        },
        **error_responses(404, 422, 503),
    },
)
async def heatmap(
    services: ServicesDep,
    filename: Annotated[str, Path(pattern=FILENAME_PATTERN, description="From /upload.")],
    opacity: Annotated[
        float, Query(ge=0.0, le=1.0, description="Colour weight at the hottest point.")
    ] = 0.5,
    format: Annotated[
        Literal["overlay", "raw"],
        Query(description="overlay: the image with the map; raw: the map as 16-bit gray."),
    ] = "overlay",
) -> Response:
    """The class activation map of the routed part's model, mapped back through the
    letterbox onto the stored image (same size as the upload). Computed once per image and
    bundle version, then cached with the upload (and deleted with it)."""
    engine = services.engine
    if not engine.ready or engine.manifest is None:
        raise NotReadyError(engine.not_ready_reason())
    size = engine.input_size
    cached = load_cam(services, filename)
    if cached is None:
        with engine.incoming():
            pixels = await run_in_threadpool(load_pixels, services, filename, size)
        prediction = await engine.predict(pixels)
        if not prediction.has_verdict:
            raise no_model_error(services, prediction.bone_type, prediction.router_confidence)
        if prediction.cam is None:
            raise HeatmapUnavailableError(
                f"bundle '{engine.model_name}' has no heat maps (exported before they existed)"
            )
        part, cam = prediction.scored_by, prediction.cam
        await run_in_threadpool(save_cam, services, filename, part, cam)
    else:
        part, cam = cached.part, cached.cam
    png = await run_in_threadpool(services.store.read, filename)
    body = await run_in_threadpool(render, png, cam, size, opacity=opacity, raw=format == "raw")
    return Response(
        body,
        media_type="image/png",
        headers={"X-Bonexr-Body-Part": part, "Cache-Control": "private, no-store"},
    )
