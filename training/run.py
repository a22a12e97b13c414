"""The end-to-end training command: dataset -> split -> four models -> evaluation -> bundle.

Everything a run produces lives in its run folder (``runs/<name>/``): the config, the
split, one sub-folder per model with checkpoints and logs, the report. ``--resume`` picks
up where an interrupted run stopped; finished models are not retrained. The bundle in
``models/<name>/`` is written only once every model exists and has been evaluated.

Under ``--strategy multiworker`` every host runs this with the same arguments. Only the
chief checks and writes the run folder (config, split), evaluates and exports; the other
workers read the split (the chief's file, or the same seeded split made in memory when they
do not share its filesystem), train in lock-step and write nothing. The tasks compare their
config and split before training, so a mismatch is an error rather than silent divergence.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pandas as pd

from bonexr.atomic import write_json_atomic
from bonexr.bundle import Manifest, sha256_file
from bonexr.errors import BundleError, ConfigError, DataError, ImageError
from bonexr.imaging import model_input, preprocess_file
from bonexr.labels import ALL_BODY_PARTS, MURA_BODY_PARTS, ROUTER
from bonexr.manifest import TRIAGE
from training.answers_markdown import plot_reliability
from training.baselines import baselines_report
from training.bootstrap import with_methods
from training.config import (
    DEMO_PATIENTS_PER_PART,
    MIN_TRAIN_POSITIVES,
    TrainConfig,
    load_config,
    save_config,
)
from training.dataset import data_folder, dataset_layout, index_dataset, read_boxes
from training.devices import (
    LARGE_DATASET,
    DeviceChoice,
    TimeEstimate,
    apply_precision,
    choose_device,
)
from training.distribute import Distribution, fingerprint_of, get_distribution
from training.eligibility import FittedGate, evaluate_content_gate, fit_content_gate
from training.evaluate import (
    evaluate_predictions,
    headline,
    predict_split,
    predict_true_part,
)
from training.export import export_bundle
from training.io import say, write_csv_atomic, write_text_atomic
from training.localisation import plot_examples, pointing_game
from training.model_card import intended_use, render_model_card
from training.models import as_float32, build_ensemble, build_model, members_of
from training.operating_points import (
    PartAnswers,
    answers_report,
    fit_answers,
    raw_thresholds_at,
    served_thresholds,
)
from training.pipeline import BadImageLog
from training.precision import POOL_LIMIT, PrecisionTestSet
from training.quantize import CALIBRATION_IMAGES
from training.report import plot_confusions, plot_roc, plot_training_curves, render_markdown
from training.split import (
    SPLIT_FILE_COLUMNS,
    read_split,
    split_by_patient,
    split_summary,
    write_split,
)
from training.stratify import hidden_stratification
from training.train import BEST_MODEL, HISTORY, load_done, train_model

log = logging.getLogger(__name__)


@dataclass
class RunPaths:
    """Where a run keeps its files."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.json"

    @property
    def split(self) -> Path:
        return self.root / "split.csv"

    @property
    def report_dir(self) -> Path:
        return self.root / "report"

    def model(self, name: str) -> Path:
        return self.root / name / BEST_MODEL


