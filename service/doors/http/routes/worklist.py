"""The triage worklist: recorded studies in triage order, the reader's verdict, the export.

Every study ``POST /predict/study`` or the DICOM node answered is recorded
(:mod:`service.adapters.records`).
Every access here is audited with the key's name (``GET /audit``).
"""

from __future__ import annotations

import contextlib
import csv
import functools
import io
from typing import Annotated

from fastapi import APIRouter, Path, Query, Request, Response
from fastapi.concurrency import run_in_threadpool

from service.adapters.records.schema import Study
from service.adapters.records.worklist import Status
from service.domain.errors import ForbiddenError, TriageError
from service.doors.csv_cells import escape_cell
from service.doors.http.deps import DicomNodeDep, ServicesDep
from service.doors.http.errors import error_responses, status_for
from service.doors.http.schemas import (
    Identity,
    ModelRef,
    ReaderReview,
    ReviewRequest,
    WorklistCounts,
    WorklistItem,
    WorklistPage,
    WorklistStudy,
    WorklistVersion,
    WorklistView,
)
from service.doors.http.security import key_name, may_administer
from service.triage.services import Services

router = APIRouter(tags=["worklist"])

ID_PATTERN = r"^[0-9a-f]{32}$"
StudyId = Annotated[str, Path(pattern=ID_PATTERN, description="From GET /worklist.")]
EXPORT_COLUMNS = (
    "study_id", "arrived_at", "source", "body_part", "bundle", "bundle_version",
    "operating_point", "abnormality_probability", "threshold", "result",
    "reader", "reader_result", "reviewed_at", "note", "review_id", "amends", "replaced_by",
    "model_probability", "model_threshold", "model_result",  # deprecated, until 0.8.0
)  # fmt: skip


def _iso(value: object) -> str:
    return f"{value.isoformat()}Z" if hasattr(value, "isoformat") else str(value)


def _result(value: str | None) -> str | None:
    return value if value in ("abnormal", "normal") else None


def _common(study: Study) -> dict[str, object]:
    return {
        "id": study.id,
        "arrived_at": _iso(study.arrived_at),
        "source": study.source,
        "body_part": study.body_part,
        "result": _result(study.result),
        "abnormality_probability": study.probability,
        "threshold": study.threshold,
        "operating_point": study.operating_point,
        "status": study.status,
        "refusal": study.refusal,
        "model": ModelRef(name=study.bundle_name, version=study.bundle_version),
        "replaces": study.replaces,
        "superseded_by": study.superseded_by,
    }


def item(study: Study) -> WorklistItem:
    return WorklistItem.model_validate(
        {
            **_common(study),
            "views": len(study.views),
            "refused_views": sum(v.refused for v in study.views),
            "reviews": sum(r.replaced_by is None for r in study.reviews),  # amended: once
        }
    )


def whole(study: Study) -> WorklistStudy:
    return WorklistStudy.model_validate(
        {
            **_common(study),
            "views": [
                WorklistView(
                    position=v.position,
                    filename=v.filename,
                    sop_instance_uid=v.sop_instance_uid,
                    abnormality_probability=v.probability,
                    threshold=v.threshold,
                    result=_result(v.result),
                    refused=v.refused,
                    reason=v.reason,
                    name=v.label,
                    heatmap_url=f"/heatmap/{v.filename}" if v.filename and not v.refused else None,
                )
                for v in study.views
            ],
            "reviews": [
                ReaderReview(
                    id=r.id,
                    reader=r.reader,
                    reader_result=r.reader_result,
                    note=r.note,
                    at=_iso(r.created_at),
                    amends=r.amends,
                    replaced_by=r.replaced_by,
                )
                for r in study.reviews
            ],
            "warnings": list(study.warnings or []),
        }
    )


async def audited(
    services: Services, request: Request, action: str, study_id: str | None, outcome: str
) -> None:
    """Append the access to the audit trail (before the answer leaves: an access that
    cannot be audited is not served)."""
    await run_in_threadpool(services.audit.add, key_name(request.scope), action, study_id, outcome)


async def refused(
    services: Services, request: Request, action: str, study_id: str, error: TriageError
) -> None:
    """Audit a refused access with its status (an audit failure then must not hide the
    refusal's own error)."""
    with contextlib.suppress(TriageError):
        await audited(services, request, action, study_id, str(status_for(error)))


@router.get(
    "/worklist",
    response_model=WorklistPage,
    summary="Recorded studies in triage order",
    responses=error_responses(400, 422, 503),
)
async def worklist(
    services: ServicesDep,
    request: Request,
    status: Annotated[Status, Query(description="unread, reviewed or all.")] = "all",
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=512, description="next_cursor.")] = None,
) -> WorklistPage:
    """The model's abnormal studies first, then normal, then those without a finding;
    each group by descending calibrated probability, ties by arrival."""
    page = await run_in_threadpool(services.records.page, status, limit, cursor)
    await audited(services, request, "list", None, "ok")
    return WorklistPage(
        items=[item(s) for s in page.studies],
        next_cursor=page.next_cursor,
        counts=WorklistCounts(**page.counts),
    )


