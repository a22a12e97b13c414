"""The web page at ``/`` and its assets under ``/static/`` (no CDN, no build step).

The page is plain HTML/CSS/JS served from the package; it talks to the same API as any
client. A strict Content-Security-Policy allows nothing but this origin (images also from
``blob:``, where the page puts the PNGs it fetched with the API key).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
CSP = (
    "default-src 'self'; img-src 'self' blob:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)

router = APIRouter(tags=["page"])


@router.get("/", include_in_schema=False)
async def page() -> FileResponse:
    """The web page."""
    return FileResponse(
        STATIC_DIR / "index.html",
        media_type="text/html",
        headers={"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff"},
    )


def static_files() -> StaticFiles:
    """The page's assets (mounted at ``/static``)."""
    return StaticFiles(directory=STATIC_DIR)
