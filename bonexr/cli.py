"""The ``bonexr`` command line: the one entry module. It parses and dispatches, nothing more.

Each command's arguments are declared by the package that owns the command
(``training.cli``: synth, index, split, train, demo, cv; ``service.doors.cli``: serve) and its
work is a plain function there. The core imports nothing from ``training`` or ``service``:
those command modules are named here as strings and loaded with :mod:`importlib` when the
parser is built, the way console entry points are, so the serving image (no TensorFlow,
no ``training`` extras) and ``bonexr --help`` stay light. Two commands belong to no single
package: ``verify`` (the bundle contract lives in the core) and ``run`` (the quick start:
the demo bundle from ``training.run.run_demo`` if none is there, then ``service.doors.server``).

User mistakes (:class:`bonexr.errors.BonexrError`) print one ``error:`` line and exit 2
(``verify`` exits 1 on a refused bundle); Ctrl-C exits 130. Tracebacks are for bugs.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bonexr.errors import BonexrError, BundleError

Handler = Callable[[argparse.Namespace], int | None]

#: Packages that contribute subcommands through a ``register(subparsers)`` function.
COMMAND_MODULES: tuple[str, ...] = ("training.cli", "service.doors.cli")


def _load(path: str) -> Any:
    """``"package.module:attribute"`` -> the attribute (imported now, not at module load)."""
    module, _, attribute = path.partition(":")
    return getattr(importlib.import_module(module), attribute)


def _cmd_verify(args: argparse.Namespace) -> int:
    from bonexr.bundle import verify_bundle

    try:
        manifest = verify_bundle(args.bundle)
    except BundleError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"ok: {manifest.name} version {manifest.version}, {len(manifest.files)} files verified")
    return 0


def _cmd_serving_copy(args: argparse.Namespace) -> int:
    from bonexr.bundle import serving_copy

    manifest = serving_copy(args.bundle, args.out, force=args.force)
    files = sorted(manifest.files)
    size = sum((args.out / f).stat().st_size for f in files) / 1e6
    print(f"ok: {manifest.name} version {manifest.version}: {len(files)} files, {size:.1f} MB")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    settings_overrides = _load("service.doors.cli:settings_overrides")
    load_settings = _load("service.doors.server:load_settings")
    settings = load_settings(**settings_overrides(args))
    if not _load("service.doors.server:has_bundle")(settings):
        print(
            f"bonexr: no model bundle in {settings.models_dir}; "
            "training the synthetic demo bundle first",
            flush=True,
        )
        _load("training.cli:quiet_tensorflow")()
        train_demo = _load("training.run:run_demo_default")
        if train_demo(out=Path(settings.models_dir) / "demo") is None:
            return 3
    return int(_load("service.doors.server:serve")(settings))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bonexr",
        description="Bone X-ray triage: data tools, training, evaluation and serving.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMAND_MODULES:
        try:
            register = _load(f"{module}:register")
        except ImportError:  # e.g. the serving image has no training extras
            continue
        register(sub)

    p = sub.add_parser("verify", help="check a bundle's files and its contract with this code")
    p.add_argument("bundle", type=Path, help="bundle folder, e.g. models/demo")
    p.set_defaults(handler=_cmd_verify)

    p = sub.add_parser(
        "serving-copy",
        help="publish a bundle's serving files only (ONNX, manifest, model card, report)",
    )
    p.add_argument("bundle", type=Path, help="the exported bundle, e.g. runs/fracatlas-bundle")
    p.add_argument("out", type=Path, help="where to publish the copy, e.g. models/fracatlas")
    p.add_argument("--force", action="store_true", help="replace an existing copy")
    p.set_defaults(handler=_cmd_serving_copy)

    p = sub.add_parser(
        "run", help="quick start: train the demo bundle if models/ has none, then serve"
    )
    with contextlib.suppress(ImportError):
        _load("service.doors.cli:add_server_options")(p)
    p.set_defaults(handler=_cmd_run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if isinstance(getattr(args, "body_parts", None), str) and args.body_parts != "auto":
        from bonexr.labels import normalize_body_parts

        try:
            args.body_parts = normalize_body_parts(args.body_parts)
        except BonexrError as exc:
            parser.error(str(exc))
    handler: Handler = args.handler
    try:
        return int(handler(args) or 0)
    except BonexrError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
