"""Request body size limit, enforced while the body streams in (pure ASGI middleware).

Why not check ``len(await file.read())`` in the route: by then the whole body has been
received and spooled. Here a declared ``Content-Length`` over the limit is refused before
the app runs, and for chunked bodies (no ``Content-Length``) the bytes are counted as each
chunk arrives, so at most one chunk past the limit is ever read.

The routes that take an image (``/upload``, ``/predict/image``) get ``max_upload_bytes``
plus an allowance for the multipart envelope; the route itself then checks the file part
exactly. STOW-RS (a whole study in one body)
gets ``max_stow_bytes``; its parser holds each instance to ``max_upload_bytes``. Every
other route takes small JSON bodies, so it gets a small limit.
"""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

#: Room for multipart boundaries and part headers around the file itself.
MULTIPART_ALLOWANCE = 64 * 1024
#: Limit for every route except uploads (they take a small JSON body or none).
SMALL_BODY_LIMIT = 64 * 1024


class BodyTooLargeError(HTTPException):
    """Raised from ``receive`` when the streamed body passes the limit.

    An :class:`HTTPException`, so FastAPI's body parsing re-raises it unchanged and the
    exception handlers turn it into a JSON 413 rather than a generic 400.
    """

    def __init__(self, advertised: int) -> None:
        super().__init__(status_code=413, detail=too_large_detail(advertised))


def too_large_detail(advertised: int) -> str:
    return f"request body too large: the limit is {advertised:,} bytes"


class BodySizeLimitMiddleware:
    """Refuse bodies over the route's limit: by ``Content-Length`` up front, else by counting."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        upload_limit: int,
        upload_paths: tuple[str, ...] = ("/upload", "/predict/image"),
        stow_limit: int = 512 * 1024 * 1024,
        stow_prefix: str = "/dicom-web/studies",
    ) -> None:
        self.app = app
        self.upload_limit = upload_limit
        self.upload_paths = upload_paths
        self.stow_limit = stow_limit
        self.stow_prefix = stow_prefix

    def limits_for(self, scope: Scope) -> tuple[int, int]:
        """(bytes enforced, bytes quoted to the client) for this request's path."""
        path = str(scope.get("path", ""))
        if path in self.upload_paths:
            return self.upload_limit + MULTIPART_ALLOWANCE, self.upload_limit
        if path == self.stow_prefix or path.startswith(self.stow_prefix + "/"):
            return self.stow_limit, self.stow_limit  # a whole study (STOW-RS)
        return SMALL_BODY_LIMIT, SMALL_BODY_LIMIT

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit, advertised = self.limits_for(scope)
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await _send_413(scope, receive, send, advertised)
            return

        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLargeError(advertised)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except BodyTooLargeError:
            # Normally the exception handlers answer; this covers a read outside a route.
            if started:
                raise
            await _send_413(scope, receive, send, advertised)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _send_413(scope: Scope, receive: Receive, send: Send, advertised: int) -> None:
    response = JSONResponse(
        {"detail": too_large_detail(advertised)}, status_code=413, headers={"connection": "close"}
    )
    await response(scope, receive, send)
