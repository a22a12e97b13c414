"""POST /upload and DELETE /uploads/{filename}: the upload store's HTTP face.

Decoding, re-encoding and storing run in the threadpool, bounded by ``decode_slots`` so a
burst of large uploads cannot exhaust memory; the event loop only moves bytes.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Path, Request, Response, UploadFile
from fastapi.concurrency import run_in_threadpool

from bonexr.imaging import encode_png, prepare_pixels
from service.domain.errors import DuplicateFieldError, PayloadTooLargeError, UploadNotFoundError
from service.domain.policy import screen_metadata
from service.doors.http.deps import ServicesDep
from service.doors.http.errors import error_responses
from service.doors.http.schemas import FILENAME_PATTERN, UploadResponse
from service.triage.services import Services

router = APIRouter(tags=["upload"])


def _ingest(services: Services, data: bytes) -> tuple[UploadResponse, bool]:
    """Decode (limits enforced), re-encode pixel-only PNG, store; runs in the threadpool."""
    engine = services.engine
    with services.decode_slot():
        decoded = services.decode(data)
        known = list(engine.manifest.router.classes) if engine.manifest is not None else None
        gate_warnings = screen_metadata(decoded, services.settings.eligibility, known)
        image = decoded.image
        png = encode_png(image)
        size = engine.input_size if engine.ready else None
        pixels = prepare_pixels(image, size) if size else None
    stored = services.store.save(png, body_part=decoded.body_part)
    if pixels is not None and size is not None:
        services.pixels.put(stored.filename, size, pixels)
    services.metrics.uploads.labels("new" if stored.created else "duplicate").inc()
    response = UploadResponse(
        filename=stored.filename,
        width=image.width,
        height=image.height,
        format=decoded.format,
        bytes=len(data),
        stored_bytes=stored.size,
        body_part_examined=decoded.body_part,
        warnings=[*decoded.warnings, *gate_warnings],
    )
    return response, stored.created


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
    if len((await request.form()).getlist("file")) > 1:  # the form FastAPI already parsed
        raise DuplicateFieldError("send exactly one 'file' field per upload")
    limit = services.settings.max_upload_bytes
    data = await file.read(limit + 1)
    if len(data) > limit:
        raise PayloadTooLargeError(f"file is larger than the limit of {limit:,} bytes")
    result, created = await run_in_threadpool(_ingest, services, data)
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
    filename: Annotated[str, Path(pattern=FILENAME_PATTERN, description="From /upload.")],
) -> Response:
    """Remove a stored upload (patient data) before its retention period ends."""
    services.pixels.discard(filename)
    if not await run_in_threadpool(services.store.delete, filename):
        raise UploadNotFoundError("no upload with that filename")
    services.metrics.uploads_deleted.labels("client").inc()
    return Response(status_code=204)
