"""GET /heatmap/{filename}: where the model looked, drawn on the stored image."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query, Request, Response
from fastapi.concurrency import run_in_threadpool

from service.doors.http.deps import PredictorDep, ReadyEngineDep, ServicesDep
from service.doors.http.errors import error_responses
from service.doors.http.routes.worklist import audited
from service.doors.http.schemas import FILENAME_PATTERN

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
        **error_responses(404, 422, 429, 503),
    },
)
async def heatmap(
    engine: ReadyEngineDep,
    predictor: PredictorDep,
    services: ServicesDep,
    request: Request,
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
    part, body = await predictor.heatmap(filename, opacity=opacity, raw=format == "raw")
    studies = await run_in_threadpool(services.records.studies_with_upload, filename)
    for study_id in studies:  # a heat map of a recorded study's view is an access to it
        await audited(services, request, "heatmap", study_id, "ok")
    return Response(
        body,
        media_type="image/png",
        headers={"X-Bonexr-Body-Part": part, "Cache-Control": "private, no-store"},
    )
