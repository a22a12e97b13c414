"""GET /audit: the append-only access trail, for the keys named in ``BONEXR_ADMIN_KEYS``.

There is deliberately no route that changes or removes an event."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool

from service.domain.errors import ForbiddenError
from service.doors.http.deps import ServicesDep
from service.doors.http.errors import error_responses
from service.doors.http.routes.worklist import audited
from service.doors.http.schemas import AuditItem, AuditPageResponse
from service.doors.http.security import key_name

router = APIRouter(tags=["worklist"])


@router.get(
    "/audit",
    response_model=AuditPageResponse,
    summary="Who accessed which study (admin keys)",
    responses=error_responses(400, 403, 422, 503),
)
async def audit(
    services: ServicesDep,
    request: Request,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[str | None, Query(max_length=32, description="next_cursor.")] = None,
) -> AuditPageResponse:
    """Newest first: key name, action, study id, time (UTC), outcome. Never image bytes or
    patient identifiers."""
    who = key_name(request.scope)
    if who not in services.settings.admin_key_names():
        await audited(services, request, "audit", None, "403")
        raise ForbiddenError(
            "GET /audit is for the keys named in BONEXR_ADMIN_KEYS"
            + ("" if services.settings.api_keys else " (and this service has no API keys)")
        )
    page = await run_in_threadpool(services.audit.page, limit, cursor)
    await audited(services, request, "audit", None, "ok")
    return AuditPageResponse(
        items=[
            AuditItem(
                at=f"{e.at.isoformat()}Z",
                key_name=e.key_name,
                action=e.action,
                study_id=e.study_id,
                outcome=e.outcome,
            )
            for e in page.events
        ],
        next_cursor=page.next_cursor,
    )
