"""Run the service: settings from CLI overrides, then uvicorn with the project's limits.

Plain functions, called by the ``bonexr serve`` and ``bonexr run`` commands.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from pydantic import ValidationError

from bonexr.bundle import find_bundle
from bonexr.errors import BundleError, ConfigError
from service.settings import Settings

log = logging.getLogger("bonexr.service")


def load_settings(**overrides: Any) -> Settings:
    """``BONEXR_*`` settings with the non-``None`` ``overrides`` applied; ConfigError if bad."""
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"invalid service configuration: {problems}") from exc


def has_bundle(settings: Settings) -> bool:
    """Whether a bundle is there to serve; an explicitly named missing bundle is an error."""
    try:
        find_bundle(settings.models_dir, settings.bundle)
    except BundleError:
        if settings.bundle:
            raise
        return False
    return True


def serve(settings: Settings) -> int:
    """Serve until interrupted (uvicorn, with request-line and header size limits)."""
    import uvicorn

    from service.doors.http.app import create_app
    from service.doors.http.protocol_limits import limited_http_protocol

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    app = create_app(settings)  # configures the bonexr loggers
    base = f"http://{settings.host}:{settings.port}"
    log.info("serving on %s  (API docs: %s/docs)", base, base)
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=False,  # our own middleware logs method, route and status, never filenames
        # SIGTERM: stop accepting, let accepted requests finish (each has this deadline)
        timeout_graceful_shutdown=int(settings.predict_timeout_s) + 5,
        http=limited_http_protocol(settings.max_url_bytes, settings.max_header_bytes),
    )
    return 0
