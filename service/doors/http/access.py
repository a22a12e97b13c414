"""The access log and the HTTP metrics, both recorded by one pure ASGI middleware.

Labels are bounded: the *route template* (``/uploads/{filename}``), never the raw path, so
neither a filename nor a scanner's random URLs reach the metrics or the logs. The access
log records method, route template, status and duration only: no client address, no file
names, no bodies (uploads are patient data).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.adapters.metrics import ServiceMetrics

access_log = logging.getLogger("bonexr.access")

UNMATCHED = "<unmatched>"
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def route_template(routes: Sequence[BaseRoute], scope: Scope) -> str:
    """The matched route's path template.

    When a middleware answered before the router ran (401, 413), ``scope`` has no route, so
    the request is matched against ``routes`` here; those responses are labelled too.
    """
    route = scope.get("route")
    if route is not None and hasattr(route, "path"):
        return str(route.path)
    for candidate in routes:
        try:
            match, _ = candidate.matches(dict(scope))
        except Exception:  # a malformed scope must never break accounting
            continue
        if match is Match.FULL:
            return str(getattr(candidate, "path", UNMATCHED))
    return UNMATCHED


class AccessMiddleware:
    """Outermost middleware: times each request, counts it, and writes one log line."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics, routes: Sequence[BaseRoute]) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500  # if the app raises before answering, the server answers 500

        async def send_and_record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            elapsed = time.perf_counter() - start
            route = route_template(self.routes, scope)
            method = str(scope.get("method", ""))
            method = method if method in _METHODS else "OTHER"
            labels = (method, route, str(status))
            self.metrics.requests.labels(*labels).inc()
            self.metrics.latency.labels(*labels).observe(elapsed)
            access_log.info("%s %s %d %.1fms", method, route, status, elapsed * 1000)
