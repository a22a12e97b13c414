"""Arguments of the data and training commands: ``synth``, ``index``, ``split``, ``train``,
``demo`` and ``cv``. Parsing only: each handler calls one plain function of this package.

Kept free of TensorFlow imports (the work modules are imported inside the handlers), so
``bonexr --help`` stays instant.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bonexr.errors import BonexrError
from bonexr.labels import ALL_BODY_PARTS, MURA_BODY_PARTS
from training.cluster import cluster_from_env
from training.config import (
    CLI_OPTIONS,
    DEMO_DATA,
    DEMO_PATIENTS_PER_PART,
    SPLIT_MODES,
    TrainConfig,
    demo_config,
    with_recipe,
)

PARTS_HELP = "comma-separated body parts; any of " + ", ".join(p.lower() for p in ALL_BODY_PARTS)


def quiet_tensorflow() -> None:
    import os

    from training.io import show_run_messages

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    show_run_messages()


def _parts_default(parts: tuple[str, ...]) -> str:
    return ",".join(p.lower() for p in parts)


def add_parts_option(parser: argparse.ArgumentParser, default: tuple[str, ...]) -> None:
    """``--parts`` for the data commands (the training commands get it from CLI_OPTIONS)."""
    parser.add_argument(
        "--parts",
        dest="body_parts",
        default=_parts_default(default),
        help=PARTS_HELP + " (default: %(default)s)",
    )


GIVEN = "_given_options"


def _mark_given(namespace: argparse.Namespace, dest: str) -> None:
    setattr(namespace, GIVEN, {*getattr(namespace, GIVEN, set()), dest})


class _Store(argparse.Action):
    """``store`` that also records that the flag was given (a recipe must not override it,
    even when its value equals the default)."""

    def __call__(self, parser: Any, namespace: Any, values: Any, option_string: Any = None) -> None:
        setattr(namespace, self.dest, values)
        _mark_given(namespace, self.dest)


class _Flag(argparse.BooleanOptionalAction):
    """``--x / --no-x`` that also records that it was given."""

    def __call__(self, parser: Any, namespace: Any, values: Any, option_string: Any = None) -> None:
        super().__call__(parser, namespace, values, option_string)
        _mark_given(namespace, self.dest)


def add_training_options(
    parser: argparse.ArgumentParser, defaults: TrainConfig, *, auto_parts: bool = False
) -> None:
    """One flag per :data:`training.config.CLI_OPTIONS` entry, dest = the field name."""
    group = parser.add_argument_group("model and optimisation")
    for option in CLI_OPTIONS:
        default = getattr(defaults, option.field)
        kwargs: dict[str, Any] = {"dest": option.field, "help": option.help}
        if option.field == "body_parts":
            # `train` and `cv` train what the data supports unless told otherwise
            parts = "auto" if auto_parts else _parts_default(default)
            kwargs.update(default=parts, help=PARTS_HELP + ", or auto")
        elif option.field == "router_parts":
            kwargs.update(default="", help=option.help + "; empty: every part in the data")
        elif isinstance(default, bool):
            kwargs.update(action=_Flag, default=default)
        else:
            kwargs.update(type=type(default), default=default, choices=option.choices)
        kwargs.setdefault("action", _Store)
        kwargs["help"] += " (default: %(default)s)"
        group.add_argument(*option.flags, **kwargs)


def config_from_args(args: argparse.Namespace, base: TrainConfig, **overrides: Any) -> TrainConfig:
    """``base`` with every CLI option the user gave (by field name) and ``overrides``, then
    the ``--recipe`` preset for the fields the user left at their defaults."""
    values = {option.field: getattr(args, option.field) for option in CLI_OPTIONS}
    config = TrainConfig(**{**base.to_dict(), **values, **overrides})
    return with_recipe(config, set(getattr(args, GIVEN, set())) | set(overrides))


def _cmd_synth(args: argparse.Namespace) -> int:
    from training.synthetic import generate_synthetic_mura

    summary = generate_synthetic_mura(
        args.out,
        patients_per_part=args.patients_per_part,
        body_parts=args.body_parts,
        seed=args.seed,
        progress=not args.quiet,
    )
    print(summary.describe())
    return 0


def _cmd_index(args: argparse.Namespace) -> int:
    from training.dataset import index_dataset
    from training.io import write_csv_atomic

    index, report = index_dataset(args.root, body_parts=args.body_parts)
    print(report.describe())
    if args.out:
        write_csv_atomic(index, args.out)
        print(f"wrote {len(index)} rows to {args.out}")
    return 1 if report.errors and args.strict else 0


def _cmd_split(args: argparse.Namespace) -> int:
    from training.dataset import index_dataset
    from training.split import split_by_patient, split_summary, write_split

    index, report = index_dataset(args.root, body_parts=args.body_parts)
    print(report.describe())
    split = split_by_patient(index, mode=args.mode, seed=args.seed)
    write_split(split, args.out)
    print(split_summary(split).to_string())
    print(f"wrote {args.out}")
    return 0


def _exit_code(manifest: object, strategy: str) -> int:
    """0 with a bundle; 3 when models are still missing (``--only``); 0 on a non-chief
    worker of a multi-worker run, which never exports (the chief does)."""
    if manifest is not None:
        return 0
    from training.distribute import current_task_is_chief

    return 3 if current_task_is_chief(strategy) else 0


def _in_cluster() -> bool:
    """Whether this process joined a multi-worker cluster (never imports TensorFlow)."""
    module = sys.modules.get("training.distribute")
    return bool(module is not None and module.in_multi_worker_cluster())


def _run_training_command(strategy: str, work: Callable[[], int]) -> int:
    """Run ``work``; under ``--strategy multiworker``, check TF_CONFIG first and, once this
    process has joined a cluster, end the process here with the command's exit code.

    TF_CONFIG is checked before TensorFlow is imported, so a mistake in it is one ``error:``
    line. The hard exit: TensorFlow 2.21 has no call that leaves a cluster, and a task that
    simply returns stops sending heartbeats at interpreter exit, which makes the others
    (the chief above all) wait 15-40 s and log an UNAVAILABLE error before they can exit.
    Every task reaches the end together (the run's last step is an agreement), so all of
    them leave at once, after flushing their output.
    """
    if strategy != "multiworker":
        return work()
    cluster_from_env()
    try:
        code = work()
    except BaseException as exc:
        if not _in_cluster():
            raise
        code = _report_failure(exc)
    if not _in_cluster():
        return code
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(code)


def _report_failure(exc: BaseException) -> int:
    """What ``bonexr``'s main would print and return for ``exc``, for the hard exit."""
    if isinstance(exc, BonexrError):
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if isinstance(exc, KeyboardInterrupt):
        print("interrupted", file=sys.stderr)
        return 130
    import tensorflow as tf

    if isinstance(exc, tf.errors.OpError):  # often: another task of the cluster stopped
        detail = (exc.message or str(exc)).strip()
        print(
            f"error: the multi-worker run stopped ({type(exc).__name__}): {detail}", file=sys.stderr
        )
        return 1
    traceback.print_exception(exc)
    return 1


def _cmd_train(args: argparse.Namespace) -> int:
    config = config_from_args(args, TrainConfig(), name=args.name, synthetic=args.synthetic)

    def work() -> int:
        quiet_tensorflow()
        from training.run import run_training

        manifest = run_training(
            args.root,
            config,
            out=args.out or Path("models") / args.name,
            run_dir=args.run_dir or Path("runs") / args.name,
            split_csv=args.split,
            resume=args.resume,
            force=args.force,
            only=[s.strip().lower() for s in args.only.split(",")] if args.only else None,
        )
        return _exit_code(manifest, config.strategy)

    return _run_training_command(config.strategy, work)


def _cmd_demo(args: argparse.Namespace) -> int:
    config = config_from_args(args, demo_config(), name=args.name, synthetic=True)

    def work() -> int:
        quiet_tensorflow()
        from training.run import run_demo

        manifest = run_demo(
            args.data,
            config,
            out=args.out or Path("models") / args.name,
            run_dir=args.run_dir or Path("runs") / args.name,
            patients_per_part=args.patients_per_part,
            resume=args.resume,
            force=args.force,
        )
        return _exit_code(manifest, config.strategy)

    return _run_training_command(config.strategy, work)


def _cmd_cv(args: argparse.Namespace) -> int:
    config = config_from_args(args, TrainConfig(), name=args.name, synthetic=args.synthetic)
    quiet_tensorflow()
    from training.crossval import cross_validate

    summary = cross_validate(
        args.root,
        config,
        folds=args.folds,
        run_dir=args.run_dir or Path("runs") / f"{args.name}-cv",
        resume=args.resume,
    )
    print(summary)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the data and training subcommands to the ``bonexr`` parser."""
    defaults = TrainConfig()

    p = sub.add_parser("synth", help="write a synthetic MURA-v1.1-format dataset")
    p.add_argument("out", type=Path, help="folder to create (it plays the MURA-v1.1 folder)")
    p.add_argument(
        "--patients-per-part", type=int, default=40, help="patients per body part (default: 40)"
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_parts_option(p, MURA_BODY_PARTS)  # all seven, like MURA: the router learns them all
    p.set_defaults(handler=_cmd_synth)

    p = sub.add_parser("index", help="index a MURA-v1.1 (or peer-layout) folder and check it")
    p.add_argument("root", type=Path, help="the MURA-v1.1 folder (train/, valid/, the CSVs)")
    p.add_argument("--out", type=Path, help="write the index as CSV here")
    p.add_argument("--strict", action="store_true", help="exit 1 if the CSVs and files disagree")
    add_parts_option(p, ALL_BODY_PARTS)
    p.set_defaults(handler=_cmd_index)

    p = sub.add_parser("split", help="split a dataset 72/18/10 by patient and write split.csv")
    p.add_argument("root", type=Path, help="the MURA-v1.1 folder")
    p.add_argument("--out", type=Path, default=Path("split.csv"), help="(default: %(default)s)")
    p.add_argument(
        "--mode",
        choices=SPLIT_MODES,
        default=defaults.split_mode,
        help="random: 72/18/10 by patient; official: MURA valid as test, validation carved "
        "from train (default: %(default)s)",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    add_parts_option(p, ALL_BODY_PARTS)
    p.set_defaults(handler=_cmd_split)

    p = sub.add_parser("train", help="train router + per-part models, evaluate, export a bundle")
    p.add_argument("root", type=Path, help="the MURA-v1.1 folder (or peer layout)")
    _add_run_options(p, default_name="bonexr")
    p.add_argument("--split", type=Path, help="use this split.csv instead of making one")
    p.add_argument("--only", help="train only these models (comma-separated: router, elbow, ...)")
    p.add_argument("--synthetic", action="store_true", help="mark the bundle as synthetic-data")
    add_training_options(p, defaults, auto_parts=True)
    p.set_defaults(handler=_cmd_train)

    p = sub.add_parser("demo", help="generate synthetic data and train the small demo bundle")
    p.add_argument(
        "--data",
        type=Path,
        default=DEMO_DATA,
        help="synthetic dataset folder, generated if missing (default: %(default)s)",
    )
    p.add_argument(
        "--patients-per-part",
        type=int,
        default=DEMO_PATIENTS_PER_PART,
        help="synthetic patients per body part (default: %(default)s)",
    )
    _add_run_options(p, default_name="demo")
    add_training_options(p, demo_config())
    p.set_defaults(handler=_cmd_demo)

    p = sub.add_parser("cv", help="k-fold cross-validation by patient (small datasets)")
    p.add_argument("root", type=Path, help="the MURA-v1.1 folder (or peer layout)")
    p.add_argument("--folds", type=int, default=5, help="(default: %(default)s)")
    p.add_argument("--name", default="bonexr", help="(default: %(default)s)")
    p.add_argument("--run-dir", type=Path, help="(default: runs/NAME-cv)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted cross-validation")
    p.add_argument("--synthetic", action="store_true", help="mark results as synthetic")
    add_training_options(p, defaults, auto_parts=True)
    p.set_defaults(handler=_cmd_cv)


def _add_run_options(p: argparse.ArgumentParser, *, default_name: str) -> None:
    p.add_argument("--name", default=default_name, help="bundle name (default: %(default)s)")
    p.add_argument("--out", type=Path, help="bundle folder (default: models/NAME)")
    p.add_argument("--run-dir", type=Path, help="checkpoints, logs and report (default: runs/NAME)")
    p.add_argument(
        "--resume", action="store_true", help="continue an interrupted run from its checkpoints"
    )
    p.add_argument("--force", action="store_true", help="replace an existing bundle")
