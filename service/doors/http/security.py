"""Optional API-key authentication (header ``X-API-Key``), as a pure ASGI middleware.

Why a middleware and not a route dependency: FastAPI reads and parses the request body
*before* it runs dependencies, so a dependency would let an unauthenticated client make the
server spool a 20 MB multipart body. The middleware refuses before any byte of the body is
read. The OpenAPI schema still documents the scheme (see :data:`api_key_scheme`).

Keys are compared with :func:`hmac.compare_digest` against *every* configured key (no early
exit), so response timing does not reveal a key's prefix or which key almost matched.
"""

from __future__ import annotations

import hmac

from fastapi.security import APIKeyHeader
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

HEADER = "X-API-Key"
#: Paths an orchestrator or scraper must reach without a key, plus the API docs and the web
#: page (it holds no data; it sends the key the reader types with every API call).
PUBLIC_PATHS = frozenset(
    {
        "/health",
        "/ready",
        "/metrics",
        "/docs",
        "/docs/oauth2-redirect",
        "/redoc",
        "/openapi.json",
        "/",
    }
)
PUBLIC_PREFIXES = ("/static/",)

#: Documentation-only: declares the scheme in OpenAPI; enforcement is the middleware.
api_key_scheme = APIKeyHeader(name=HEADER, auto_error=False, description="API key (if enabled).")


#: Who a request is when the service has no API keys (the records and the audit name it).
ANONYMOUS = "anonymous"


def key_matches(presented: bytes | None, keys: list[bytes]) -> bool:
    """Constant-time check of ``presented`` against every configured key."""
    return matching_name(presented, {str(i): k for i, k in enumerate(keys)}) is not None


def matching_name(presented: bytes | None, keys: dict[str, bytes]) -> str | None:
    """The name of the key ``presented`` is, compared in constant time against every key."""
    if presented is None:
        return None
    found: str | None = None
    for name, key in keys.items():
        if hmac.compare_digest(presented, key):
            found = name
    return found


def key_name(scope: Scope) -> str:
    """Who made the request: its key's name (set by :class:`ApiKeyMiddleware`)."""
    return str(scope.get("state", {}).get("api_key_name", ANONYMOUS))


def may_administer(scope: Scope, admin_names: set[str] | frozenset[str], keyed: bool) -> bool:
    """Whether the request may take an admin action (delete a record, swap the bundle):
    an admin key's, or anyone's where the service has no keys (it then listens on
    loopback alone, or was told it is on a trusted network)."""
    return not keyed or key_name(scope) in admin_names


#: The only paths an integration key (a PACS sending studies) may use.
INTEGRATION_PREFIX = "/dicom-web/"


class ApiKeyMiddleware:
    """Reject requests to protected paths without a valid ``X-API-Key`` (401), refuse an
    integration key anything but sending studies (403), and record the key's name in the
    request state for the records and the audit."""

    def __init__(
        self, app: ASGIApp, *, keys: dict[str, str], integration: frozenset[str] = frozenset()
    ) -> None:
        self.app = app
        self.keys = {name: k.encode("utf-8") for name, k in keys.items()}
        self.integration = integration

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.keys:
            await self.app(scope, receive, send)
            return
        name = matching_name(_header(scope, b"x-api-key"), self.keys)
        path = str(scope.get("path", ""))
        if name in self.integration and not (path + "/").startswith(INTEGRATION_PREFIX):
            response = JSONResponse(
                {
                    "detail": "an integration key (BONEXR_INTEGRATION_KEYS) may only send "
                    "studies (POST /dicom-web/studies)",
                    "code": "forbidden",
                },
                status_code=403,
            )
            await response(scope, receive, send)
            return
        if name is not None:
            scope.setdefault("state", {})["api_key_name"] = name
        if (
            name is not None
            or scope.get("path") in PUBLIC_PATHS
            or str(scope.get("path", "")).startswith(PUBLIC_PREFIXES)
        ):
            await self.app(scope, receive, send)
            return
        response = JSONResponse(
            {"detail": f"missing or invalid API key (header {HEADER})"},
            status_code=401,
            headers={"www-authenticate": HEADER},
        )
        await response(scope, receive, send)


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return bytes(value)
    return None
