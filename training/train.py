"""Training loop for one model (router or a body part), resumable after an interruption.

A *run folder* (``runs/<name>/``) holds one sub-folder per model. Each model trains in two
phases: the head on a frozen backbone, then the whole network at a lower learning rate
(the head phase is skipped when the backbone starts from random weights: there are no
pretrained features to protect). Keras' ``BackupAndRestore`` saves weights, optimizer
state and epoch number after every epoch, so a run stopped by Ctrl-C or a crash resumes
from the last finished epoch; ``history.csv`` is appended, never restarted.

Under ``--strategy multiworker`` every worker runs this same code in lock-step. The chief
writes the model folder; the others *read* it (the resume state: finished phases, the
backup to restore, the best value so far -- all workers must start from the same weights
and epoch, and they check that they do) and write their own checkpoints into a temporary
folder that is deleted afterwards (:mod:`training.distribute`).
"""

from __future__ import annotations

import json
import logging
import math
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pandas as pd
import tensorflow as tf
from sklearn.metrics import roc_auc_score

from bonexr.atomic import write_json_atomic
from bonexr.errors import DataError
from bonexr.labels import ROUTER
from training.config import TrainConfig
from training.crops import box_crops
from training.distribute import Distribution, SyncBatchNormStatistics, get_distribution
from training.metrics import study_level
from training.models import backbone_of, build_ensemble, build_model
from training.pipeline import (
    BadImageLog,
    abnormality_weights,
    make_dataset,
    predict_dataset,
    prediction_dataset,
    router_targets,
)

log = logging.getLogger(__name__)

# The filtered dataset's length is unknown to Keras until the first epoch ends, which makes
# it warn that the input "ran out of data" at every epoch end; it did not.
warnings.filterwarnings("ignore", message="Your input ran out of data")

BEST_MODEL = "best.keras"
DONE_MARKER = "done.json"
HISTORY = "history.csv"
HEAD_WEIGHTS = "head.weights.h5"
#: The run folder's decoded-image cache (used when a split exceeds --cache-memory-gb).
CACHE_DIR = "cache"
#: A part model's ensemble members (``--ensemble``): the lowest-validation-loss epochs.
MEMBERS_DIR = "members"
#: Epochs without a lower validation loss before ``plateau`` divides the rate by 10.
PLATEAU_PATIENCE = 2


