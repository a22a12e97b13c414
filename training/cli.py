"""``bonexr train``, ``bonexr demo``, ``bonexr cv`` and ``bonexr verify``: argument parsing only.

Kept free of TensorFlow imports so ``--help`` stays instant; the work happens in
:mod:`training.run` and :mod:`training.crossval`.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from bonexr.labels import ALL_BODY_PARTS, DEFAULT_BODY_PARTS
from training.config import BACKBONE_NAMES, TrainConfig, demo_config

DEFAULT_PARTS = ",".join(p.lower() for p in DEFAULT_BODY_PARTS)
PARTS_HELP = (
    "comma-separated body parts (default: %(default)s; any of "
    + ", ".join(p.lower() for p in ALL_BODY_PARTS)
    + ")"
)
DEMO_DATA = Path("data/synthetic/MURA-v1.1")


def _quiet_tensorflow() -> None:
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("tensorflow").setLevel(logging.ERROR)


def _add_model_options(p: argparse.ArgumentParser, defaults: TrainConfig) -> None:
    g = p.add_argument_group("model and optimisation")
    g.add_argument(
        "--size",
        type=int,
        default=defaults.input_size,
        help="input side in px (default: %(default)s; MURA paper: 320)",
    )
    g.add_argument(
        "--backbone",
        choices=BACKBONE_NAMES,
        default=defaults.part_backbone,
        help="backbone of the abnormality models (default: %(default)s)",
    )
    g.add_argument(
        "--router-backbone",
        choices=BACKBONE_NAMES,
        default=defaults.router_backbone,
        help="backbone of the router (default: %(default)s)",
    )
    g.add_argument(
        "--weights",
        default=defaults.weights,
        help="imagenet | none | PATH to a local 'notop' weights file (default: %(default)s)",
    )
    g.add_argument(
        "--batch-size", type=int, default=defaults.batch_size, help="(default: %(default)s)"
    )
    g.add_argument(
        "--head-epochs",
        type=int,
        default=defaults.head_epochs,
        help="epochs training only the head on a frozen pretrained backbone (default: %(default)s)",
    )
    g.add_argument(
        "--epochs",
        type=int,
        default=defaults.epochs,
        help="fine-tuning epochs, whole network (default: %(default)s)",
    )
    g.add_argument(
        "--lr",
        type=float,
        default=defaults.learning_rate,
        help="head learning rate (default: %(default)s)",
    )
    g.add_argument(
        "--fine-tune-lr",
        type=float,
        default=defaults.fine_tune_learning_rate,
        help="fine-tuning learning rate (default: %(default)s)",
    )
    g.add_argument(
        "--patience",
        type=int,
        default=defaults.patience,
        help="early-stopping patience in epochs (default: %(default)s)",
    )
    g.add_argument("--seed", type=int, default=defaults.seed, help="(default: %(default)s)")
    g.add_argument(
        "--no-augment", action="store_true", help="disable flip/rotation/contrast augmentation"
    )
    g.add_argument("--no-cache", action="store_true", help="do not cache decoded images in memory")
    g.add_argument(
        "--strategy",
        choices=("default", "mirrored", "multiworker"),
        default="default",
        help="tf.distribute strategy: one device, all local GPUs, or workers from "
        "TF_CONFIG (default: %(default)s)",
    )
    g.add_argument("--tensorboard", action="store_true", help="also write TensorBoard logs")
    g.add_argument(
        "--split-mode",
        choices=("random", "official"),
        default=defaults.split_mode,
        help="random 72/18/10 by patient, or MURA's valid as test (default: %(default)s)",
    )
    g.add_argument(
        "--parts", default=",".join(p.lower() for p in defaults.body_parts), help=PARTS_HELP
    )


def _config_from(args: argparse.Namespace, base: TrainConfig, **overrides) -> TrainConfig:
    return TrainConfig(
        **{
            **base.to_dict(),
            "body_parts": args.parts,
            "input_size": args.size,
            "part_backbone": args.backbone,
            "router_backbone": args.router_backbone,
            "weights": args.weights,
            "batch_size": args.batch_size,
            "head_epochs": args.head_epochs,
            "epochs": args.epochs,
            "learning_rate": args.lr,
            "fine_tune_learning_rate": args.fine_tune_lr,
            "patience": args.patience,
            "seed": args.seed,
            "augment": not args.no_augment,
            "cache": not args.no_cache,
            "strategy": args.strategy,
            "tensorboard": args.tensorboard,
            "split_mode": args.split_mode,
            **overrides,
        }
    )


def _cmd_train(args: argparse.Namespace) -> int:
    _quiet_tensorflow()
    from training.run import run_training

    config = _config_from(args, TrainConfig(), name=args.name, synthetic=args.synthetic)
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
    return 0 if manifest is not None else 3


def _cmd_demo(args: argparse.Namespace) -> int:
    _quiet_tensorflow()
    from training.run import run_training
    from training.synthetic import generate_synthetic_mura

    data = args.data
    if not (data / "train_image_paths.csv").is_file():
        print(f"== generating synthetic MURA data in {data}")
        summary = generate_synthetic_mura(
            data, patients_per_part=args.patients_per_part, seed=args.seed
        )
        print(summary.describe())
    config = _config_from(args, demo_config(), name=args.name, synthetic=True)
    manifest = run_training(
        data,
        config,
        out=args.out or Path("models") / args.name,
        run_dir=args.run_dir or Path("runs") / args.name,
        resume=args.resume,
        force=args.force,
    )
    return 0 if manifest is not None else 3


def _cmd_cv(args: argparse.Namespace) -> int:
    _quiet_tensorflow()
    from training.crossval import cross_validate

    config = _config_from(args, TrainConfig(), name=args.name, synthetic=args.synthetic)
    summary = cross_validate(
        args.root,
        config,
        folds=args.folds,
        run_dir=args.run_dir or Path("runs") / f"{args.name}-cv",
        resume=args.resume,
    )
    print(summary)
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    from bonexr.bundle import verify_bundle

    manifest = verify_bundle(args.bundle)
    print(f"ok: {manifest.name} version {manifest.version}, {len(manifest.files)} files verified")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    defaults = TrainConfig()
    p = sub.add_parser("train", help="train router + per-part models, evaluate, export a bundle")
    p.add_argument("root", type=Path, help="the MURA-v1.1 folder (or peer layout)")
    p.add_argument("--name", default="bonexr", help="bundle name (default: %(default)s)")
    p.add_argument("--out", type=Path, help="bundle folder (default: models/NAME)")
    p.add_argument("--run-dir", type=Path, help="checkpoints, logs and report (default: runs/NAME)")
    p.add_argument("--split", type=Path, help="use this split.csv instead of making one")
    p.add_argument(
        "--only", help="train only these models (comma-separated: router, elbow, hand, ...)"
    )
    p.add_argument(
        "--resume", action="store_true", help="continue an interrupted run from its last checkpoint"
    )
    p.add_argument("--force", action="store_true", help="replace an existing bundle")
    p.add_argument(
        "--synthetic", action="store_true", help="mark the bundle as trained on synthetic data"
    )
    _add_model_options(p, defaults)
    p.set_defaults(handler=_cmd_train)

    demo = demo_config()
    p = sub.add_parser(
        "demo", help="generate synthetic data and train the small demo bundle (minutes)"
    )
    p.add_argument(
        "--data",
        type=Path,
        default=DEMO_DATA,
        help="synthetic dataset folder, generated if missing (default: %(default)s)",
    )
    p.add_argument(
        "--patients-per-part",
        type=int,
        default=120,
        help="synthetic patients per body part (default: %(default)s)",
    )
    p.add_argument("--name", default="demo", help="bundle name (default: %(default)s)")
    p.add_argument("--out", type=Path, help="bundle folder (default: models/NAME)")
    p.add_argument("--run-dir", type=Path, help="(default: runs/NAME)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted demo run")
    p.add_argument("--force", action="store_true", help="replace an existing bundle")
    _add_model_options(p, demo)
    p.set_defaults(handler=_cmd_demo)

    p = sub.add_parser("cv", help="k-fold cross-validation by patient (small datasets)")
    p.add_argument("root", type=Path, help="the MURA-v1.1 folder (or peer layout)")
    p.add_argument("--folds", type=int, default=5, help="(default: %(default)s)")
    p.add_argument("--name", default="bonexr", help="(default: %(default)s)")
    p.add_argument("--run-dir", type=Path, help="(default: runs/NAME-cv)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted cross-validation")
    p.add_argument("--synthetic", action="store_true", help="mark results as synthetic")
    _add_model_options(p, defaults)
    p.set_defaults(handler=_cmd_cv)

    p = sub.add_parser("verify", help="check a bundle's manifest and every file's sha256")
    p.add_argument("bundle", type=Path, help="bundle folder, e.g. models/demo")
    p.set_defaults(handler=_cmd_verify)
