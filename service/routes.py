"""HTTP routes. Thin: validate, hand work to storage / imaging / engine, shape the response.

Everything CPU-bound (decoding, re-encoding, resizing) runs in the threadpool, bounded by
``decode_slots`` so a burst of 50-megapixel uploads cannot exhaust memory; inference runs
on the engine's own thread. The event loop only moves bytes and awaits.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, File, Path, Request, Response, Security, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from bonexr.imaging import decode_image, encode_png, prepare_pixels, sniff_format
from service.engine import InferenceEngine, Prediction
from service.errors import NotReadyError, PayloadTooLargeError, UploadNotFoundError, error_body
from service.metrics import ServiceMetrics
from service.pixel_cache import PixelCache
from service.rules import build_rules, render_rules_png
from service.schemas import (
    FILENAME_PATTERN,
    ErrorResponse,
    HealthResponse,
    ModelInfo,
    ModelRef,
    PredictionResponse,
    PredictRequest,
    ReadyResponse,
    Rules,
    UploadResponse,
)
from service.security import api_key_scheme
from service.settings import Settings
from service.storage import UploadStore


@dataclass
class Services:
    """What the routes need, built once per app by :func:`service.app.create_app`."""

    settings: Settings
    store: UploadStore
    engine: InferenceEngine
    metrics: ServiceMetrics
    decode_slots: threading.BoundedSemaphore
    pixels: PixelCache


def get_services(request: Request) -> Services:
    return request.app.state.services


ServicesDep = Annotated[Services, Depends(get_services)]


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    text = {
        400: "Malformed request: the body is not what this endpoint takes.",
        401: "Missing or wrong X-API-Key (only when API keys are configured).",
        404: "No upload with that filename.",
        413: "Too large: bytes (checked while streaming) or pixels (from the header).",
        415: "Not PNG, JPEG, WebP or DICOM (checked by magic bytes).",
        422: "Invalid value: bad filename, or an image that cannot be decoded.",
        503: "Model bundle not loaded (loading, failed verification, or shutting down).",
    }
    return {code: {"model": ErrorResponse, "description": text[code]} for code in codes}


# ---------------------------------------------------------------------- work in threads


def _ingest(services: Services, data: bytes) -> tuple[UploadResponse, bool]:
    """Decode (limits enforced), re-encode pixel-only PNG, store; runs in the threadpool."""
    fmt = sniff_format(data)
    engine = services.engine
    with services.decode_slots:
        image = decode_image(data, max_pixels=services.settings.max_pixels)
        png = encode_png(image)
        size = engine.input_size if engine.ready else None
        pixels = prepare_pixels(image, size) if size else None
    stored = services.store.save(png)
    if pixels is not None:
        services.pixels.put(stored.filename, size, pixels)
    services.metrics.uploads.labels("new" if stored.created else "duplicate").inc()
    response = UploadResponse(
        filename=stored.filename,
        width=image.width,
        height=image.height,
        format=fmt.name if fmt else "PNG",
        bytes=len(data),
        stored_bytes=stored.size,
    )
    return response, stored.created


def _load_pixels(services: Services, filename: str, size: int) -> np.ndarray:
    cached = services.pixels.get(filename, size)
    if cached is not None and services.store.exists(filename):
        return cached
    data = services.store.read(filename)
    with services.decode_slots:
        image = decode_image(data, max_pixels=services.settings.max_pixels)
        pixels = prepare_pixels(image, size)
    services.pixels.put(filename, size, pixels)
    return pixels


def _warnings(services: Services, prediction: Prediction) -> list[str]:
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
    if engine.manifest is not None and engine.manifest.synthetic:
        found.append(
            f"model '{engine.model_name}' is a demo trained on synthetic images: "
            "not for clinical use."
        )
    return found


# ---------------------------------------------------------------------- routes


def build_router(*, auth_enabled: bool) -> tuple[APIRouter, APIRouter]:
    """(protected, public) routers; the protected one documents the API-key scheme."""
    security = [Security(api_key_scheme)] if auth_enabled else []
    auth = (401,) if auth_enabled else ()
    api = APIRouter(dependencies=security)
    public = APIRouter()

    @api.post(
        "/upload",
        status_code=201,
        response_model=UploadResponse,
        summary="Upload an image",
        responses={
            201: {"description": "Stored now."},
            200: {"model": UploadResponse, "description": "Identical image already stored."},
            **_errors(400, *auth, 413, 415, 422),
        },
    )
    async def upload(
        services: ServicesDep,
        response: Response,
        file: Annotated[
            UploadFile, File(description="PNG, JPEG, WebP or DICOM; detected by content.")
        ],
    ) -> UploadResponse:
        """Store a radiograph as a pixel-only grayscale PNG named by its sha256.

        201 when the image was stored now, 200 when identical pixels were already stored
        (same name). The client's file name and all metadata (EXIF, text chunks) are dropped.
        """
        limit = services.settings.max_upload_bytes
        data = await file.read(limit + 1)
        if len(data) > limit:
            raise PayloadTooLargeError(f"file is larger than the limit of {limit:,} bytes")
        result, created = await run_in_threadpool(_ingest, services, data)
        response.status_code = 201 if created else 200
        return result

    @api.post(
        "/predict",
        response_model=PredictionResponse,
        summary="Classify an uploaded image",
        responses=_errors(400, *auth, 404, 413, 422, 503),
    )
    async def predict(body: PredictRequest, services: ServicesDep) -> PredictionResponse:
        """Route the image to a body part, then score abnormality with that part's model."""
        engine = services.engine
        if not engine.ready:
            raise NotReadyError(engine.not_ready_reason())
        with engine.incoming():  # lets the batcher wait for this request while it decodes
            pixels = await run_in_threadpool(
                _load_pixels, services, body.filename, engine.input_size
            )
        prediction = await engine.predict(pixels)
        return PredictionResponse(
            filename=body.filename,
            bone_type=prediction.bone_type,
            result=prediction.result,  # type: ignore[arg-type]
            bone_type_probabilities=prediction.bone_type_probabilities,
            abnormality_probability=prediction.abnormality_probability,
            threshold=prediction.threshold,
            model=ModelRef(name=engine.model_name, version=engine.model_version),
            warnings=_warnings(services, prediction),
        )

    @api.delete(
        "/uploads/{filename}",
        status_code=204,
        response_class=Response,
        summary="Delete an upload",
        responses=_errors(*auth, 404, 422),
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

    @api.get(
        "/rules",
        response_model=Rules,
        summary="Usage rules (PNG, or JSON with Accept: application/json)",
        responses={
            200: {
                "description": "The rules as a PNG image, or as JSON when asked for.",
                "content": {"image/png": {"schema": {"type": "string", "format": "binary"}}},
            },
            **_errors(*auth),
        },
    )
    async def rules(request: Request, services: ServicesDep) -> Response:
        """What may be uploaded, limits, body parts, what 'fractured' means; from live config."""
        engine = services.engine
        status = "ready" if engine.ready else engine.not_ready_reason()
        data = build_rules(services.settings, engine.manifest if engine.ready else None, status)
        if prefers_json(request.headers.get("accept", "")):
            return JSONResponse(data.model_dump(mode="json"))
        png = await run_in_threadpool(render_rules_png, data)
        return Response(png, media_type="image/png", headers={"Cache-Control": "no-cache"})

    @api.get(
        "/model",
        response_model=ModelInfo,
        summary="Loaded model bundle",
        responses=_errors(*auth, 503),
    )
    async def model(services: ServicesDep) -> ModelInfo:
        """Summary of the loaded bundle's manifest (503 while no bundle is loaded)."""
        engine = services.engine
        manifest = engine.manifest
        if not engine.ready or manifest is None:
            raise NotReadyError(engine.not_ready_reason())
        return ModelInfo(
            name=manifest.name,
            version=manifest.version,
            created_at=manifest.created_at,
            synthetic=manifest.synthetic,
            body_parts=list(manifest.body_parts),
            thresholds={part: spec.threshold for part, spec in manifest.parts.items()},
            threshold_rules={part: spec.threshold_rule for part, spec in manifest.parts.items()},
            input_size=manifest.input.size,
            preprocessing=manifest.input.preprocessing,
            backbones={
                "router": manifest.router.backbone,
                **{part: spec.backbone for part, spec in manifest.parts.items()},
            },
            metrics=manifest.metrics,
            intended_use=manifest.intended_use,
            providers=engine.providers,
        )

    @public.get("/health", response_model=HealthResponse, summary="Liveness")
    async def health() -> HealthResponse:
        """200 whenever the process serves HTTP, whatever the model's state."""
        return HealthResponse()

    @public.get(
        "/ready",
        response_model=ReadyResponse,
        summary="Readiness",
        responses=_errors(503),
    )
    async def ready(services: ServicesDep) -> ReadyResponse | JSONResponse:
        """200 once the bundle is loaded, verified and warmed; 503 with the reason otherwise."""
        engine = services.engine
        if not engine.ready:
            return JSONResponse(error_body(engine.not_ready_reason()), status_code=503)
        return ReadyResponse(
            model=ModelRef(name=engine.model_name, version=engine.model_version),
            providers=engine.providers,
        )

    @public.get(
        "/metrics",
        summary="Prometheus metrics",
        response_class=Response,
        responses={200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}}},
    )
    async def metrics(services: ServicesDep) -> Response:
        """Request, queue, batch, inference and upload metrics in Prometheus text format."""
        payload = await run_in_threadpool(generate_latest, services.metrics.registry)
        return Response(payload, media_type=CONTENT_TYPE_LATEST)

    return api, public


def prefers_json(accept: str) -> bool:
    """True when the Accept header ranks application/json above image/png."""
    best: dict[str, float] = {}
    for item in accept.split(","):
        media, _, params = item.strip().partition(";")
        quality = 1.0
        for param in params.split(";"):
            key, _, value = param.strip().partition("=")
            if key == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        best[media.strip().lower()] = max(quality, best.get(media.strip().lower(), 0.0))
    json_q = best.get("application/json", 0.0)
    png_q = max(best.get("image/png", 0.0), best.get("image/*", 0.0))
    return json_q > 0 and json_q > png_q