def prepare_run(
    run_dir: Path,
    config: TrainConfig,
    *,
    resume: bool,
    distribution: Distribution | None = None,
) -> RunPaths:
    """Create a run folder, or check that ``--resume`` uses the config it was started with.

    ``config.json`` also records the replicas and the global batch size; a resume on another
    number of replicas is refused (the global batch and the learning-rate schedule would
    change under the saved optimizer state).
    """
    paths = RunPaths(Path(run_dir))
    record = (distribution or get_distribution(config.strategy)).record(config.batch_size)
    if paths.config.is_file():
        if not resume:
            raise ConfigError(
                f"run folder {paths.root} already holds a run; pass --resume to continue it, "
                "or choose another --run-dir"
            )
        saved = load_config(paths.config).result_affecting()
        current = config.result_affecting()
        changed = sorted(k for k in current if saved.get(k) != current.get(k))
        if changed:
            detail = ", ".join(f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in changed)
            raise ConfigError(f"cannot resume {paths.root} with a different config ({detail})")
        saved_replicas = _saved_value(paths.config, "replicas")
        if saved_replicas is not None and saved_replicas != record["replicas"]:
            saved_batch = _saved_value(paths.config, "global_batch_size")
            raise ConfigError(
                f"cannot resume {paths.root} on {record['replicas']} replica(s): it was started "
                f"on {saved_replicas} (global batch {saved_batch}); resume it with the same "
                "number of GPUs and workers"
            )
    else:
        if resume and paths.root.exists() and any(paths.root.iterdir()):
            raise ConfigError(f"{paths.root} has no config.json; it is not a run folder")
        paths.root.mkdir(parents=True, exist_ok=True)
        save_config(config, paths.config, **record)
    return paths


def _saved_value(path: Path, key: str) -> Any:
    """One key of a saved ``config.json`` (None if absent: runs from before it was recorded)."""
    try:
        return json.loads(path.read_text()).get(key)
    except (OSError, json.JSONDecodeError, AttributeError):
        return None


def with_router_parts(config: TrainConfig, index: pd.DataFrame) -> TrainConfig:
    """``config`` with ``router_parts`` filled in: as given, or every MURA body part in
    ``index`` (canonical order); every part with an abnormality model must be there."""
    present = set(index["body_part"])
    absent = [p for p in (*config.body_parts, *config.router_parts) if p not in present]
    if absent:
        raise DataError(f"the dataset has no images of {', '.join(dict.fromkeys(absent))}")
    if config.router_parts:
        return config
    return dataclasses.replace(
        config, router_parts=tuple(p for p in ALL_BODY_PARTS if p in present)
    )


def abnormal_training_studies(split: pd.DataFrame) -> dict[str, int]:
    """Abnormal studies per body part in the training split."""
    train = split[split["split"] == "train"]
    studies = train.groupby(["body_part", "study_id"])["label"].max().reset_index()
    return {str(k): int(v) for k, v in studies.groupby("body_part")["label"].sum().items()}


def with_model_parts(config: TrainConfig, split: pd.DataFrame) -> TrainConfig:
    """``config`` with the parts that get an abnormality model filled in.

    ``--parts auto`` (empty): every router part with at least :data:`MIN_TRAIN_POSITIVES`
    abnormal training studies; the rest are recognised by the router and answered "no
    model for it". Parts named explicitly are kept, with a warning for each below it.
    """
    positives = abnormal_training_studies(split)
    short = {p: positives.get(p, 0) for p in config.router_parts}
    short = {p: n for p, n in short.items() if n < MIN_TRAIN_POSITIVES}
    if config.body_parts:
        for part in config.body_parts:
            if part in short:
                say(
                    f"warning: {part.lower()} has {short[part]} abnormal training studies "
                    f"(fewer than {MIN_TRAIN_POSITIVES}): its abnormality model and figures "
                    "rest on very few cases"
                )
        return config
    chosen = tuple(p for p in config.router_parts if p not in short)
    for part, n in short.items():
        say(
            f"note: {part.lower()} has {n} abnormal training studies (fewer than "
            f"{MIN_TRAIN_POSITIVES}): the router learns it, no abnormality model is trained"
        )
    if not chosen:
        raise DataError(
            f"no body part has {MIN_TRAIN_POSITIVES} abnormal training studies "
            f"({', '.join(f'{p.lower()}: {n}' for p, n in short.items())}); name parts with "
            "--parts to train on fewer"
        )
    return dataclasses.replace(config, body_parts=chosen)


