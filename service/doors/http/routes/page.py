"""The web page at ``/`` and its assets under ``/static/`` (no CDN, no build step).

The page is plain HTML/CSS/JS served from the package; it talks to the same API as any
client. A strict Content-Security-Policy allows nothing but this origin (images also from
``blob:``, where the page puts the PNGs it fetched with the API key). Every response that
serves the page or an asset, at ``/`` or under ``/static/`` (``/static/index.html``
included), carries the same :data:`PAGE_HEADERS`.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import MutableHeaders
from starlette.types import Message, Receive, Scope, Send

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
CSP = (
    "default-src 'self'; img-src 'self' blob:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)
#: Headers of every response serving the page or its assets.
PAGE_HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff"}

router = APIRouter(tags=["page"])


@router.get("/", include_in_schema=False)
async def page() -> FileResponse:
    """The web page."""
    return FileResponse(
        STATIC_DIR / "index.html",
        media_type="text/html",
        headers=PAGE_HEADERS,
    )


class PageAssets(StaticFiles):
    """The static folder, each response with :data:`PAGE_HEADERS` (the page itself is
    reachable as ``/static/index.html`` too, and must not lose its policy there)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in PAGE_HEADERS.items():
                    headers[name] = value
            await send(message)

        await super().__call__(scope, receive, with_headers)


def static_files() -> StaticFiles:
    """The page's assets (mounted at ``/static``)."""
    return PageAssets(directory=STATIC_DIR)
