"""The service's commands: ``serve``, ``run`` (the quick start), ``predict``, ``db`` and
``export-reviews``, ``shadow-report``.

Registered with the ``bonexr`` command line through the ``bonexr.commands`` entry point.
``run`` trains the demo bundle when the models folder has none by running ``bonexr demo``
as a child process: the service never imports ``training`` (the serving image has no
TensorFlow), and the training's memory is given back before the server starts.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
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
    from service.doors.server import load_settings, serve

    return serve(load_settings(**settings_overrides(args)))


def _cmd_run(args: argparse.Namespace) -> int:
    from service.doors.server import check_exposure, check_port, has_bundle, load_settings, serve

    settings = load_settings(**settings_overrides(args))
    check_exposure(settings)  # before the demo's training, not minutes later
    check_port(settings)
    if not has_bundle(settings):
        demo = Path(settings.models_dir) / "demo"
        if importlib.util.find_spec("keras") is None:
            print(
                f"bonexr: no model bundle in {settings.models_dir}, and the training packages "
                "are not installed to train the synthetic demo: put a bundle there, or run "
                "`make demo` (installs them and trains it, a few minutes)",
                file=sys.stderr,
            )
            return 3
        print(
            f"bonexr: no model bundle in {settings.models_dir}; "
            "training the synthetic demo bundle first (bonexr demo, a few minutes)",
            flush=True,
        )
        command = [sys.executable, "-m", "bonexr.cli", "demo", "--out", str(demo)]
        if subprocess.run(command, check=False).returncode != 0:
            print("bonexr: the demo bundle could not be trained (see above)", file=sys.stderr)
            return 3
        print(f"bonexr: demo trained; its evaluation report is {demo / 'report.md'}", flush=True)
    return serve(settings)


def _cmd_predict(args: argparse.Namespace) -> int:
    from service.doors.batch import predict_files
    from service.doors.server import load_settings

    settings = load_settings(models_dir=args.models_dir, bundle=args.bundle)
    summary = predict_files(
        args.inputs,
        args.out,
        settings,
        operating_point=args.operating_point,
        study_by=args.study_by,
        resume=args.resume,
        chunk_size=args.chunk_size,
        progress=not args.quiet,
    )
    print(summary.describe())
    return 0


def _cmd_db(args: argparse.Namespace) -> int:
    from service.adapters.records.database import opened
    from service.doors.server import load_settings

    settings = load_settings()
    with opened(settings.database_url, settings.upload_dir) as database:
        if args.action == "upgrade":
            database.upgrade(args.revision)
        print(f"records database {database.label}: schema {database.revision() or 'empty'}")
    return 0


def _cmd_export_reviews(args: argparse.Namespace) -> int:
    import getpass

    from bonexr.errors import ConfigError
    from service.doors.review_export import export_reviews
    from service.doors.server import load_settings

    settings = load_settings()
    try:
        summary = export_reviews(settings, args.out, by=args.by or f"cli:{getpass.getuser()}")
    except FileExistsError as exc:
        raise ConfigError(str(exc)) from None
    print(summary.describe())
    return 0


def _cmd_shadow_report(args: argparse.Namespace) -> int:
    import json

    from service.adapters.records.database import opened
    from service.adapters.records.shadow import ShadowStore
    from service.domain.shadow_report import describe, summarise
    from service.doors.server import load_settings

    settings = load_settings()
    with opened(settings.database_url, settings.upload_dir) as database:
        summary = summarise(ShadowStore(database).pairs())
    print(json.dumps(summary, indent=2) if args.json else describe(summary))
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``serve``, ``run``, ``predict``, ``db`` and ``export-reviews`` to the parser."""
    p = sub.add_parser("serve", help="run the inference service (configuration: BONEXR_* env vars)")
    add_server_options(p)
    p.set_defaults(handler=_cmd_serve)

    p = sub.add_parser(
        "run", help="quick start: train the demo bundle if models/ has none, then serve"
    )
    add_server_options(p)
    p.set_defaults(handler=_cmd_run)

    p = sub.add_parser(
        "predict",
        help="score files, folders or a MURA tree with a bundle, no server (images.csv, "
        "studies.csv, errors.csv)",
    )
    p.add_argument("inputs", nargs="+", type=Path, help="image files, folders or a MURA root")
    p.add_argument("--out", type=Path, required=True, help="folder for the CSV results")
    p.add_argument(
        "--models-dir", type=Path, help="bundle folder root (env BONEXR_MODELS_DIR, default models)"
    )
    p.add_argument(
        "--bundle", help="bundle name or path (env BONEXR_BUNDLE, default: newest in models dir)"
    )
    p.add_argument(
        "--study-by",
        choices=("auto", "parent", "none"),
        default="auto",
        help="group images into studies by their folder (auto: when an input is a MURA "
        "tree) (default: %(default)s)",
    )
    p.add_argument(
        "--operating-point",
        help="decide at this operating point of the bundle (e.g. triage, balanced; "
        "default: the bundle's default)",
    )
    p.add_argument("--resume", action="store_true", help="continue results already in --out")
    p.add_argument(
        "--chunk-size", type=int, default=64, help="images per write (default: %(default)s)"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=_cmd_predict)

    p = sub.add_parser(
        "shadow-report",
        help="the shadow bundle (BONEXR_SHADOW_BUNDLE) against the live one: agreement, "
        "AUROC against the readers, time per study",
    )
    p.add_argument("--json", action="store_true", help="the figures as JSON")
    p.set_defaults(handler=_cmd_shadow_report)

    p = sub.add_parser(
        "export-reviews",
        help="the readers' verdicts as training data: labels.csv (bonexr train reads it) with "
        "the stored images, reviews.csv (who reviewed what), disagreements.csv",
    )
    p.add_argument("--out", type=Path, required=True, help="a new folder for the export")
    p.add_argument("--by", help="the name the audit records (default: cli:<user>)")
    p.set_defaults(handler=_cmd_export_reviews)

    p = sub.add_parser(
        "db",
        help="the records database (BONEXR_DATABASE_URL): upgrade runs the migrations the "
        "service runs at start-up; current prints the schema revision",
    )
    p.add_argument("action", choices=("upgrade", "current"))
    p.add_argument("revision", nargs="?", default="head", help="target (default: head)")
    p.set_defaults(handler=_cmd_db)