def load_or_make_split(
    paths: RunPaths,
    root: Path,
    config: TrainConfig,
    split_csv: Path | None,
    *,
    write: bool = True,
) -> tuple[pd.DataFrame, dict[str, Any], TrainConfig]:
    """The run's split: reuse the saved one, take ``--split``, or make a new one.

    With ``write=False`` (a non-chief worker) nothing is written: the split is the run
    folder's when this task can see it, else made exactly as the chief makes it.

    It covers the router's parts, not only those with an abnormality model. Returns
    ``config`` with ``router_parts`` filled in: as given, or every MURA body part found in
    the data (canonical order). The saved ``config.json`` keeps what the user asked for, so
    a resume compares like with like.
    """
    index, index_report = index_dataset(root, body_parts=config.router_parts or ALL_BODY_PARTS)
    say(index_report.describe())
    config = with_router_parts(config, index)
    if paths.split.is_file():
        split = read_split(paths.split, root)
    elif split_csv is not None:
        split = read_split(split_csv, root)
        if write:
            write_split(split, paths.split)
    else:
        split = split_by_patient(index, mode=config.split_mode, seed=config.seed)
        if write:
            write_split(split, paths.split)
    split = split[split["body_part"].isin(config.router_parts)].reset_index(drop=True)
    missing = set(config.router_parts) - set(split["body_part"])
    if missing:
        raise DataError(f"the split has no images of {', '.join(sorted(missing))}")
    say(split_summary(split).to_string())
    config = with_model_parts(config, split)
    provenance = {
        # the dataset folder's name only: a bundle carries no paths of the training machine
        "source": Path(root).resolve().name,
        "layout": index_report.layout,
        "split_mode": config.split_mode,
        "split_seed": config.seed,
        "split_csv_sha256": sha256_file(paths.split) if paths.split.is_file() else None,
        "index_warnings": index_report.counts,
        "counts": split_counts(split),
    }
    return split, provenance, config


def split_counts(split: pd.DataFrame) -> dict[str, dict[str, int]]:
    grouped = split.groupby("split")
    return {
        str(name): {
            "images": len(frame),
            "studies": int(frame["study_id"].nunique()),
            "patients": int(frame["patient_id"].nunique()),
            "abnormal_studies": int(frame.groupby("study_id")["label"].first().sum()),
        }
        for name, frame in grouped
    }


def start_device(config: TrainConfig) -> DeviceChoice:
    """Choose and log the training device and the Keras precision policy (before any data
    is read: ``--device gpu`` without a GPU stops here with one line)."""
    device = choose_device(config.device, mixed_precision=config.mixed_precision)
    say(f"== {device.describe()}")
    apply_precision(device)
    return device


def cpu_time_estimate(
    device: DeviceChoice, split: pd.DataFrame, config: TrainConfig, only: list[str] | None
) -> tuple[TimeEstimate, ...]:
    """On a CPU with a large dataset, the callback that estimates the run's time."""
    train = split[split["split"] == "train"]
    if device.kind != "cpu" or len(train) <= LARGE_DATASET:
        return ()
    names = [n for n in config.model_names() if not only or n in only]
    images = sum(
        len(train) if n == ROUTER else int((train["body_part"] == n.upper()).sum()) for n in names
    )
    epochs = config.epochs + (config.head_epochs if config.weights not in ("none", "") else 0)
    return (TimeEstimate(batch_size=config.batch_size, images=images, epochs=epochs),)


def train_all(
    split: pd.DataFrame,
    config: TrainConfig,
    paths: RunPaths,
    *,
    only: list[str] | None,
    bad_images: BadImageLog,
    callbacks: tuple = (),
    distribution: Distribution | None = None,
    boxes: pd.DataFrame | None = None,
) -> None:
    names = config.model_names()
    unknown = sorted(set(only or []) - set(names))
    if unknown:
        raise ConfigError(f"--only {', '.join(unknown)}: choose from {', '.join(names)}")
    for name in names:
        if only and name not in only:
            continue
        say(f"== training {name} ({config.backbone_for(name)}, {config.input_size}px)")
        train_model(
            name,
            split,
            config,
            paths.root,
            bad_images=bad_images,
            extra_callbacks=callbacks,
            distribution=distribution,
            boxes=boxes,
        )


