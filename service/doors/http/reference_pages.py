"""The interactive API reference (Swagger UI at ``/docs``, ReDoc at ``/redoc``) served from
the installed ``fastapi-offline`` package, never a CDN.

FastAPI's own pages load their JavaScript from a CDN, so on a hospital network with no
internet ``/docs`` was blank. FastAPI's documented way out ("self-hosting JavaScript and
CSS for docs") is used with the files ``fastapi-offline`` ships (Swagger UI and ReDoc
bundles, kept current by that project): only its static folder is used, not its app class.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

#: Where the bundles are served (under /static/, open without a key like the pages).
ASSETS = "/static/api-reference"


def assets_folder() -> Path:
    """The Swagger UI and ReDoc bundles installed with ``fastapi-offline``."""
    return Path(str(files("fastapi_offline") / "static"))


def add_reference_pages(app: FastAPI) -> None:
    """``/docs`` and ``/redoc`` with local assets (create the app with ``docs_url=None``
    and ``redoc_url=None``)."""
    app.mount(ASSETS, StaticFiles(directory=assets_folder()), name="api-reference")
    title = f"{app.title} {app.version}"
    openapi_url = app.openapi_url or "/openapi.json"

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=openapi_url,
            title=f"{title}: API",
            swagger_js_url=f"{ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS}/favicon.png",
        )

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url=openapi_url,
            title=f"{title}: API reference",
            redoc_js_url=f"{ASSETS}/redoc.standalone.js",
            redoc_favicon_url=f"{ASSETS}/favicon.png",
            with_google_fonts=False,
        )
