"""Triage errors -> HTTP: one status and one JSON shape per error, in one table.

Why one place: the API promises one body, ``{"detail": ..., "code": ...}`` plus the
error's own fields, for *every* failure (unknown route, 405, validation, image errors, not
ready, and the last-resort 500), and the status an error earns must not depend on which
route raised it. The domain's errors (:mod:`service.domain.errors`) know no status;
:data:`HTTP_STATUS` gives each one, and ``docs/api.md``'s error table is printed from it.

* 400 malformed request: the body is not what the endpoint takes at all.
* 401 missing or wrong ``X-API-Key`` (only when keys are configured).
* 404 unknown upload, record or route.
* 413 too large: bytes (while streaming) or pixels (from the image header).
* 415 not PNG/JPEG/WebP/DICOM by magic bytes.
* 414 / 431 request line / headers too large (refused by the server, before the app).
* 422 well-formed request with an invalid value, or an image the model must refuse.
* 503 model bundle not loaded, past the deadline, or a store/database unavailable.
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
from service.domain.errors import (
    BundleRejectedError,
    DuplicateFieldError,
    ForbiddenError,
    HeatmapUnavailableError,
    InferenceFailedError,
    InvalidCursorError,
    InvalidFilenameError,
    InvalidRequestError,
    InvalidStudyError,
    MalformedBodyError,
    ModelCardMissingError,
    NoPartModelError,
    NotEligibleError,
    NotReadyError,
    OverloadedError,
    PayloadTooLargeError,
    RecordNotFoundError,
    RecordsUnavailableError,
    StoreFullError,
    StoreUnavailableError,
    SwapInProgressError,
    TriageError,
    UnknownOperatingPointError,
    UnsupportedMediaTypeError,
    UploadNotFoundError,
    by_class,
    error_code,
)
from service.doors.http.schemas import ErrorResponse

log = logging.getLogger("bonexr.service")

#: Every triage and core error -> its HTTP status (a subclass not named takes its base's).
HTTP_STATUS: dict[type[Exception], int] = {
    UploadNotFoundError: 404,
    RecordNotFoundError: 404,
    ModelCardMissingError: 404,
    HeatmapUnavailableError: 404,
    DuplicateFieldError: 400,
    MalformedBodyError: 400,
    InvalidCursorError: 400,
    ForbiddenError: 403,
    SwapInProgressError: 409,
    PayloadTooLargeError: 413,
    ImageTooLargeError: 413,
    UnsupportedMediaTypeError: 415,
    UnsupportedFormatError: 415,
    InvalidFilenameError: 422,
    InvalidStudyError: 422,
    InvalidRequestError: 422,
    NoPartModelError: 422,
    NotEligibleError: 422,
    UnknownOperatingPointError: 422,
    BundleRejectedError: 422,
    UndecodableImageError: 422,
    ImageError: 422,
    OverloadedError: 429,
    InferenceFailedError: 500,
    NotReadyError: 503,
    StoreUnavailableError: 503,
    RecordsUnavailableError: 503,
    BundleError: 503,
    StoreFullError: 507,
}

#: What each error status means, for the OpenAPI ``responses`` of the routes.
ERROR_DESCRIPTIONS: dict[int, str] = {
    400: "Malformed request: the body is not what this endpoint takes, or a cursor that "
    "no page gave.",
    401: "Missing or wrong X-API-Key (only when API keys are configured).",
    403: "This key may not do that (GET /audit: keys named in BONEXR_ADMIN_KEYS).",
    404: "No upload with that filename, no recorded study with that id (or no heat map in "
    "this bundle).",
    409: "Another bundle swap is in progress; retry when it is done.",
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


#: Validation error locations that mean "the body is not what this endpoint takes" (400).
_MALFORMED_LOCS = {("body",), ("body", "file")}


def status_for(exc: Exception) -> int:
    """HTTP status for a triage or shared-core exception (500 for anything unknown): the
    entry of its class, or of the nearest base class in :data:`HTTP_STATUS`."""
    return by_class(HTTP_STATUS, type(exc), 500)


def error_body(detail: str, errors: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"detail": detail}
    if errors is not None:
        body["errors"] = errors
    return body


def validation_status(errors: list[dict[str, Any]]) -> int:
    """400 when the body could not be parsed or lacks the required part; 422 otherwise."""
    for error in errors:
        loc = tuple(error.get("loc", ()))
        kind = error.get("type")
        if kind == "json_invalid" or (loc in _MALFORMED_LOCS and loc != ("body",)):
            return 400
        if loc == ("body",) and kind != "value_error":  # a model rule broken: 422
            return 400
    return 422


#: What to do, by field, when a value has the wrong form (pydantic's "String should match
#: pattern '^[0-9a-f]{64}\\.png$'" told a user nothing).
_FIELD_ADVICE = {
    "filename": "use the filename POST /upload answered (64 hex digits and .png)",
    "filenames": "use the filenames POST /upload answered (64 hex digits and .png each)",
    "study_id": "use an id GET /worklist listed",
}


def _received(value: Any) -> str:
    """What was sent, described, never echoed (a path such as ../../etc/passwd, a patient's
    name: an error body is no place to repeat them)."""
    if isinstance(value, str):
        return f"a {len(value)}-character text"
    if isinstance(value, bytes | bytearray):
        return f"{len(value)} bytes that are not a JSON object"
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, list):
        return f"a list of {len(value)}"
    if isinstance(value, dict):
        return "an object"
    return "a value of another kind"


def plain_message(error: dict[str, Any]) -> str:
    """One validation error in plain words: the field, what it must be, what came, and what
    to do."""
    loc = [str(part) for part in error.get("loc", ())]
    field = ".".join(p for p in loc[1:] if not p.isdigit()) or ".".join(loc) or "request"
    kind, msg = str(error.get("type", "")), str(error.get("msg", ""))
    leaf = next((p for p in reversed(loc) if not p.isdigit()), field)
    if kind == "missing":
        return f"{field} is required"
    if kind == "value_error" and "UploadFile" in msg:
        return f"{field} must be a file part (multipart/form-data with a file), not text"
    if kind in ("model_attributes_type", "dict_type") and len(loc) <= 1:
        return (
            "the body must be a JSON object, sent with Content-Type: application/json "
            f"(got {_received(error.get('input'))})"
        )
    if kind == "string_pattern_mismatch":
        advice = _FIELD_ADVICE.get(leaf, "see /docs for its form")
        return f"{field} has the wrong form (got {_received(error.get('input'))}): {advice}"
    context = error.get("ctx") or {}
    if kind == "too_short":
        return f"{field} must have at least {context.get('min_length')} item(s)"
    if kind == "too_long":
        return f"{field} may have at most {context.get('max_length')} item(s)"
    text = msg.replace("Input should be", "must be").replace("Value error, ", "")
    return f"{field}: {text} (got {_received(error.get('input'))})"


def _summarise(errors: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    """Plain summary plus a machine list; the offending *input* is never echoed back."""
    messages = [plain_message(error) for error in errors]
    items: list[dict[str, Any]] = [
        {
            "loc": [str(part) for part in error.get("loc", ())],
            "msg": message,
            "type": str(error.get("type", "")),
        }
        for error, message in zip(errors, messages, strict=True)
    ]
    return "; ".join(messages) or "invalid request", items


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


def known_error_body(exc: Exception) -> dict[str, Any]:
    """The one JSON shape of a triage or core error: detail, code, the error's fields."""
    detail = exc.detail if isinstance(exc, TriageError) else str(exc)
    fields = exc.fields() if isinstance(exc, TriageError) else {}
    return {**error_body(detail), "code": error_code(exc), **fields}


async def _known_exception(request: Request, exc: Exception) -> JSONResponse:
    if isinstance(exc, NotEligibleError):  # what the refusal-surge alert watches
        services = getattr(request.app.state, "services", None)
        if services is not None:
            services.metrics.refusals.labels(exc.fields().get("reason", "other")).inc()
    headers = {}
    if isinstance(exc, OverloadedError):
        headers["Retry-After"] = str(exc.retry_after_s)
    return JSONResponse(known_error_body(exc), status_code=status_for(exc), headers=headers)


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
    app.add_exception_handler(TriageError, _known_exception)
    app.add_exception_handler(ImageError, _known_exception)
    app.add_exception_handler(BundleError, _known_exception)
