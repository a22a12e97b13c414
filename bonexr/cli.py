"""The ``bonexr`` command line: one entry point for data, training and serving.

Subcommands import their (heavy) modules only when run, so ``bonexr --help`` is instant.
User mistakes (:class:`bonexr.errors.BonexrError`) print one ``error:`` line and exit 2;
Ctrl-C exits 130. Tracebacks are reserved for bugs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from bonexr.errors import BonexrError
from bonexr.labels import ALL_BODY_PARTS, DEFAULT_BODY_PARTS

Handler = Callable[[argparse.Namespace], int | None]

PARTS_HELP = (
    "comma-separated body parts (default: %(default)s; any of "
    + ", ".join(p.lower() for p in ALL_BODY_PARTS)
    + ")"
)
DEFAULT_PARTS = ",".join(p.lower() for p in DEFAULT_BODY_PARTS)


def _cmd_synth(args: argparse.Namespace) -> int:
    from training.synthetic import generate_synthetic_mura

    summary = generate_synthetic_mura(
        args.out,
        patients_per_part=args.patients_per_part,
        body_parts=args.parts,
        seed=args.seed,
        progress=not args.quiet,
    )
    print(summary.describe())
    return 0


def _cmd_index(args: argparse.Namespace) -> int:
    from training.dataset import index_dataset
    from training.io import write_csv_atomic

    index, report = index_dataset(args.root, body_parts=args.parts)
    print(report.describe())
    if args.out:
        write_csv_atomic(index, args.out)
        print(f"wrote {len(index)} rows to {args.out}")
    return 1 if report.errors and args.strict else 0


def _cmd_split(args: argparse.Namespace) -> int:
    from training.dataset import index_dataset
    from training.split import split_by_patient, split_summary, write_split

    index, report = index_dataset(args.root, body_parts=args.parts)
    print(report.describe())
    split = split_by_patient(index, mode=args.mode, seed=args.seed)
    write_split(split, args.out)
    print(split_summary(split).to_string())
    print(f"wrote {args.out}")
    return 0


def _add_parts(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--parts", default=DEFAULT_PARTS, help=PARTS_HELP)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bonexr",
        description="Bone X-ray triage: data tools, training, evaluation and serving.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("synth", help="write a synthetic MURA-v1.1-format dataset")
    p.add_argument("out", type=Path, help="folder to create (it plays the MURA-v1.1 folder)")
    p.add_argument(
        "--patients-per-part",
        type=int,
        default=40,
        help="patients per body part (default: %(default)s)",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_parts(p)
    p.set_defaults(handler=_cmd_synth)

    p = sub.add_parser("index", help="index a MURA-v1.1 (or peer-layout) folder and check it")
    p.add_argument(
        "root", type=Path, help="the MURA-v1.1 folder (holding train/, valid/ and the CSVs)"
    )
    p.add_argument("--out", type=Path, help="write the index as CSV here")
    p.add_argument("--strict", action="store_true", help="exit 1 if the CSVs and files disagree")
    _add_parts(p)
    p.set_defaults(handler=_cmd_index)

    p = sub.add_parser("split", help="split a dataset 72/18/10 by patient and write split.csv")
    p.add_argument("root", type=Path, help="the MURA-v1.1 folder")
    p.add_argument(
        "--out", type=Path, default=Path("split.csv"), help="output CSV (default: %(default)s)"
    )
    p.add_argument(
        "--mode",
        choices=("random", "official"),
        default="random",
        help="random: 72/18/10 by patient; official: MURA valid as test, validation carved "
        "from train (default: %(default)s)",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    _add_parts(p)
    p.set_defaults(handler=_cmd_split)

    from service.cli import register as register_service
    from training.cli import register as register_training

    register_training(sub)
    register_service(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if hasattr(args, "parts") and isinstance(args.parts, str):
        from bonexr.labels import normalize_body_parts

        try:
            args.parts = normalize_body_parts(args.parts)
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
