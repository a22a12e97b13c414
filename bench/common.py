"""What every benchmark does the same way: its bundle, its options for one, its result file."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_bundle_options(parser: argparse.ArgumentParser) -> None:
    """``--bundle`` (an existing one) or ``--backbone``/``--size`` of a random-init one."""
    parser.add_argument(
        "--bundle", type=Path, help="bundle folder (default: build a random-init one)"
    )
    parser.add_argument("--size", type=int, default=224, help="input size of a built bundle")
    parser.add_argument("--backbone", default="resnet50", help="backbone of a built bundle")


def bundle_for(args: argparse.Namespace, work: Path) -> Path:
    """The ``--bundle`` given, or a random-init one built in ``work`` (speed needs no
    weights); resolved."""
    if args.bundle is not None:
        return Path(args.bundle).resolve()
    from training.export import export_random_init_bundle

    bundle = work / "models" / f"{args.backbone}-{args.size}"
    print(f"building a random-init {args.backbone} {args.size}px bundle (speed needs no weights)")
    export_random_init_bundle(bundle, input_size=args.size, backbone=args.backbone)
    return bundle.resolve()


def write_result(path: Path, result: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")
