"""Arguments of ``bonexr serve`` (and the server options ``bonexr run`` shares). Parsing only."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_server_options(p: argparse.ArgumentParser) -> None:
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


def settings_overrides(args: argparse.Namespace) -> dict[str, object]:
    """The server options as ``Settings`` field overrides (``None`` = not given)."""
    return {
        "host": args.host,
        "port": args.port,
        "models_dir": args.models_dir,
        "bundle": args.bundle,
        "upload_dir": args.upload_dir,
    }


def _cmd_serve(args: argparse.Namespace) -> int:
    from service.server import load_settings, serve

    return serve(load_settings(**settings_overrides(args)))


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``serve`` to the ``bonexr`` parser."""
    p = sub.add_parser("serve", help="run the inference service (configuration: BONEXR_* env vars)")
    add_server_options(p)
    p.set_defaults(handler=_cmd_serve)
