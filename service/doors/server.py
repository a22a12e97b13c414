"""Run the service: settings from CLI overrides, then uvicorn with the project's limits.

Plain functions, called by the ``bonexr serve`` and ``bonexr run`` commands.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Any

from pydantic import ValidationError

from bonexr.bundle import find_bundle, read_manifest
from bonexr.errors import BundleError, ConfigError
from service.settings import Settings, exposure_problems

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


def check_exposure(settings: Settings) -> None:
    """Refuse to start where anyone on the network could use the service unchecked (see
    :func:`~service.settings.exposure_problems`), unless ``BONEXR_INSECURE=1`` says the
    network is trusted: then each problem is logged as a warning."""
    problems = exposure_problems(settings)
    if problems and not settings.insecure:
        raise ConfigError(
            "refusing to start: "
            + "; ".join(problems)
            + ". On a network you trust alone, BONEXR_INSECURE=1 starts it anyway."
        )
    for problem in problems:
        log.warning("insecure (BONEXR_INSECURE=1): %s", problem)


def what_to_upload(settings: Settings, base: str) -> str:
    """The line that tells a new user what to try: the parts the bundle judges."""
    try:
        manifest = read_manifest(find_bundle(settings.models_dir, settings.bundle))
    except BundleError:
        return f"open {base}/ once the model is loaded"
    parts = [p.lower() for p in manifest.parts]
    judged = " or ".join(parts) if parts else "a"
    return (
        f"open {base}/ and drop a {judged} radiograph (PNG, JPEG, WebP or DICOM); "
        f"bundle {manifest.name} {manifest.version}"
        + (" (synthetic demo: not for real images)" if manifest.synthetic else "")
    )


def check_port(settings: Settings) -> None:
    """Fail now, before anything slow, when the port is taken (a second server, say)."""
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((settings.host, settings.port))
        except OSError as exc:
            raise ConfigError(
                f"cannot listen on {settings.host}:{settings.port} ({exc.strerror}): another "
                "server (a bonexr already running?) has it. Choose another with --port or "
                "BONEXR_PORT, or stop the other one."
            ) from None


def serve(settings: Settings) -> int:
    """Serve until interrupted (uvicorn, with request-line and header size limits), after
    :func:`check_exposure` and :func:`check_port`."""
    check_exposure(settings)
    check_port(settings)
    import uvicorn

    from service.doors.http.app import create_app
    from service.doors.http.protocol_limits import limited_http_protocol

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    app = create_app(settings)  # configures the bonexr loggers
    base = f"http://{settings.host}:{settings.port}"
    log.info("serving on %s  (API docs: %s/docs)", base, base)
    log.info("%s", what_to_upload(settings, base))
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
