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
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points
from pathlib import Path

from bonexr import __version__
from bonexr.errors import BonexrError, BundleError

Handler = Callable[[argparse.Namespace], int | None]

#: The plugin registry: each entry is a ``register(subparsers)`` function.
COMMAND_GROUP = "bonexr.commands"


def registered_commands() -> list[Callable[[argparse._SubParsersAction], None]]:  # type: ignore[type-arg]
    """The installed packages' ``register`` functions, in name order (one that cannot be
    imported, e.g. ``training`` without its extras, adds nothing)."""
    found = []
    for entry in sorted(entry_points(group=COMMAND_GROUP), key=lambda e: e.name):
        try:
            found.append(entry.load())
        except ImportError:
            continue
    return found


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bonexr",
        description="Bone X-ray triage: data tools, training, evaluation and serving.",
    )
    parser.add_argument("--version", action="version", version=f"bonexr {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for register in registered_commands():
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
