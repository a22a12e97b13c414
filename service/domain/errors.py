"""Exception -> HTTP status mapping, and the handlers that give every error one JSON shape.

Why one place: the API promises ``{"detail": ...}`` for *every* failure (unknown route,
405, validation, image errors, not ready, and the last-resort 500), and the status a given
exception earns must not depend on which route happened to raise it.

Status policy (also in the OpenAPI description of each route):

* 400 malformed request: the body is not what the endpoint takes at all (not JSON, not
  multipart, no ``file`` part, body missing).
* 401 missing or wrong ``X-API-Key`` (only when keys are configured).
* 404 unknown upload or route.
* 413 too large: bytes (while streaming) or pixels (from the image header).
* 415 not PNG/JPEG/WebP/DICOM by magic bytes.
* 414 / 431 request line / headers too large (refused by the server, before the app).
* 422 well-formed request with an invalid value: bad filename, undecodable image.
* 503 model bundle not loaded (loading, failed verification, or shutting down), or the
  upload store is missing or read-only.
* 507 the upload store is full.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import traceback
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bonexr.errors import (
    BundleError,
    ImageError,
    ImageTooLargeError,
    UndecodableImageError,
    UnsupportedFormatError,
)
from service.doors.http.schemas import ErrorResponse

log = logging.getLogger("bonexr.service")


class ServiceError(Exception):
    """An error whose message is safe to show the client, with its HTTP status."""

    status_code: int = 500

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class UploadNotFoundError(ServiceError):
    status_code = 404


class PayloadTooLargeError(ServiceError):
    status_code = 413


class InvalidFilenameError(ServiceError):
    status_code = 422


class NotReadyError(ServiceError):
    status_code = 503


class InvalidStudyError(ServiceError):
    """A well-formed study request that cannot be answered as asked (422)."""

    status_code = 422


class NoPartModelError(ServiceError):
    """The router recognised a body part this bundle has no abnormality model for (422).

    The body carries ``bone_type`` beside ``detail``: the router's answer is still useful
    (it is not another part's verdict).
    """

    status_code = 422

    def __init__(self, detail: str, bone_type: str) -> None:
        super().__init__(detail)
        self.bone_type = bone_type


class NotEligibleError(ServiceError):
    """An image the model was never trained to judge (422, ``code: "not_eligible"``).

    ``reason`` is a stable code (``modality``, ``body_part``); ``fields`` go into the body
    beside it (the value that decided, e.g. ``{"modality": "CT"}``).
    """

    status_code = 422

    def __init__(self, detail: str, reason: str, fields: dict[str, Any]) -> None:
        super().__init__(detail)
        self.reason = reason
        self.fields = fields


class UnknownOperatingPointError(ServiceError):
    """The request named an operating point the bundle does not have (422, with the ones
    it has in ``operating_points``)."""

    status_code = 422

    def __init__(self, detail: str, available: list[str]) -> None:
        super().__init__(detail)
        self.available = available


class ModelCardMissingError(ServiceError):
    """The loaded bundle ships no model card (404: no such resource)."""

    status_code = 404


class HeatmapUnavailableError(ServiceError):
    """The loaded bundle's models have no heat-map output (404: no such resource)."""

    status_code = 404


class OverloadedError(ServiceError):
    """The queue is full: answered at once with 429 and ``Retry-After``."""

    status_code = 429

    def __init__(self, detail: str, retry_after_s: int) -> None:
        super().__init__(detail)
        self.retry_after_s = retry_after_s


class DuplicateFieldError(ServiceError):
    status_code = 400


class MalformedBodyError(ServiceError):
    """A body that is not what the endpoint takes at all (a broken multipart/related)."""

    status_code = 400


class UnsupportedMediaTypeError(ServiceError):
    """A request or part of a media type the endpoint does not take (415)."""

    status_code = 415


class StoreUnavailableError(ServiceError):
    """The upload store is missing, read-only or not permitted: the server's fault, for now."""

    status_code = 503


class RecordNotFoundError(ServiceError):
    """No recorded study with that id (404)."""

    status_code = 404


class InvalidCursorError(ServiceError):
    """A worklist or audit cursor that does not parse (422)."""

    status_code = 422


class ForbiddenError(ServiceError):
    """A valid key that may not do this (403: an admin-only route)."""

    status_code = 403


class RecordsUnavailableError(ServiceError):
    """The records database is down, read-only or full (503, naming it): nothing already
    recorded is lost; the request can be retried."""

    status_code = 503


class StoreFullError(ServiceError):
    """No space left in the upload store (507 Insufficient Storage)."""

    status_code = 507


class InferenceFailedError(ServiceError):
    """The models raised on a valid input: a server fault, reported as a JSON 500."""

    status_code = 500


#: What each error status means, for the OpenAPI ``responses`` of the routes.
ERROR_DESCRIPTIONS: dict[int, str] = {
    400: "Malformed request: the body is not what this endpoint takes.",
    401: "Missing or wrong X-API-Key (only when API keys are configured).",
    403: "This key may not do that (GET /audit: keys named in BONEXR_ADMIN_KEYS).",
    404: "No upload with that filename, no recorded study with that id (or no heat map in "
    "this bundle).",
    413: "Too large: bytes (while streaming), pixels or decoded memory (from the header).",
    415: "Not PNG, JPEG, WebP or DICOM (checked by magic bytes).",
    422: "Invalid value: bad filename, an image that cannot be decoded, or a body part this "
    "bundle has no abnormality model for (then `bone_type` names it).",
    429: "Too many requests waiting: retry after the seconds in the Retry-After header.",
    503: "Not ready: model bundle not loaded (loading, refused, shutting down), the upload "
    "store is not writable, or the records database is unavailable (each named).",
    507: "The upload store is full.",
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for these error statuses (body: ``{"detail": ...}``)."""
    return {
        code: {"model": ErrorResponse, "description": ERROR_DESCRIPTIONS[code]} for code in codes
    }


#: Shared-core exceptions (bonexr.errors) -> status. Most specific class first.
_CORE_STATUS: tuple[tuple[type[Exception], int], ...] = (
    (UnsupportedFormatError, 415),
    (ImageTooLargeError, 413),
    (UndecodableImageError, 422),
    (ImageError, 422),
    (BundleError, 503),
)

#: Validation error locations that mean "the body is not what this endpoint takes" (400).
_MALFORMED_LOCS = {("body",), ("body", "file")}


def status_for(exc: Exception) -> int:
    """HTTP status for a service or shared-core exception (500 for anything unknown)."""
    if isinstance(exc, ServiceError):
        return exc.status_code
    for cls, status in _CORE_STATUS:
        if isinstance(exc, cls):
            return status
    return 500


def error_body(detail: str, errors: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"detail": detail}
    if errors is not None:
        body["errors"] = errors
    return body


def validation_status(errors: list[dict[str, Any]]) -> int:
    """400 when the body could not be parsed or lacks the required part; 422 otherwise."""
    for error in errors:
        loc = tuple(error.get("loc", ()))
        if error.get("type") == "json_invalid" or loc in _MALFORMED_LOCS:
            return 400
    return 422


def _summarise(errors: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    """Human summary plus a machine list; the offending *input* is never echoed back."""
    items = []
    for error in errors:
        loc = [str(part) for part in error.get("loc", ())]
        items.append(
            {"loc": loc, "msg": str(error.get("msg", "")), "type": str(error.get("type", ""))}
        )
    text = "; ".join(
        f"{'.'.join(item['loc'][1:] or item['loc']) or 'request'}: {item['msg']}" for item in items
    )
    return text or "invalid request", items


async def _http_exception(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    return JSONResponse(error_body(detail), status_code=exc.status_code, headers=exc.headers)


async def _validation_exception(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = list(exc.errors())
    status = validation_status(errors)
    text, items = _summarise(errors)
    if any(e.get("type") == "json_invalid" for e in errors):
        text = "malformed request: the body is not valid JSON"
    elif status == 400:
        text = f"malformed request: {text}"
    return JSONResponse(error_body(text, items), status_code=status)


async def _known_exception(_: Request, exc: Exception) -> JSONResponse:
    detail = exc.detail if isinstance(exc, ServiceError) else str(exc)
    body = error_body(detail)
    headers = {}
    if isinstance(exc, NoPartModelError):
        body.update(code="unsupported_body_part", bone_type=exc.bone_type)
    if isinstance(exc, NotEligibleError):
        body.update(code="not_eligible", reason=exc.reason, **exc.fields)
    if isinstance(exc, UnknownOperatingPointError):
        body.update(code="unknown_operating_point", operating_points=exc.available)
    if isinstance(exc, OverloadedError):
        headers["Retry-After"] = str(exc.retry_after_s)
    return JSONResponse(body, status_code=status_for(exc), headers=headers)


class LastResortMiddleware:
    """Turn any exception that escaped the handlers into a JSON 500, and stop it there.

    Why a middleware rather than ``add_exception_handler(Exception, ...)``: Starlette's
    outermost ServerErrorMiddleware re-raises after calling such a handler, and the server
    then logs the exception *message*, which may hold a path or other patient data. Here it
    is logged by type and stack frames only, and not re-raised.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except asyncio.CancelledError:
            # The server cancels what is still running when its SIGTERM grace window ends:
            # the client gets a JSON 503 saying so, never uvicorn's plain-text 500 and a
            # logged traceback. The cancellation ends here, at the outermost layer.
            if not started:
                response = JSONResponse(
                    error_body("the service is shutting down; retry on another replica"),
                    status_code=503,
                    headers={"Retry-After": "1"},
                )
                with contextlib.suppress(Exception):
                    await response(scope, receive, send)
        except Exception as exc:
            route = getattr(scope.get("route"), "path", "<unmatched>")
            frames = "".join(traceback.format_tb(exc.__traceback__))
            method = scope.get("method", "")
            log.error("unhandled %s on %s %s\n%s", type(exc).__name__, method, route, frames)
            if started:
                return  # headers already sent: nothing sensible left to send
            response = JSONResponse(error_body("internal server error"), status_code=500)
            await response(scope, receive, send)


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers so every error, from any layer, is ``{"detail": ...}``."""
    app.add_exception_handler(StarletteHTTPException, _http_exception)
    app.add_exception_handler(RequestValidationError, _validation_exception)
    app.add_exception_handler(ServiceError, _known_exception)
    app.add_exception_handler(ImageError, _known_exception)
    app.add_exception_handler(BundleError, _known_exception)
