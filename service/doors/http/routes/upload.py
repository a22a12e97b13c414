"""POST /upload and DELETE /uploads/{filename}: the upload store's HTTP face.

Decoding, re-encoding and storing run in the threadpool, bounded by ``decode_slots`` so a
burst of large uploads cannot exhaust memory; the event loop only moves bytes.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Path, Request, Response, UploadFile
from fastapi.concurrency import run_in_threadpool

from service.domain.errors import DuplicateFieldError, PayloadTooLargeError, UploadNotFoundError
from service.domain.rules import AnswerRules
from service.doors.http.deps import ServicesDep
from service.doors.http.errors import error_responses
from service.doors.http.routes.worklist import audited
from service.doors.http.schemas import FILENAME_PATTERN, UploadResponse
from service.triage.ingest import ingest
from service.triage.services import Services

router = APIRouter(tags=["upload"])


async def read_file_part(services: Services, request: Request, file: UploadFile) -> bytes:
    """The one ``file`` part's bytes, held to ``BONEXR_MAX_UPLOAD_BYTES`` exactly (the
    body limit middleware already bounded the whole request)."""
    if len((await request.form()).getlist("file")) > 1:  # the form FastAPI already parsed
        raise DuplicateFieldError("send exactly one 'file' field per upload")
    limit = services.settings.max_upload_bytes
    data = await file.read(limit + 1)
    if len(data) > limit:
        raise PayloadTooLargeError(f"file is larger than the limit of {limit:,} bytes")
    return data


def store_upload(services: Services, data: bytes) -> tuple[UploadResponse, bool]:
    """The one ingest path (:func:`service.triage.ingest.ingest`), as ``/upload`` answers."""
    ingested = ingest(services, data, provenance="upload")
    if ingested.refusal is not None:
        raise AnswerRules.refusal_error([ingested.refusal], 1)
    assert ingested.filename is not None
    decoded = ingested.intake.decoded
    response = UploadResponse(
        filename=ingested.filename,
        width=decoded.image.width,
        height=decoded.image.height,
        format=decoded.format,
        bytes=len(data),
        stored_bytes=ingested.stored_bytes,
        body_part_examined=decoded.body_part,
        warnings=list(ingested.intake.warnings),
    )
    return response, ingested.created


@router.post(
    "/upload",
    status_code=201,
    response_model=UploadResponse,
    summary="Upload an image",
    responses={
        201: {"description": "Stored now."},
        200: {"model": UploadResponse, "description": "Identical image already stored."},
        **error_responses(400, 413, 415, 422, 503, 507),
    },
)
async def upload(
    services: ServicesDep,
    request: Request,
    response: Response,
    file: Annotated[UploadFile, File(description="PNG, JPEG, WebP or DICOM; detected by content.")],
) -> UploadResponse:
    """Store a radiograph as a pixel-only grayscale PNG named by its sha256.

    201 when the image was stored now, 200 when identical pixels were already stored
    (same name). The client's file name and all metadata (EXIF, text chunks) are dropped;
    of a DICOM header only ``BodyPartExamined`` is reported (not stored).
    """
    data = await read_file_part(services, request, file)
    result, created = await run_in_threadpool(store_upload, services, data)
    response.status_code = 201 if created else 200
    return result


@router.delete(
    "/uploads/{filename}",
    status_code=204,
    response_class=Response,
    summary="Delete an upload",
    responses=error_responses(404, 422),
)
async def delete_upload(
    services: ServicesDep,
    request: Request,
    filename: Annotated[str, Path(pattern=FILENAME_PATTERN, description="From /upload.")],
) -> Response:
    """Remove a stored upload (patient data) before its retention period ends. Audited
    (``delete_upload``, by the key's name): a recorded study may show this image."""
    services.pixels.discard(filename)
    if not await run_in_threadpool(services.store.delete, filename):
        await audited(services, request, "delete_upload", None, "404")
        raise UploadNotFoundError("no upload with that filename")
    services.metrics.uploads_deleted.labels("client").inc()
    await audited(services, request, "delete_upload", None, "ok")
    return Response(status_code=204)