@dataclass(frozen=True)
class EvaluatedRun:
    """What the evaluation fitted and measured, for the model card and the export."""

    report: dict[str, Any]
    models: dict[str, keras.Model]
    test: pd.DataFrame
    answers: dict[str, PartAnswers]
    gate: FittedGate


def load_trained(path: Path, name: str, config: TrainConfig) -> keras.Model:
    """A trained model as the evaluation and the export use it: float32 (a mixed-precision
    model is copied into the float32 architecture with its float32 weights)."""
    model = keras.models.load_model(path)
    count = len(members_of(model))

    def single() -> keras.Model:
        return build_model(
            name if name == ROUTER else "abnormality",
            classes=list(config.router_parts or config.body_parts),
            backbone=config.backbone_for(name),
            input_size=config.input_size,
            weights="none",
            downsample=config.downsample_for(name),
        )

    def rebuild() -> keras.Model:
        return build_ensemble([single() for _ in range(count)]) if count else single()

    return as_float32(model, rebuild)


def evaluate_run(
    split: pd.DataFrame,
    config: TrainConfig,
    paths: RunPaths,
    bad_images: BadImageLog,
    root: Path,
) -> EvaluatedRun:
    """Load the best models; fit calibration, operating points and the content gate on
    train/validation; evaluate on test (and the heat maps where the dataset records defect
    boxes); write the report."""
    models = {name: load_trained(paths.model(name), name, config) for name in config.model_names()}
    parts = list(config.body_parts)
    say("== evaluating on the validation (thresholds) and test splits")
    validation = predict_true_part(
        models, split[split["split"] == "validation"], config, bad_images
    )
    answers = fit_answers(validation, parts, config.target_sensitivity, config.calibrator)
    # the evaluation decides on raw scores at raw thresholds: the same decisions the service
    # makes on calibrated scores at the calibrated (served) thresholds
    thresholds = raw_thresholds_at(answers, TRIAGE)
    test = predict_split(models, split[split["split"] == "test"], config, bad_images)
    report = evaluate_predictions(test, thresholds, parts, list(config.router_parts or parts))
    blocks, answers = answers_report(test, answers)
    report.update(blocks)
    report["default_operating_point"] = TRIAGE
    report["thresholds"] = served_thresholds(answers, TRIAGE)
    say("== fitting the content gate (router features: train means, validation limit)")
    gate = fit_content_gate(models["router"], split, config, bad_images)
    report["eligibility"] = evaluate_content_gate(models["router"], gate, test, config, bad_images)
    report["counts"] = split_counts(split)
    report["dataset"] = {"layout": dataset_layout(root), "source": Path(root).resolve().name}
    report["fitted_on"] = fitted_on(split)
    report["bad_images"] = dict(bad_images.failures)
    report["training"] = {name: load_done(paths.root / name) for name in config.model_names()}
    report["localisation"] = None
    report["baselines"] = baselines_report(split, test, parts, data_folder(root))
    boxes = read_boxes(root)
    report["stratification"] = hidden_stratification(test, thresholds, parts, boxes)
    if boxes is not None:
        say("== scoring the heat maps against the data's defect boxes (pointing game)")
        report["localisation"], pointed = pointing_game(
            models, test, boxes, data_folder(root), parts, config.input_size,
            train=split[split["split"] == "train"],
        )  # fmt: skip
        plot_examples(
            pointed, models, test, thresholds, data_folder(root), config.input_size,
            paths.report_dir / "plots" / "heatmaps.png",
        )  # fmt: skip
    write_report(report, test, config, paths)
    return EvaluatedRun(report, models, test, answers, gate)


