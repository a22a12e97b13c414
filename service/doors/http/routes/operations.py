"""/health, /ready and /metrics: for orchestrators and monitoring (never behind an API key).

``HEAD`` is answered on the probes too: some load balancers probe with it.
"""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.doors.http.deps import DicomNodeDep, ServicesDep
from service.doors.http.errors import error_body, error_responses
from service.doors.http.schemas import (
    DicomDestinationStatus,
    DicomNodeStatus,
    HealthResponse,
    ModelRef,
    ReadyResponse,
)
from service.triage.migration import migrate

router = APIRouter(tags=["operations"])


@router.head("/health", include_in_schema=False, response_model=None)
@router.get("/health", response_model=HealthResponse, summary="Liveness")
async def health() -> HealthResponse:
    """200 whenever the process serves HTTP, whatever the model's state."""
    return HealthResponse()


@router.head("/ready", include_in_schema=False, response_model=None)
@router.get(
    "/ready",
    response_model=ReadyResponse,
    summary="Readiness",
    responses=error_responses(503),
)
async def ready(services: ServicesDep, node: DicomNodeDep) -> ReadyResponse | JSONResponse:
    """200 once the bundle is loaded, verified and warmed, the upload store and the records
    database are writable and the DICOM listener (when configured) listens; 503 with the
    reason otherwise.

    A result destination that is down does not make the service unready (its results wait
    on disk and are retried); ``dicom.destinations`` shows it, with what is pending."""
    engine = services.engine
    if not engine.ready:
        return JSONResponse(error_body(engine.not_ready_reason()), status_code=503)
    store_problem = await run_in_threadpool(services.store.problem)
    if store_problem:
        return JSONResponse(error_body(store_problem), status_code=503)
    if not await migrate(services):
        problem = await run_in_threadpool(services.database.problem)
        reason = problem or f"records database {services.database.label} is not migrated"
        return JSONResponse(error_body(reason), status_code=503)
    database_problem = await run_in_threadpool(services.database.problem)
    if database_problem:
        return JSONResponse(error_body(database_problem), status_code=503)
    node_problem = node.problem()
    if node_problem:
        return JSONResponse(error_body(node_problem), status_code=503)
    destinations = await run_in_threadpool(node.destinations)
    return ReadyResponse(
        dicom=DicomNodeStatus(
            listener=node.listener(),
            destinations=[
                DicomDestinationStatus(
                    name="dicom" if d.name == "dicom" else "dicomweb",
                    target=d.target,
                    pending=d.pending,
                    failed=d.failed,
                    last_error=d.last_error,
                )
                for d in destinations
            ],
        ),
        model=ModelRef(name=engine.model_name, version=engine.model_version),
        providers=engine.providers,
        runtime=engine.runtime.describe(),
        warnings=engine.bundle_warnings,
    )


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}}},
)
async def metrics(services: ServicesDep) -> Response:
    """Request, queue, batch, inference and upload metrics in Prometheus text format."""
    payload = await run_in_threadpool(generate_latest, services.metrics.registry)
    return Response(payload, media_type=CONTENT_TYPE_LATEST)