def model_frames(split: pd.DataFrame, model_name: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The train and validation rows a model learns from (a part model sees only its part)."""
    rows = split if model_name == ROUTER else split[split["body_part"] == model_name.upper()]
    train, val = rows[rows["split"] == "train"], rows[rows["split"] == "validation"]
    if train.empty or val.empty:
        raise DataError(f"model {model_name!r}: no training or validation images in the split")
    if model_name != ROUTER:
        for name, frame in (("train", train), ("validation", val)):
            if frame["label"].nunique() < 2:
                raise DataError(
                    f"body part {model_name.upper()} has only label "
                    f"{int(frame['label'].iloc[0])} in "
                    f"the {name} split; an abnormality model needs normal and abnormal studies"
                )
    return train.reset_index(drop=True), val.reset_index(drop=True)


def make_deterministic(seed: int, ops: bool = True) -> None:
    """Seed Python, NumPy and TensorFlow and (``ops``) make TF ops deterministic: a seeded
    run on the CPU then repeats exactly (initial weights, input order, augmentation,
    gradients). ``--no-deterministic`` keeps the seeds but lets a GPU use its fastest,
    non-deterministic kernels."""
    keras.utils.set_random_seed(seed)
    if ops:
        tf.config.experimental.enable_op_determinism()


def fit_verbosity(progress: bool) -> int:
    """Keras progress bars on a terminal only; one line per epoch in logs and pipes."""
    return 1 if progress and sys.stdout.isatty() else 2


#: What a part model's checkpoint and early stopping follow: the AUROC of study means
#: (the level MURA is judged at and the service's study answer), not of single images.
STUDY_AUC = "val_study_auc"


def _monitor(model_name: str) -> tuple[str, str]:
    return ("val_accuracy", "max") if model_name == ROUTER else (STUDY_AUC, "max")


class StudyAuc(keras.callbacks.Callback):
    """Adds ``val_study_auc`` to each epoch's logs: the validation studies' AUROC, each
    study scored by the mean of its views (as the evaluation and the service do).

    Listed before the checkpoint, early stopping and CSV logger, which read the same logs.
    Every worker of a multi-worker run scores the whole validation split with the same
    weights, so all see the same value and stop at the same epoch.
    """

    def __init__(self, val: pd.DataFrame, *, size: int, batch_size: int, bad_images: BadImageLog):
        super().__init__()
        self.val = val
        # decoded once, kept for every epoch's pass
        self.ds = prediction_dataset(
            val, size=size, batch_size=batch_size, bad_images=bad_images, cache=True
        )

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if logs is None:
            return
        probs = predict_dataset(self.model, self.ds, len(self.val))[:, 0]
        studies = study_level(self.val.assign(prob=probs))
        both = studies["label"].nunique() == 2
        logs[STUDY_AUC] = float(roc_auc_score(studies["label"], studies["prob"])) if both else 0.5


def _best_so_far(history: Path, monitor: str) -> float | None:
    """Best monitored value already logged, so a resumed run does not overwrite a better model."""
    if not history.is_file():
        return None
    try:
        logged = pd.read_csv(history)
    except (pd.errors.EmptyDataError, pd.errors.ParserError):
        return None
    return float(logged[monitor].max()) if monitor in logged and len(logged) else None


def learning_rate_schedule(
    learning_rate: float, *, epochs: int, steps_per_epoch: int
) -> keras.optimizers.schedules.LearningRateSchedule:
    """One warm-up epoch to ``learning_rate``, then cosine decay to 1% over the budget.

    Replaces plateau-based decay: on a small, noisy validation split "plateau" fires at
    random epochs, so two seeds of the same recipe ended with very different step sizes.
    """
    warmup = max(1, steps_per_epoch)
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=learning_rate / 10.0,
        decay_steps=max(1, epochs * steps_per_epoch - warmup),
        alpha=0.1,  # ends at 1% of the peak (alpha is relative to the warm-up target)
        warmup_target=learning_rate,
        warmup_steps=warmup,
    )


def early_stopping_patience(patience: int, epochs: int) -> int:
    """At least ``patience``, and at least 40% of the epoch budget: with a decaying
    learning rate the best epochs come late, so a fixed small patience stops too early."""
    return max(patience, math.ceil(0.4 * epochs))


def _compile(
    model: keras.Model,
    model_name: str,
    learning_rate: float | keras.optimizers.schedules.LearningRateSchedule,
    jit_compile: bool = False,
) -> None:
    optimizer = keras.optimizers.Adam(learning_rate)
    if model_name == ROUTER:
        model.compile(
            optimizer,
            loss="categorical_crossentropy",
            metrics=["accuracy"],
            jit_compile=jit_compile,
        )
    else:
        model.compile(
            optimizer,
            loss="binary_crossentropy",
            weighted_metrics=[],
            metrics=[keras.metrics.AUC(name="auc"), keras.metrics.BinaryAccuracy(name="accuracy")],
            jit_compile=jit_compile,
        )


def _resume_state(model_dir: Path, monitor: str) -> dict[str, Any]:
    """What a model folder says about where training stands (read-only).

    Every worker reads the chief's folder and the workers compare these states before
    training: one that sees another state (no shared filesystem, a stale copy) would start
    from other weights or another epoch than the chief.
    """
    backups: dict[str, Any] = {}
    for backup in sorted(model_dir.glob("backup_*")):
        metadata = backup / "training_metadata.json"
        weights = backup / "latest.weights.h5"
        backups[backup.name] = {
            "metadata": metadata.read_text() if metadata.is_file() else None,
            "weights_bytes": weights.stat().st_size if weights.is_file() else None,
        }
    return {
        "done": (model_dir / DONE_MARKER).is_file() and (model_dir / BEST_MODEL).is_file(),
        "phases": sorted(p.stem for p in model_dir.glob("*.done")),
        "head_weights": (model_dir / HEAD_WEIGHTS).is_file(),
        "backups": backups,
        "best": _best_so_far(model_dir / HISTORY, monitor),
    }


class _RestoreFrom(keras.callbacks.BackupAndRestore):
    """``BackupAndRestore`` that backs up into its own folder but restores from another.

    A non-chief worker resumes from the chief's backup (all workers must continue from the
    same weights and epoch) and backs up into its temporary folder, never the chief's.
    """

    def __init__(self, backup_dir: str, restore_dir: str) -> None:
        super().__init__(backup_dir)
        self._source = keras.callbacks.BackupAndRestore(restore_dir, delete_checkpoint=False)

    def set_model(self, model: keras.Model) -> None:
        super().set_model(model)
        self._source.set_model(model)

    def on_train_begin(self, logs: dict | None = None) -> None:
        self._source.on_train_begin(logs)


def _backup_callback(out: Path, model_dir: Path, phase: str) -> keras.callbacks.Callback:
    name = f"backup_{phase}"
    if out == model_dir:
        return keras.callbacks.BackupAndRestore(str(out / name))
    return _RestoreFrom(str(out / name), str(model_dir / name))


def train_model(
    model_name: str,
    split: pd.DataFrame,
    config: TrainConfig,
    run_dir: Path,
    *,
    bad_images: BadImageLog,
    extra_callbacks: Sequence[keras.callbacks.Callback] = (),
    distribution: Distribution | None = None,
    boxes: pd.DataFrame | None = None,
) -> Path:
    """Train (or resume, or skip if finished) one model; return the path of its best model.

    ``boxes`` (the data set's defect boxes) with ``config.box_crops`` add zoomed crops to a
    part model's training rows (:func:`training.crops.box_crops`).

    On a non-chief worker of a multi-worker run the returned path is the chief's: this
    worker wrote nothing there.
    """
    dist = distribution or get_distribution(config.strategy)
    model_dir = Path(run_dir) / model_name
    best_path = model_dir / BEST_MODEL
    monitor, _ = _monitor(model_name)
    state = dist.step(
        f"resuming {model_name}",
        lambda: _resume_state(model_dir, monitor),
        fingerprint=lambda found: json.dumps(found, sort_keys=True, default=str),
        hint="every worker must see the chief's run folder at the same path (a shared "
        "filesystem) to resume; start a new run folder otherwise",
    )
    assert state is not None
    if state["done"]:
        log.info("%s already trained; skipping", model_name)
        return best_path

    classes = list(config.router_parts or config.body_parts)
    inputs = _model_inputs(
        model_name, split, config, Path(run_dir), dist, classes, bad_images=bad_images, boxes=boxes
    )
    with dist.strategy.scope():
        model = build_model(
            model_name if model_name == ROUTER else "abnormality",
            classes=classes,
            backbone=config.backbone_for(model_name),
            input_size=config.input_size,
            weights=config.weights_for(model_name),
            downsample=config.downsample_for(model_name),
        )

    best = state["best"]
    head_trained_here = False
    with dist.write_dir(model_dir) as out:  # the chief: model_dir; other workers: a temp dir
        out.mkdir(parents=True, exist_ok=True)
        job = _Job(model_name, config, dist, model_dir, out, inputs, bad_images, extra_callbacks)
        for phase in _phases(model_name, config):
            if phase.name in state["phases"]:
                continue
            # this task's own file when it trained the head (a worker must not wait for
            # the chief's), the chief's when resuming after the head phase
            head = out if head_trained_here else model_dir
            has_head = head_trained_here or state["head_weights"]
            best = _train_phase(job, model, phase, best, head / HEAD_WEIGHTS if has_head else None)
            head_trained_here = head_trained_here or phase.name == "head"
        _finish_model(job, model)
    return best_path


@dataclass(frozen=True)
class _Inputs:
    """A model's training and validation rows and the datasets made of them."""

    train: pd.DataFrame
    val: pd.DataFrame
    train_ds: tf.data.Dataset
    val_ds: tf.data.Dataset
    #: Images per step over all replicas (``--batch-size`` is per replica).
    global_batch: int


@dataclass(frozen=True)
class _Phase:
    """One training phase: the head on a frozen backbone, or the whole network."""

    name: str  # "head" or "finetune"
    #: Keras counts epochs on across phases: fine-tuning starts where the head stopped.
    initial_epoch: int
    last_epoch: int
    learning_rate: float
    train_backbone: bool

    @property
    def epochs(self) -> int:
        """Epochs this phase itself runs."""
        return self.last_epoch - self.initial_epoch


@dataclass(frozen=True)
class _Job:
    """What every phase of one model's training shares."""

    model_name: str
    config: TrainConfig
    dist: Distribution
    #: The model's folder in the run (the chief's; read by every worker).
    model_dir: Path
    #: Where this process writes: ``model_dir`` on the chief, a temporary folder elsewhere.
    out: Path
    inputs: _Inputs
    bad_images: BadImageLog
    extra_callbacks: Sequence[keras.callbacks.Callback]


def _training_rows(
    model_name: str,
    split: pd.DataFrame,
    config: TrainConfig,
    model_dir: Path,
    boxes: pd.DataFrame | None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The model's train and validation rows, a part model's train rows with box crops."""
    train, val = model_frames(split, model_name)
    if model_name != ROUTER and config.box_crops:
        crops = box_crops(train, boxes, config.box_crops, model_dir / "crops", config.seed)
        log.info("%s: %d box crops added to %d training images", model_name, len(crops), len(train))
        train = pd.concat([train, crops], ignore_index=True)
    return train, val


def _targets(
    model_name: str, train: pd.DataFrame, val: pd.DataFrame, classes: list[str]
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Targets and sample weights (train, validation): one-hot parts for the router,
    labels with the MURA paper's class weights for a part model."""
    if model_name == ROUTER:
        return router_targets(train, classes), router_targets(val, classes), None, None
    y_train, y_val = train["label"].to_numpy(), val["label"].to_numpy()
    weights = abnormality_weights(y_train)
    w_train = train["label"].map(weights).to_numpy()
    w_val = val["label"].map(weights).to_numpy()
    return y_train, y_val, w_train, w_val


def _model_inputs(
    model_name: str,
    split: pd.DataFrame,
    config: TrainConfig,
    run_dir: Path,
    dist: Distribution,
    classes: list[str],
    *,
    bad_images: BadImageLog,
    boxes: pd.DataFrame | None,
) -> _Inputs:
    """The model's rows and datasets; seeds everything (:func:`make_deterministic`) after
    the crops and before the datasets and the model, which draw from the seeded state."""
    train, val = _training_rows(model_name, split, config, run_dir / model_name, boxes)
    y_train, y_val, w_train, w_val = _targets(model_name, train, val, classes)

    make_deterministic(config.seed, config.deterministic)
    # --batch-size is per replica: the pipeline yields global batches, tf.distribute splits
    # each among the replicas (and, with several workers, among the workers).
    global_batch = dist.global_batch(config.batch_size)
    common: dict[str, Any] = dict(
        size=config.input_size,
        batch_size=global_batch,
        bad_images=bad_images,
        min_batch=dist.replicas,  # no replica may get an empty batch
        # the run folder's decoded-image cache, shared by its models and later runs; one
        # process only (workers of a multi-worker run would write the same files)
        disk_cache=run_dir / CACHE_DIR if dist.workers == 1 else None,
        memory_budget_gb=config.cache_memory_gb,
    )
    train_ds = make_dataset(
        train,
        targets=y_train,
        sample_weights=w_train,
        training=True,
        seed=config.seed,
        cache=config.cache,
        augment=config.augment,
        jitter=config.jitter,
        **common,
    )
    val_ds = make_dataset(
        val, targets=y_val, sample_weights=w_val, training=False, cache=config.cache, **common
    )
    return _Inputs(train, val, train_ds, val_ds, global_batch)


def _phases(model_name: str, config: TrainConfig) -> list[_Phase]:
    """The head phase (a pretrained backbone with ``head_epochs`` only), then fine-tuning
    of the whole network, at the fine-tuning rate when the backbone was pretrained."""
    pretrained = config.weights_for(model_name) not in ("none", "")
    phases = []
    if pretrained and config.head_epochs > 0:
        phases.append(_Phase("head", 0, config.head_epochs, config.learning_rate, False))
    first_epoch = config.head_epochs if phases else 0
    finetune_lr = config.fine_tune_learning_rate if pretrained else config.learning_rate
    last_epoch = first_epoch + config.epochs_for(model_name)
    phases.append(_Phase("finetune", first_epoch, last_epoch, finetune_lr, True))
    return phases


def _train_phase(
    job: _Job, model: keras.Model, phase: _Phase, best: float | None, head_weights: Path | None
) -> float | None:
    """Compile ``model`` for ``phase`` (fine-tuning starts from ``head_weights`` when
    given), fit it and mark the phase done; return the best monitored value so far."""
    config = job.config
    with job.dist.strategy.scope():
        backbone_of(model).trainable = phase.train_backbone
        schedule: float | keras.optimizers.schedules.LearningRateSchedule = (
            phase.learning_rate
            if config.lr_schedule == "plateau"
            else learning_rate_schedule(
                phase.learning_rate,
                epochs=max(1, phase.epochs),
                steps_per_epoch=math.ceil(len(job.inputs.train) / job.inputs.global_batch),
            )
        )
        _compile(model, job.model_name, schedule, config.jit_compile)
    if phase.name == "finetune" and head_weights is not None:
        model.load_weights(head_weights)
    checkpoint, callbacks = _phase_callbacks(job, phase, best)
    log.info(
        "%s: %s phase, epochs up to %d, lr %g",
        job.model_name,
        phase.name,
        phase.last_epoch,
        phase.learning_rate,
    )
    if phase.last_epoch > 0:
        model.fit(
            job.inputs.train_ds,
            validation_data=job.inputs.val_ds,
            epochs=phase.last_epoch,
            initial_epoch=phase.initial_epoch,
            callbacks=callbacks,
            verbose=fit_verbosity(config.progress),
            shuffle=False,  # the dataset shuffles itself, seeded
        )
    # the best value so far, the same on every worker (logged metrics are global)
    best = None if checkpoint.best is None else float(checkpoint.best)
    if phase.name == "head":
        model.save_weights(job.out / HEAD_WEIGHTS)
    (job.out / f"{phase.name}.done").write_text("done\n")
    return best


def _phase_callbacks(
    job: _Job, phase: _Phase, best: float | None
) -> tuple[keras.callbacks.ModelCheckpoint, list[keras.callbacks.Callback]]:
    """The checkpoint (kept apart: its best value carries over to the next phase) and
    every callback of the phase's fit, in the order they must run."""
    config, out, model_name = job.config, job.out, job.model_name
    monitor, mode = _monitor(model_name)
    checkpoint = keras.callbacks.ModelCheckpoint(
        str(out / BEST_MODEL),
        monitor=monitor,
        mode=mode,
        save_best_only=True,
        initial_value_threshold=best,
    )
    study_auc = (
        []
        if model_name == ROUTER
        else [
            StudyAuc(
                job.inputs.val,
                size=config.input_size,
                batch_size=job.inputs.global_batch,
                bad_images=job.bad_images,
            )
        ]
    )
    callbacks = [
        *([SyncBatchNormStatistics(job.dist.strategy)] if job.dist.replicas > 1 else []),
        *study_auc,  # before everything that reads val_study_auc
        _backup_callback(out, job.model_dir, phase.name),
        checkpoint,
        keras.callbacks.EarlyStopping(
            monitor=monitor,
            mode=mode,
            patience=early_stopping_patience(config.patience, phase.epochs),
        ),
        keras.callbacks.CSVLogger(str(out / HISTORY), append=True),
    ]
    if config.lr_schedule == "plateau":  # the MURA paper: / 10 when val loss stalls
        callbacks.append(
            keras.callbacks.ReduceLROnPlateau(
                monitor="val_loss", factor=0.1, patience=PLATEAU_PATIENCE, min_lr=1e-7
            )
        )
    if config.ensemble > 1 and model_name != ROUTER:
        callbacks.append(KeepLowestLoss(out / MEMBERS_DIR, config.ensemble))
    if config.tensorboard:
        callbacks.append(keras.callbacks.TensorBoard(str(out / "tensorboard")))
    callbacks.extend(job.extra_callbacks)
    return checkpoint, callbacks


def _finish_model(job: _Job, model: keras.Model) -> None:
    """Save the final best model (these weights after zero epochs; the ensemble of the
    kept members with ``--ensemble``) and write ``done.json``."""
    config, out, model_name = job.config, job.out, job.model_name
    if not (out / BEST_MODEL).is_file():  # zero epochs (a smoke run): keep these weights
        model.save(out / BEST_MODEL)
    if config.ensemble > 1 and model_name != ROUTER:
        rebuild = lambda: build_model(  # noqa: E731
            "abnormality",
            backbone=config.backbone_for(model_name),
            input_size=config.input_size,
            weights="none",
        )
        ensemble = assemble_ensemble(out / MEMBERS_DIR, rebuild)
        if ensemble is not None:
            ensemble.save(out / BEST_MODEL)
    monitor, _ = _monitor(model_name)
    _write_done(out, monitor, job.dist.record(config.batch_size))


class KeepLowestLoss(keras.callbacks.Callback):
    """Keeps the weights of the ``k`` epochs with the lowest validation loss (the MURA
    paper's ensemble), in ``folder`` with an index (``members.json``) that a resumed run
    continues from."""

    def __init__(self, folder: Path, k: int, monitor: str = "val_loss") -> None:
        super().__init__()
        self.folder, self.k, self.monitor = Path(folder), k, monitor
        index = self.folder / "members.json"
        self.kept: list[dict[str, Any]] = json.loads(index.read_text()) if index.is_file() else []

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        value = (logs or {}).get(self.monitor)
        if value is None or not math.isfinite(float(value)):
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        name = f"epoch{epoch + 1:03d}.weights.h5"
        self.model.save_weights(self.folder / name)
        ranked = sorted([*self.kept, {"epoch": epoch + 1, "value": float(value), "file": name}],
                        key=lambda m: m["value"])  # fmt: skip
        for dropped in ranked[self.k :]:
            (self.folder / dropped["file"]).unlink(missing_ok=True)
        self.kept = ranked[: self.k]
        write_json_atomic(self.folder / "members.json", self.kept)


def assemble_ensemble(folder: Path, rebuild: Any) -> keras.Model | None:
    """The averaging model of the members :class:`KeepLowestLoss` kept (None: none kept)."""
    index = Path(folder) / "members.json"
    if not index.is_file():
        return None
    members = []
    for member in json.loads(index.read_text()):
        model = rebuild()
        model.load_weights(Path(folder) / member["file"])
        members.append(model)
    return build_ensemble(members) if members else None


def _write_done(model_dir: Path, monitor: str, distribution: dict[str, int]) -> None:
    history = model_dir / HISTORY
    summary: dict[str, object] = {"monitor": monitor, **distribution}
    if history.is_file():
        logged = pd.read_csv(history)
        if monitor in logged and len(logged):
            best = int(np.nanargmax(logged[monitor].to_numpy()))
            summary.update(
                best_epoch=int(logged["epoch"].iloc[best]) + 1,
                best_value=float(logged[monitor].iloc[best]),
                epochs_run=len(logged),
            )
    write_json_atomic(model_dir / DONE_MARKER, summary)


def load_done(model_dir: Path) -> dict:
    path = Path(model_dir) / DONE_MARKER
    return json.loads(path.read_text()) if path.is_file() else {}