def fitted_on(split: pd.DataFrame) -> dict[str, str]:
    """Which data fitted each quantity the bundle serves or the report shows."""
    by_image = bool((split.groupby("patient_id")["study_id"].nunique() == 1).all()) and bool(
        (split.groupby("study_id").size() == 1).all()
    )
    return {
        "unit_of_resampling": "image (the data set has no patient ids: each image is its own "
        "patient, so the split and every interval are by image)"
        if by_image
        else "patient (the split and every bootstrap interval keep a patient's studies together)",
        "weights": "train split",
        "checkpoint, early stopping, schedule, ensemble": "validation split",
        "calibration": "validation split: calibrator chosen by cross-fitted log-loss (5 folds "
        "over patients), then refitted on all of it",
        "operating_points": "validation split: thresholds on all of it; their validation "
        "figures cross-fitted (5 folds over patients); triage carries a one-sided 95% "
        "Clopper-Pearson guarantee or says insufficient_data",
        "content_gate": "means and covariance: train split; limit: validation split (its "
        "acceptance cross-fitted, 5 folds over patients)",
        "int8_calibration": "train split images",
        "precision_verdicts": "label-free pool (train and validation images) and validation "
        "non-inferiority",
        "test_split": "measured once for the record; fits and chooses nothing",
    }


def write_report(
    report: dict[str, Any], test: pd.DataFrame, config: TrainConfig, paths: RunPaths
) -> None:
    out = paths.report_dir
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "report.json", with_methods(report))
    write_text_atomic(
        out / "report.md", render_markdown(report, name=config.name, synthetic=config.synthetic)
    )
    # dataset-relative paths only (rel_path): the file is copied into the shareable bundle
    write_csv_atomic(test.drop(columns=["path"]), out / "test_predictions.csv")
    parts = list(config.body_parts)
    plot_roc(test, parts, out / "plots" / "roc.png")
    plot_confusions(report, out / "plots" / "confusion.png")
    plot_reliability(report, out / "plots" / "reliability.png")
    histories = {
        name: pd.read_csv(paths.root / name / HISTORY)
        for name in config.model_names()
        if (paths.root / name / HISTORY).is_file()
    }
    if histories:
        plot_training_curves(histories, out / "plots" / "training_curves.png")


def precision_pool_rows(split: pd.DataFrame, limit: int = POOL_LIMIT) -> pd.DataFrame:
    """The reduced-precision gate's label-free pool: every validation image (the
    non-inferiority check reads their labels) and training images, whole studies sampled
    (seeded) until :data:`training.precision.POOL_LIMIT` images."""
    validation = split[split["split"] == "validation"]
    train = split[split["split"] == "train"]
    studies = train["study_id"].drop_duplicates().sample(frac=1.0, random_state=0)
    sizes = train.groupby("study_id").size().reindex(studies).cumsum()
    keep = sizes[sizes <= max(0, limit - len(validation))].index
    return pd.concat([validation, train[train["study_id"].isin(keep)]])


def calibration_rows(split: pd.DataFrame, per_part: int = CALIBRATION_IMAGES) -> pd.DataFrame:
    """Training images to calibrate int8 with, up to ``per_part`` per body part (seeded)."""
    train = split[split["split"] == "train"].sample(frac=1.0, random_state=0)
    return train.groupby("body_part", sort=False).head(per_part)


def precision_images(frame: pd.DataFrame, config: TrainConfig) -> PrecisionTestSet:
    """Images of every part the router knows, prepared (unreadable ones skipped): the
    label-free pool and the test split of the export's reduced-precision gate (two-stage,
    so routing counts), and training images to calibrate int8 with."""
    pixels, parts, labels, studies, splits = [], [], [], [], []
    known = config.router_parts or config.body_parts
    for row in frame[frame["body_part"].isin(known)].to_dict("records"):
        try:
            pixels.append(preprocess_file(row["path"], config.input_size))
        except (ImageError, OSError):
            continue
        parts.append(str(row["body_part"]))
        labels.append(int(row["label"]))
        studies.append(str(row["study_id"]))
        splits.append(str(row["split"]))
    size = config.input_size
    return PrecisionTestSet(
        np.stack(pixels) if pixels else np.zeros((0, size, size), np.uint8),
        parts,
        np.asarray(labels),
        studies,
        splits,
    )


