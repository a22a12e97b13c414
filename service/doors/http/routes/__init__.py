"""The HTTP API, one router per area, assembled the way FastAPI's full-stack template does.

``upload`` (POST /upload, DELETE /uploads/{filename}), ``predict`` (POST /predict),
``study`` (POST /predict/study), ``heatmap`` (GET /heatmap/{filename}),
``model`` (GET /model, GET /rules), ``dicomweb`` (POST /dicom-web/studies, STOW-RS),
``worklist`` (GET /worklist, GET /worklist/{id}, POST /worklist/{id}/review, DELETE
/worklist/{id}, GET /worklist/export.csv), ``audit`` (GET /audit) and ``operations``
(/health, /ready, /metrics). Routes stay thin: validate, hand work to storage / imaging /
engine, shape the response.

Authentication is applied here, where the routers are included: when API keys are
configured, every router but ``operations`` carries the API-key security dependency (it
documents the scheme and the 401 in OpenAPI; :class:`service.doors.http.security.ApiKeyMiddleware`
enforces it before any body byte is read). Probes and metrics stay open for orchestrators.
"""

from __future__ import annotations

from fastapi import APIRouter, Security

from service.doors.http.errors import error_responses
from service.doors.http.routes import (
    audit,
    dicomweb,
    heatmap,
    model,
    operations,
    page,
    predict,
    samples,
    study,
    upload,
    worklist,
)
from service.doors.http.security import api_key_scheme

PROTECTED = (
    upload.router,
    predict.router,
    study.router,
    heatmap.router,
    model.router,
    dicomweb.router,
    worklist.router,
    audit.router,
    samples.router,
)


def api_router(*, auth_enabled: bool) -> APIRouter:
    """Every route of the service, with the API-key scheme on the protected ones."""
    api = APIRouter()
    for router in PROTECTED:
        if auth_enabled:
            api.include_router(
                router, dependencies=[Security(api_key_scheme)], responses=error_responses(401)
            )
        else:
            api.include_router(router)
    api.include_router(operations.router)
    api.include_router(page.router)
    return api
