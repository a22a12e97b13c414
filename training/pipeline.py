"""The ``tf.data`` input pipeline.

Decoding and resizing call :func:`bonexr.imaging.preprocess_file` -- the exact function the
service uses -- through ``tf.numpy_function`` in parallel (Pillow releases the GIL while it
decodes and resizes). Unreadable images are filtered out and remembered in a
:class:`BadImageLog`, so a corrupt file costs one warning in the report, not a crashed run.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Sequence

import numpy as np
import pandas as pd
import tensorflow as tf

from bonexr.errors import ImageError
from bonexr.imaging import preprocess_file

log = logging.getLogger(__name__)

ROTATION_DEGREES = 30.0


class BadImageLog:
    """Thread-safe record of images that failed to decode (path -> reason)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.failures: dict[str, str] = {}

    def add(self, path: str, reason: str) -> None:
        with self._lock:
            if path not in self.failures:
                log.warning("skipping unreadable image %s: %s", path, reason)
            self.failures[path] = reason


def _loader(size: int, bad_images: BadImageLog):
    def load(path: bytes) -> tuple[np.ndarray, bool]:
        name = path.decode()
        try:
            return preprocess_file(name, size), True
        except (ImageError, OSError) as exc:
            bad_images.add(name, str(exc))
            return np.zeros((size, size), np.uint8), False

    return load


def augmenter(seed: int):
    """Horizontal flip, rotation up to 30 degrees, contrast and brightness jitter."""
    import keras

    return keras.Sequential(
        [
            keras.layers.RandomFlip("horizontal", seed=seed),
            keras.layers.RandomRotation(ROTATION_DEGREES / 360.0, fill_mode="constant", seed=seed),
            keras.layers.RandomContrast(0.2, seed=seed),
            keras.layers.RandomBrightness(0.1, value_range=(0.0, 255.0), seed=seed),
        ],
        name="augment",
    )


def router_targets(frame: pd.DataFrame, classes: Sequence[str]) -> np.ndarray:
    lookup = {part: i for i, part in enumerate(classes)}
    return np.eye(len(classes), dtype=np.float32)[frame["body_part"].map(lookup).to_numpy()]


def abnormality_weights(labels: np.ndarray) -> dict[int, float]:
    """MURA paper's weighted BCE: positives weigh |N|/(|A|+|N|), negatives |A|/(|A|+|N|).

    Scaled so the mean weight is 1 (keeps the loss on the usual scale for the optimiser).
    """
    labels = np.asarray(labels)
    n_abnormal = float((labels == 1).sum())
    n_normal = float((labels == 0).sum())
    total = n_abnormal + n_normal
    if total == 0 or n_abnormal == 0 or n_normal == 0:
        return {0: 1.0, 1: 1.0}
    w_pos, w_neg = n_normal / total, n_abnormal / total
    mean = (w_pos * n_abnormal + w_neg * n_normal) / total
    return {0: w_neg / mean, 1: w_pos / mean}


def make_dataset(
    frame: pd.DataFrame,
    *,
    targets: np.ndarray,
    size: int,
    batch_size: int,
    training: bool,
    bad_images: BadImageLog,
    sample_weights: np.ndarray | None = None,
    seed: int = 0,
    cache: bool = True,
    augment: bool = True,
) -> tf.data.Dataset:
    """Build ``(image, target[, weight])`` batches; images float32 ``(N, size, size, 1)``."""
    paths = frame["path"].astype(str).to_numpy()
    columns: tuple = (paths, targets.astype(np.float32))
    if sample_weights is not None:
        columns += (np.asarray(sample_weights, np.float32),)
    ds = tf.data.Dataset.from_tensor_slices(columns)
    load = _loader(size, bad_images)

    def decode(path: tf.Tensor, *rest: tf.Tensor):
        pixels, ok = tf.numpy_function(load, [path], (tf.uint8, tf.bool), stateful=False)
        pixels.set_shape((size, size))
        ok.set_shape(())
        return (pixels, *rest, ok)

    if training and not cache:
        ds = ds.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)
    ds = ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.filter(lambda *item: item[-1]).map(lambda *item: item[:-1])
    if cache:
        ds = ds.cache()
        if training:
            ds = ds.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size)
    aug = augmenter(seed) if (training and augment) else None

    def to_float(pixels: tf.Tensor, *rest: tf.Tensor):
        image = tf.cast(pixels, tf.float32)[..., None]
        if aug is not None:
            image = tf.clip_by_value(aug(image, training=True), 0.0, 255.0)
        return (image, *rest)

    ds = ds.map(to_float, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


_FORWARD_FUNCTIONS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _forward(model):
    """One traced inference function per model, reused across calls (tracing costs seconds)."""
    if model not in _FORWARD_FUNCTIONS:
        _FORWARD_FUNCTIONS[model] = tf.function(
            lambda x: model(x, training=False), reduce_retracing=True
        )
    return _FORWARD_FUNCTIONS[model]


def predict_frame(
    model, frame: pd.DataFrame, *, size: int, batch_size: int, bad_images: BadImageLog
) -> np.ndarray:
    """Predict every row of ``frame`` with the same preprocessing as training.

    Returns an array with one row per frame row; rows whose image failed to decode are NaN
    (and are recorded in ``bad_images``).
    """
    positions = np.arange(len(frame), dtype=np.float32)
    ds = make_dataset(
        frame,
        targets=positions,
        size=size,
        batch_size=batch_size,
        training=False,
        bad_images=bad_images,
        cache=False,
    )
    n_out = int(model.output_shape[-1])
    out = np.full((len(frame), n_out), np.nan, dtype=np.float32)
    forward = _forward(model)
    for images, index in ds:
        out[index.numpy().astype(int)] = forward(images).numpy()
    return out