#: Validation images per body part that the export's ONNX parity check runs on.
PARITY_IMAGES_PER_PART = 3


def parity_images(validation: pd.DataFrame, config: TrainConfig) -> np.ndarray:
    """Prepared validation images of every body part (unreadable ones skipped) for the
    export's Keras-vs-ONNX check: real radiograph statistics of each part, not one part's."""
    batches = []
    for _part, rows in validation.groupby("body_part", sort=True):
        taken = 0
        for path in rows["path"]:
            try:
                batches.append(model_input(preprocess_file(path, config.input_size)))
            except (ImageError, OSError):
                continue
            taken += 1
            if taken == PARITY_IMAGES_PER_PART:
                break
    if not batches:
        return np.zeros((0, config.input_size, config.input_size, 1), np.float32)
    return np.concatenate(batches)


def run_fingerprint(split: pd.DataFrame, config: TrainConfig, only: list[str] | None) -> str:
    """What every worker of a run must agree on: the recipe, the models and the exact split
    (rows in order: the distributed input pipeline relies on the same order everywhere)."""
    rows = split[[c for c in SPLIT_FILE_COLUMNS if c in split.columns]].to_csv(index=False)
    return fingerprint_of(
        sorted(config.result_affecting().items()),
        sorted(only) if only else None,
        hashlib.sha256(rows.encode()).hexdigest(),
    )


def run_training(
    root: Path,
    config: TrainConfig,
    *,
    out: Path,
    run_dir: Path,
    split_csv: Path | None = None,
    resume: bool = False,
    force: bool = False,
    only: list[str] | None = None,
    callbacks: tuple = (),
) -> Manifest | None:
    """Train, evaluate and export; return the manifest, or None if models are still missing.

    On a non-chief worker of a multi-worker run: train, wait for the chief to evaluate and
    export, return None; nothing is written.
    """
    # First the device (hiding GPUs must precede their initialisation), then the strategy
    # (a multi-worker strategy must exist before TensorFlow runs any op).
    device = start_device(config)
    dist = get_distribution(config.strategy)
    out = Path(out)
    paths = RunPaths(Path(run_dir))

    def prepare() -> tuple[pd.DataFrame, dict[str, Any], TrainConfig]:
        if out.exists() and not force:
            raise BundleError(f"{out} already exists; pass --force to replace it")
        prepare_run(run_dir, config, resume=resume, distribution=dist)
        return load_or_make_split(paths, root, config, split_csv)

    prepared = dist.step("preparing the run", prepare, chief_only=True)

    def read_split_of_chief() -> tuple[pd.DataFrame, dict[str, Any], TrainConfig]:
        return prepared or load_or_make_split(paths, root, config, split_csv, write=False)

    agreed = dist.step(
        "checking the config and split",
        read_split_of_chief,
        fingerprint=lambda found: run_fingerprint(found[0], found[2], only),
        hint="start every worker with the same arguments and the same dataset",
    )
    assert agreed is not None
    split, provenance, config = agreed
    bad_images = BadImageLog()
    train_all(
        split,
        config,
        paths,
        only=only,
        bad_images=bad_images,
        callbacks=(*callbacks, *cpu_time_estimate(device, split, config, only)),
        distribution=dist,
        boxes=read_boxes(root) if config.box_crops else None,
    )

    if only:
        # a partial run (one of several processes, e.g. one per GPU) only trains: the
        # final run without --only evaluates and exports, once, when every model exists
        say(
            f"== trained {', '.join(only)}; run again with --resume and without --only to "
            "evaluate and export once every model is trained"
        )
        return None

    def evaluate_and_export() -> Manifest | None:
        return _evaluate_and_export(
            split, provenance, config, paths, bad_images, root, out, force, dist
        )

    # the chief evaluates and exports alone; the others wait for its outcome (no collective)
    if not dist.is_chief:
        say(f"== {dist.task}: training done; the chief evaluates and exports the bundle")
    return dist.finish("evaluating and exporting", evaluate_and_export)