@router.get(
    "/worklist/changes",
    response_model=WorklistVersion,
    summary="Whether the worklist changed (for polling)",
    responses=error_responses(503),
)
async def changes(services: ServicesDep) -> WorklistVersion:
    """A token that changes whenever a study is recorded, reviewed or removed, and the
    counts. It shows no study, so it is not audited: a page polls it and fetches the list
    (an audited access) only when the token moves."""
    token, counts = await run_in_threadpool(services.records.version)
    return WorklistVersion(version=token, counts=WorklistCounts(**counts))


@router.get(
    "/whoami",
    response_model=Identity,
    summary="Who this API key is",
)
async def whoami(services: ServicesDep, request: Request) -> Identity:
    """The key's name (the reader the worklist records) and whether it may read the audit."""
    name = key_name(request.scope)
    return Identity(name=name, admin=name in services.settings.admin_key_names())


@router.get(
    "/worklist/export.csv",
    response_class=Response,
    summary="Reviewed studies, model and reader verdicts (CSV)",
    responses={200: {"content": {"text/csv": {}}}, **error_responses(503)},
)
async def export(services: ServicesDep, request: Request) -> Response:
    """One row per review: the study's model verdict beside the reader's."""

    def render() -> str:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=EXPORT_COLUMNS)
        writer.writeheader()
        for row in services.records.reviewed_rows():
            writer.writerow({key: escape_cell(value) for key, value in row.items()})
        return buffer.getvalue()

    body = await run_in_threadpool(render)
    await audited(services, request, "export", None, "ok")
    return Response(
        body,
        media_type="text/csv",
        headers={"Content-Disposition": 'attachment; filename="bonexr-reviews.csv"'},
    )


@router.get(
    "/worklist/{study_id}",
    response_model=WorklistStudy,
    summary="One recorded study",
    responses=error_responses(404, 422, 503),
)
async def recorded_study(
    services: ServicesDep, request: Request, study_id: StudyId
) -> WorklistStudy:
    """The study with its per-view results, heat-map links and every reader's review."""
    try:
        study = await run_in_threadpool(services.records.get, study_id)
    except TriageError as exc:
        await refused(services, request, "view", study_id, exc)
        raise
    await audited(services, request, "view", study_id, "ok")
    return whole(study)


@router.post(
    "/worklist/{study_id}/review",
    response_model=WorklistStudy,
    summary="Record the reader's verdict",
    responses=error_responses(404, 422, 503),
)
async def review(
    services: ServicesDep, request: Request, study_id: StudyId, body: ReviewRequest
) -> WorklistStudy:
    """Adds the reader's verdict (the key's name is the reader) and marks the study
    reviewed; another reader's earlier review is kept beside it. With ``"amend": true``
    it corrects this reader's own current review: the earlier one is kept, marked
    ``replaced_by`` (audited as ``amend_review``); 404 when there is none to amend."""
    reader = key_name(request.scope)
    action = "amend_review" if body.amend else "review"
    try:
        study = await run_in_threadpool(
            functools.partial(
                services.records.review,
                study_id,
                reader,
                body.reader_result,
                body.note,
                amend=body.amend,
            )
        )
    except TriageError as exc:
        await refused(services, request, action, study_id, exc)
        raise
    services.metrics.reviews.labels(study.body_part or "none", body.reader_result).inc()
    await audited(services, request, action, study_id, "ok")
    return whole(study)


@router.delete(
    "/worklist/{study_id}",
    status_code=204,
    response_class=Response,
    summary="Delete a recorded study and its uploads (admin keys)",
    responses=error_responses(403, 404, 422, 503),
)
async def delete_study(
    services: ServicesDep, node: DicomNodeDep, request: Request, study_id: StudyId
) -> Response:
    """Removes the record, then its uploads (and their heat maps) that no other record
    names -- the guarantee of ``DELETE /uploads`` -- and, for a study the DICOM node
    received, the source instances it kept. With API keys, only an admin key
    (``BONEXR_ADMIN_KEYS``) may: 403 for a reader."""
    settings = services.settings
    if not may_administer(request.scope, settings.admin_key_names(), bool(settings.api_keys)):
        error = ForbiddenError("DELETE /worklist is for the keys named in BONEXR_ADMIN_KEYS")
        await refused(services, request, "delete", study_id, error)
        raise error
    try:
        study = await run_in_threadpool(services.records.get, study_id)
        sources = {v.sop_instance_uid for v in study.views if v.sop_instance_uid}
        orphans = await run_in_threadpool(services.records.delete, study_id)
    except TriageError as exc:
        await refused(services, request, "delete", study_id, exc)
        raise
    await run_in_threadpool(services.delete_uploads, orphans, "client")
    if sources:  # a study the DICOM node received: its kept source instances go too
        await run_in_threadpool(node.forget, sources)
    await audited(services, request, "delete", study_id, "ok")
    return Response(status_code=204)
