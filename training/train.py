"""Training loop for one model (router or a body part), resumable after an interruption.

A *run folder* (``runs/<name>/``) holds one sub-folder per model. Each model trains in two
phases: the head on a frozen backbone, then the whole network at a lower learning rate
(the head phase is skipped when the backbone starts from random weights: there are no
pretrained features to protect). Keras' ``BackupAndRestore`` saves weights, optimizer
state and epoch number after every epoch, so a run stopped by Ctrl-C or a crash resumes
from the last finished epoch; ``history.csv`` is appended, never restarted.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from bonexr.atomic import write_json_atomic
from bonexr.errors import ConfigError, DataError
from training.config import STRATEGIES, TrainConfig, check_choice
from training.models import ROUTER, backbone_of, build_model
from training.pipeline import BadImageLog, abnormality_weights, make_dataset, router_targets

log = logging.getLogger(__name__)

# The filtered dataset's length is unknown to Keras until the first epoch ends, which makes
# it warn that the input "ran out of data" at every epoch end; it did not.
warnings.filterwarnings("ignore", message="Your input ran out of data")

BEST_MODEL = "best.keras"
DONE_MARKER = "done.json"
HISTORY = "history.csv"


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


def distribution_strategy(name: str) -> tf.distribute.Strategy:
    """``default`` (one device), ``mirrored`` (all local GPUs), ``multiworker`` (TF_CONFIG)."""
    check_choice("strategy", name, STRATEGIES)
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multiworker":
        if "TF_CONFIG" not in os.environ:
            raise ConfigError("--strategy multiworker needs the TF_CONFIG environment variable")
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()


def make_deterministic(seed: int) -> None:
    """Seed Python, NumPy and TensorFlow and make TF ops deterministic: a seeded run on the
    CPU then repeats exactly (initial weights, input order, augmentation, gradients)."""
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def fit_verbosity(progress: bool) -> int:
    """Keras progress bars on a terminal only; one line per epoch in logs and pipes."""
    return 1 if progress and sys.stdout.isatty() else 2


def _monitor(model_name: str) -> tuple[str, str]:
    return ("val_accuracy", "max") if model_name == ROUTER else ("val_auc", "max")


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
) -> None:
    optimizer = keras.optimizers.Adam(learning_rate)
    if model_name == ROUTER:
        model.compile(optimizer, loss="categorical_crossentropy", metrics=["accuracy"])
    else:
        model.compile(
            optimizer,
            loss="binary_crossentropy",
            weighted_metrics=[],
            metrics=[keras.metrics.AUC(name="auc"), keras.metrics.BinaryAccuracy(name="accuracy")],
        )


def train_model(
    model_name: str,
    split: pd.DataFrame,
    config: TrainConfig,
    run_dir: Path,
    *,
    bad_images: BadImageLog,
    extra_callbacks: Sequence[keras.callbacks.Callback] = (),
) -> Path:
    """Train (or resume, or skip if finished) one model; return the path of its best model."""
    model_dir = Path(run_dir) / model_name
    model_dir.mkdir(parents=True, exist_ok=True)
    best_path = model_dir / BEST_MODEL
    if (model_dir / DONE_MARKER).is_file() and best_path.is_file():
        log.info("%s already trained; skipping", model_name)
        return best_path

    train, val = model_frames(split, model_name)
    classes = list(config.router_parts or config.body_parts)
    if model_name == ROUTER:
        y_train, y_val = router_targets(train, classes), router_targets(val, classes)
        w_train = w_val = None
    else:
        y_train, y_val = train["label"].to_numpy(), val["label"].to_numpy()
        weights = abnormality_weights(y_train)
        w_train = train["label"].map(weights).to_numpy()
        w_val = val["label"].map(weights).to_numpy()

    make_deterministic(config.seed)
    common: dict[str, Any] = dict(
        size=config.input_size, batch_size=config.batch_size, bad_images=bad_images
    )
    train_ds = make_dataset(
        train,
        targets=y_train,
        sample_weights=w_train,
        training=True,
        seed=config.seed,
        cache=config.cache,
        augment=config.augment,
        **common,
    )
    val_ds = make_dataset(
        val, targets=y_val, sample_weights=w_val, training=False, cache=config.cache, **common
    )

    strategy = distribution_strategy(config.strategy)
    with strategy.scope():
        model = build_model(
            model_name if model_name == ROUTER else "abnormality",
            classes=classes,
            backbone=config.backbone_for(model_name),
            input_size=config.input_size,
            weights=config.weights,
        )

    monitor, mode = _monitor(model_name)
    pretrained = config.weights not in ("none", "")
    phases = []
    if pretrained and config.head_epochs > 0:
        phases.append(("head", config.head_epochs, config.learning_rate, False))
    first_epoch = config.head_epochs if phases else 0
    finetune_lr = config.fine_tune_learning_rate if pretrained else config.learning_rate
    phases.append(("finetune", first_epoch + config.epochs, finetune_lr, True))

    for phase, last_epoch, learning_rate, train_backbone in phases:
        marker = model_dir / f"{phase}.done"
        if marker.is_file():
            continue
        with strategy.scope():
            backbone_of(model).trainable = train_backbone
            epochs_in_phase = last_epoch - (first_epoch if phase == "finetune" else 0)
            schedule = learning_rate_schedule(
                learning_rate,
                epochs=max(1, epochs_in_phase),
                steps_per_epoch=math.ceil(len(train) / config.batch_size),
            )
            _compile(model, model_name, schedule)
        if phase == "finetune" and (model_dir / "head.weights.h5").is_file():
            model.load_weights(model_dir / "head.weights.h5")
        callbacks = [
            keras.callbacks.BackupAndRestore(str(model_dir / f"backup_{phase}")),
            keras.callbacks.ModelCheckpoint(
                str(best_path),
                monitor=monitor,
                mode=mode,
                save_best_only=True,
                initial_value_threshold=_best_so_far(model_dir / HISTORY, monitor),
            ),
            keras.callbacks.EarlyStopping(
                monitor=monitor,
                mode=mode,
                patience=early_stopping_patience(config.patience, epochs_in_phase),
            ),
            keras.callbacks.CSVLogger(str(model_dir / HISTORY), append=True),
        ]
        if config.tensorboard:
            callbacks.append(keras.callbacks.TensorBoard(str(model_dir / "tensorboard")))
        callbacks.extend(extra_callbacks)
        log.info(
            "%s: %s phase, epochs up to %d, lr %g", model_name, phase, last_epoch, learning_rate
        )
        if last_epoch > 0:
            model.fit(
                train_ds,
                validation_data=val_ds,
                epochs=last_epoch,
                initial_epoch=first_epoch if phase == "finetune" else 0,
                callbacks=callbacks,
                verbose=fit_verbosity(config.progress),
                shuffle=False,  # the dataset shuffles itself, seeded
            )
        if phase == "head":
            model.save_weights(model_dir / "head.weights.h5")
        marker.write_text("done\n")

    if not best_path.is_file():  # zero epochs (e.g. a smoke run): keep the current weights
        model.save(best_path)
    _write_done(model_dir, monitor)
    return best_path


def _write_done(model_dir: Path, monitor: str) -> None:
    history = model_dir / HISTORY
    summary: dict[str, object] = {"monitor": monitor}
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