def _evaluate_and_export(
    split: pd.DataFrame,
    provenance: dict[str, Any],
    config: TrainConfig,
    paths: RunPaths,
    bad_images: BadImageLog,
    root: Path,
    out: Path,
    force: bool,
    dist: Distribution,
) -> Manifest | None:
    missing = [n for n in config.model_names() if not paths.model(n).is_file()]
    if missing:
        say(f"models still to train before a bundle can be exported: {', '.join(missing)}")
        return None
    evaluated = evaluate_run(split, config, paths, bad_images, root)
    report, models = evaluated.report, evaluated.models
    write_text_atomic(
        paths.report_dir / "MODEL_CARD.md", render_model_card(report, config, provenance)
    )
    use = intended_use(config, provenance)
    say(f"== exporting bundle to {out}")
    parity = parity_images(split[split["split"] == "validation"], config)
    extra = {
        "split.csv": paths.split,
        "report.json": paths.report_dir / "report.json",
        "report.md": paths.report_dir / "report.md",
        "MODEL_CARD.md": paths.report_dir / "MODEL_CARD.md",
        "test_predictions.csv": paths.report_dir / "test_predictions.csv",
        **{f"plots/{p.name}": p for p in sorted((paths.report_dir / "plots").glob("*.png"))},
    }
    manifest = export_bundle(
        out,
        models=models,
        name=config.name,
        body_parts=list(config.body_parts),
        router_parts=list(config.router_parts),
        input_size=config.input_size,
        backbones={n: config.backbone_for(n) for n in config.model_names()},
        thresholds={p: report["thresholds"][p] for p in config.body_parts},
        answers=evaluated.answers,
        content_gate=evaluated.gate,
        metrics=with_methods(headline(report)),
        data=provenance,
        training={**config.to_dict(), **dist.record(config.batch_size)},
        synthetic=config.synthetic,
        intended_use=use,
        extra_files=extra,
        parity_images=parity,
        precision_pool=precision_images(precision_pool_rows(split), config),
        precision_test=precision_images(split[split["split"] == "test"], config),
        # int8 is calibrated on training images: validation already chooses the
        # checkpoint, thresholds and calibration, and now judges the precision
        calibration=precision_images(calibration_rows(split), config),
        force=force,
    )
    say((paths.report_dir / "report.md").read_text())
    say(f"bundle {manifest.name} version {manifest.version} written to {out}")
    return manifest


def run_demo(
    data: Path,
    config: TrainConfig,
    *,
    out: Path,
    run_dir: Path,
    patients_per_part: int = DEMO_PATIENTS_PER_PART,
    resume: bool = False,
    force: bool = False,
) -> Manifest | None:
    """The demo: generate the synthetic dataset at ``data`` if it is not there, then train.

    Multi-worker: the chief generates; a worker that does not see the chief's copy (no
    shared filesystem) then generates the same seeded data locally.
    """
    from training.synthetic import generate_synthetic_mura

    dist = get_distribution(config.strategy)  # first, before any TensorFlow op
    data = Path(data)

    def generate() -> None:
        if (data / "train_image_paths.csv").is_file():
            return
        say(f"== generating synthetic MURA data in {data}")
        # every MURA part, as in MURA: the router learns all seven (a wrist must not be
        # taken for a hand), abnormality models are trained for config.body_parts only
        summary = generate_synthetic_mura(
            data, patients_per_part=patients_per_part, seed=config.seed, body_parts=MURA_BODY_PARTS
        )
        say(summary.describe())

    dist.step("generating the synthetic data", generate, chief_only=True)
    dist.step("finding the synthetic data", generate)
    return run_training(data, config, out=out, run_dir=run_dir, resume=resume, force=force)
