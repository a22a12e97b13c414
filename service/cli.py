"""``bonexr serve`` (the service) and ``bonexr run`` (quick start: demo bundle if needed, serve)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def _settings_from(args: argparse.Namespace):
    from pydantic import ValidationError

    from bonexr.errors import ConfigError
    from service.settings import Settings

    overrides = {
        key: value
        for key, value in {
            "host": args.host,
            "port": args.port,
            "models_dir": args.models_dir,
            "bundle": args.bundle,
            "upload_dir": args.upload_dir,
        }.items()
        if value is not None
    }
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"invalid service configuration: {problems}") from exc


def _serve(settings) -> int:
    import uvicorn

    from service.app import create_app

    print(
        f"bonexr: serving on http://{settings.host}:{settings.port}  (API docs: http://{settings.host}:{settings.port}/docs)",
        flush=True,
    )
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=False,  # our own middleware logs method, route and status, never filenames
        timeout_graceful_shutdown=10,
    )
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    return _serve(_settings_from(args))


def _cmd_run(args: argparse.Namespace) -> int:
    from bonexr.bundle import find_bundle
    from bonexr.errors import BundleError

    settings = _settings_from(args)
    try:
        find_bundle(settings.models_dir, settings.bundle)
    except BundleError:
        if settings.bundle:
            raise
        print(
            f"bonexr: no model bundle in {settings.models_dir}; "
            "training the synthetic demo bundle first",
            flush=True,
        )
        from bonexr.cli import main as bonexr_main

        code = bonexr_main(["demo", "--out", str(Path(settings.models_dir) / "demo")])
        if code != 0:
            return code
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return _serve(settings)


def _add_server_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", help="bind address (env BONEXR_HOST, default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (env BONEXR_PORT, default 8000)")
    p.add_argument(
        "--models-dir", type=Path, help="bundle folder root (env BONEXR_MODELS_DIR, default models)"
    )
    p.add_argument(
        "--bundle", help="bundle name or path (env BONEXR_BUNDLE, default: newest in models dir)"
    )
    p.add_argument(
        "--upload-dir", type=Path, help="upload store (env BONEXR_UPLOAD_DIR, default uploads)"
    )


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="run the inference service (configuration: BONEXR_* env vars)")
    _add_server_options(p)
    p.set_defaults(handler=_cmd_serve)
    p = sub.add_parser(
        "run", help="quick start: train the demo bundle if models/ has none, then serve"
    )
    _add_server_options(p)
    p.set_defaults(handler=_cmd_run)
