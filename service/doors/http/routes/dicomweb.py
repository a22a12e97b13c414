"""POST /dicom-web/studies: STOW-RS, the DICOMweb way a PACS sends a study to the node.

The body is ``multipart/related; type="application/dicom"`` (PS3.18 10.5). Every part is
checked before any is stored (:mod:`service.doors.dicom.stow`: 400 malformed, 415 not DICOM,
413 too large); each instance then goes through the node like a C-STORE one. The answer is
the standard STOW-RS response (``application/dicom+json``): the instances taken in
ReferencedSOPSequence, those not taken in FailedSOPSequence with a FailureReason; 200 when
all were taken, 202 when some were, 409 when none was. Taking an instance is not answering
it: the study is answered once it has settled, and the results go to the configured
destination.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from service.doors.dicom.instances import InstanceRejected
from service.doors.dicom.stow import read_parts
from service.doors.http.deps import DicomNodeDep
from service.doors.http.errors import error_responses

router = APIRouter(tags=["dicom"])

UID_PATTERN = r"^[0-9]+(\.[0-9]+)*$"
DICOM_JSON = "application/dicom+json"


def _element(vr: str, *values: Any) -> dict[str, Any]:
    return {"vr": vr, "Value": list(values)}


def _referenced(sop_class: str, sop_uid: str) -> dict[str, Any]:
    return {"00081150": _element("UI", sop_class), "00081155": _element("UI", sop_uid)}


async def _store(request: Request, node: DicomNodeDep, study_uid: str | None) -> JSONResponse:
    settings = node.services.settings
    body = await read_parts(
        request.stream(),
        request.headers.get("content-type"),
        max_part_bytes=settings.max_upload_bytes,
    )
    taken: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    try:
        for data in body.instances():
            try:
                instance = await run_in_threadpool(node.receive, data, "stow", study_uid)
            except InstanceRejected as exc:
                item = {"00081197": _element("US", exc.status)}
                if exc.sop_uid:
                    item["00081155"] = _element("UI", exc.sop_uid)
                failed.append(item)
                continue
            taken.append(_referenced(instance.sop_class_uid, instance.sop_uid))
    finally:
        body.close()
    payload: dict[str, Any] = {}
    if taken:
        payload["00081199"] = {"vr": "SQ", "Value": taken}
    if failed:
        payload["00081198"] = {"vr": "SQ", "Value": failed}
    status = 200 if not failed else 202 if taken else 409
    return JSONResponse(payload, status_code=status, media_type=DICOM_JSON)


STOW_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "Every instance was taken.", "content": {DICOM_JSON: {}}},
    202: {"description": "Some instances were taken (the others: FailedSOPSequence)."},
    409: {"description": "No instance was taken (each in FailedSOPSequence with a reason)."},
    **error_responses(400, 413, 415),
}


@router.post(
    "/dicom-web/studies",
    summary="Store instances (STOW-RS)",
    response_class=JSONResponse,
    responses=STOW_RESPONSES,
)
async def store_instances(request: Request, node: DicomNodeDep) -> JSONResponse:
    """Take DICOM instances of any studies; each study is answered once it has settled
    (``BONEXR_STUDY_SETTLE_S`` without a new instance) and the results are sent back into
    it (``BONEXR_RESULTS_DICOMWEB_URL`` / ``BONEXR_RESULTS_DICOM``)."""
    return await _store(request, node, None)


@router.post(
    "/dicom-web/studies/{study_uid}",
    summary="Store instances of one study (STOW-RS)",
    response_class=JSONResponse,
    responses=STOW_RESPONSES,
)
async def store_study_instances(
    request: Request,
    node: DicomNodeDep,
    study_uid: Annotated[str, Path(max_length=64, pattern=UID_PATTERN)],
) -> JSONResponse:
    """As ``POST /dicom-web/studies``, for instances of ``study_uid`` only: an instance of
    another study is not taken (FailureReason 0xA900)."""
    return await _store(request, node, study_uid)
