"""The ``tf.data`` input pipeline.

Decoding and resizing call :func:`bonexr.imaging.preprocess_file` -- the exact function the
service uses -- through ``tf.numpy_function`` in parallel (Pillow releases the GIL while it
decodes and resizes). Unreadable images are filtered out and remembered in a
:class:`BadImageLog`, so a corrupt file costs one warning in the report, not a crashed run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import weakref
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import tensorflow as tf

from bonexr.atomic import write_json_atomic
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


def disk_cache_prefix(cache_dir: Path, paths: np.ndarray, columns: tuple, size: int) -> Path:
    """Where a dataset's decoded images are cached on disk: named by a hash of exactly what
    is cached (image paths, targets and weights, input size), so another model or run over
    the same images at the same size reuses it and anything else gets its own."""
    digest = hashlib.sha256(f"{size}\n".encode())
    digest.update("\n".join(map(str, paths)).encode())
    for column in columns:
        digest.update(np.ascontiguousarray(column).tobytes())
    return Path(cache_dir) / f"decoded-{size}px-{digest.hexdigest()[:16]}"


def _filled_disk_cache(
    ds: tf.data.Dataset, prefix: Path, bad_images: BadImageLog
) -> tf.data.Dataset:
    """``ds`` cached in the files at ``prefix``, decoding only when they are not complete.

    TensorFlow marks a finished cache with ``prefix.index``; an interrupted one leaves
    lock and shard files behind, which are removed and the cache written again. The first
    pass runs here, so the skipped images' reasons are known and saved beside the cache
    (``prefix.bad.json``): a later run that reuses it still reports them.
    """
    bad_file = prefix.with_name(prefix.name + ".bad.json")
    index = prefix.with_name(prefix.name + ".index")
    if index.is_file() and bad_file.is_file():
        for path, reason in json.loads(bad_file.read_text()).items():
            bad_images.add(path, reason)
        log.info("reusing the decoded-image cache %s", prefix)
        return ds.cache(str(prefix))
    prefix.parent.mkdir(parents=True, exist_ok=True)
    for stale in prefix.parent.glob(prefix.name + "*"):
        stale.unlink()
    before = set(bad_images.failures)
    cached = ds.cache(str(prefix))
    log.info("decoding into the disk cache %s (once; later runs reuse it)", prefix)
    for _ in cached:  # the cold pass: fills the cache
        pass
    new = {k: v for k, v in bad_images.failures.items() if k not in before}
    write_json_atomic(bad_file, new)
    return cached


def _loader(size: int, bad_images: BadImageLog):
    def load(path: bytes) -> tuple[np.ndarray, bool]:
        name = path.decode()
        try:
            return preprocess_file(name, size), True
        except (ImageError, OSError) as exc:
            bad_images.add(name, str(exc))
            return np.zeros((size, size), np.uint8), False

    return load


#: Contrast factor range and brightness shift (as a fraction of 255) of the jitter.
CONTRAST_RANGE = (0.8, 1.2)
BRIGHTNESS_DELTA = 0.1


def augmentation_params(seed: tf.Tensor, n: tf.Tensor) -> dict[str, tf.Tensor]:
    """Per-image random draws for one batch, each from its own stream.

    ``seed`` is a stateless seed pair; it is split into one independent seed per
    transform, so a flipped image is not thereby also rotated or darkened a certain way
    (the four Keras layers used before shared one seed and so one draw).
    """
    flip_seed, angle_seed, contrast_seed, brightness_seed = tf.unstack(
        tf.random.experimental.stateless_split(seed, num=4)
    )
    limit = ROTATION_DEGREES * np.pi / 180.0
    return {
        "flip": tf.random.stateless_uniform([n], flip_seed) < 0.5,
        "angle": tf.random.stateless_uniform([n], angle_seed, minval=-limit, maxval=limit),
        "contrast": tf.random.stateless_uniform([n], contrast_seed, *CONTRAST_RANGE),
        "brightness": tf.random.stateless_uniform(
            [n], brightness_seed, -BRIGHTNESS_DELTA * 255.0, BRIGHTNESS_DELTA * 255.0
        ),
    }


def letterbox_mask(images: tf.Tensor) -> tf.Tensor:
    """1 inside the image, 0 on the letterbox bars (edge rows/columns with no content).

    Letterboxing pads with whole rows or columns of exact zeros at the edges; everything
    between the first and the last row (column) holding a non-zero pixel is image.
    """
    content = images > 0  # (N, H, W, 1)
    rows = tf.reduce_any(content, axis=[2, 3])  # (N, H)
    cols = tf.reduce_any(content, axis=[1, 3])  # (N, W)

    def between_first_and_last(flags: tf.Tensor) -> tf.Tensor:
        flags = tf.cast(flags, tf.int32)
        from_start = tf.cumsum(flags, axis=1) > 0
        from_end = tf.cumsum(flags, axis=1, reverse=True) > 0
        return tf.logical_and(from_start, from_end)

    inside = tf.logical_and(
        between_first_and_last(rows)[:, :, None], between_first_and_last(cols)[:, None, :]
    )
    return tf.cast(inside, tf.float32)[..., None]


def _rotate(images: tf.Tensor, angles: tf.Tensor, interpolation: str) -> tf.Tensor:
    """Rotate each image about its centre, filling with 0 (black, like the letterbox)."""
    shape = tf.shape(images)
    height, width = tf.cast(shape[1], tf.float32), tf.cast(shape[2], tf.float32)
    cos, sin = tf.cos(angles), tf.sin(angles)
    x_offset = ((width - 1) - (cos * (width - 1) - sin * (height - 1))) / 2.0
    y_offset = ((height - 1) - (sin * (width - 1) + cos * (height - 1))) / 2.0
    zeros = tf.zeros_like(angles)
    transforms = tf.stack([cos, -sin, x_offset, sin, cos, y_offset, zeros, zeros], axis=1)
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=images,
        transforms=transforms,
        output_shape=shape[1:3],
        fill_value=0.0,
        interpolation=interpolation,
        fill_mode="CONSTANT",
    )


def augment_batch(images: tf.Tensor, seed: tf.Tensor, jitter: bool = True) -> tf.Tensor:
    """Flip, rotate (up to 30 degrees), then (``jitter``) vary contrast and brightness of the
    image only.

    Stateless and seeded per batch, so a seeded run sees the same augmentation every time
    whatever the thread scheduling. The jitter is applied inside the letterbox only: the
    bars stay exactly 0, as the service will see them.
    """
    return apply_augmentation(images, augmentation_params(seed, tf.shape(images)[0]), jitter)


def apply_augmentation(
    images: tf.Tensor, draw: dict[str, tf.Tensor], jitter: bool = True
) -> tf.Tensor:
    """:func:`augment_batch` with given draws (see :func:`augmentation_params`)."""
    mask = letterbox_mask(images)
    flip = draw["flip"][:, None, None, None]
    images = tf.where(flip, tf.reverse(images, axis=[2]), images)
    mask = tf.where(flip, tf.reverse(mask, axis=[2]), mask)
    images = _rotate(images, draw["angle"], "BILINEAR")
    mask = _rotate(mask, draw["angle"], "NEAREST")
    if not jitter:
        return images * mask
    area = tf.maximum(tf.reduce_sum(mask, axis=[1, 2, 3], keepdims=True), 1.0)
    mean = tf.reduce_sum(images * mask, axis=[1, 2, 3], keepdims=True) / area
    contrast = draw["contrast"][:, None, None, None]
    brightness = draw["brightness"][:, None, None, None]
    jittered = (images - mean) * contrast + mean + brightness
    return tf.clip_by_value(jittered, 0.0, 255.0) * mask


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
    min_batch: int = 1,
    disk_cache: Path | None = None,
    memory_budget_gb: float = 4.0,
    jitter: bool = True,
) -> tf.data.Dataset:
    """Build ``(image, target[, weight])`` batches; images float32 ``(N, size, size, 1)``.

    ``batch_size`` is the *global* batch under a distribution strategy (per-replica batch x
    replicas); tf.distribute splits every batch among the replicas. The dataset carries an
    explicit auto-shard policy for multi-worker training, :func:`distribute_options`.

    ``cache``: decoded images are kept after the first pass: in memory while they fit in
    ``memory_budget_gb`` (``N x size x size`` bytes), else in files under ``disk_cache``
    (:func:`disk_cache_prefix`; without a folder, in memory anyway). MURA at 320 px is
    ~3.8 GB decoded for the router, more than a small training host should hold per model.

    ``min_batch`` (the number of replicas) skips a last batch with fewer images than
    replicas: tf.distribute would hand some replica an empty batch, whose BatchNormalization
    statistics are NaN and on which TensorFlow's oneDNN CPU convolution returns a wrongly
    shaped result (its zero-size shortcut; TF 2.21). At most ``min_batch - 1`` images of a
    pass are skipped, and only when the split size leaves such a remainder.
    """
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
        decoded_gb = len(paths) * size * size / 1e9
        if disk_cache is not None and decoded_gb > memory_budget_gb:
            prefix = disk_cache_prefix(disk_cache, paths, columns[1:], size)
            ds = _filled_disk_cache(ds, prefix, bad_images)
        else:
            ds = ds.cache()
        if training:
            ds = ds.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size)
    if min_batch > 1:
        ds = ds.filter(lambda *batch: tf.shape(batch[0])[0] >= min_batch)

    def to_float(pixels: tf.Tensor, *rest: tf.Tensor):
        return (tf.cast(pixels, tf.float32)[..., None], *rest)

    if training and augment:
        # one stateless seed pair per batch: deterministic for a seed, new every epoch
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
        ds = tf.data.Dataset.zip(ds, seeds).map(
            lambda batch, pair: (augment_batch(to_float(*batch)[0], pair, jitter), *batch[1:]),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )
    else:
        ds = ds.map(to_float, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.prefetch(tf.data.AUTOTUNE).with_options(distribute_options())


def distribute_options() -> tf.data.Options:
    """Dataset options with the multi-worker auto-shard policy set to ``DATA``.

    Under ``MultiWorkerMirroredStrategy`` tf.data shards the input among workers. The
    policies (``tf.data.experimental.AutoShardPolicy``):

    - ``FILE`` gives each worker its own input *files* -- the files a reader op such as
      ``TFRecordDataset`` opens. This pipeline has none: it starts from
      ``from_tensor_slices`` over a list of image paths and decodes each one inside a
      ``numpy_function``, so there is nothing FILE could split; it fails.
    - ``AUTO`` (the default) tries FILE, finds no file source and falls back to DATA, with
      a warning on every worker.
    - ``OFF`` would feed every worker the same batches: a global batch made of duplicates.
    - ``DATA`` runs the same, deterministic pipeline on every worker (same seeded shuffle,
      same augmentation seeds) and keeps each worker's own slice of every global batch. So
      the workers train on disjoint parts of exactly the global batch a single process would
      build with the same seed and global batch size, and a multi-worker run stays
      comparable with a single-process one. Its cost: every worker reads and decodes the
      whole split once (then the in-memory cache serves later epochs) and augments every
      batch; the model step, not decoding, dominates on GPUs.

    Setting DATA explicitly documents the choice and silences the fallback warning.
    """
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return options


_FORWARD_FUNCTIONS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _forward(model):
    """One traced inference function per model, reused across calls (tracing costs seconds)."""
    if model not in _FORWARD_FUNCTIONS:
        _FORWARD_FUNCTIONS[model] = tf.function(
            lambda x: model(x, training=False), reduce_retracing=True
        )
    return _FORWARD_FUNCTIONS[model]


def prediction_dataset(
    frame: pd.DataFrame,
    *,
    size: int,
    batch_size: int,
    bad_images: BadImageLog,
    cache: bool = False,
) -> tf.data.Dataset:
    """``(images, row index)`` batches of ``frame`` for prediction; ``cache`` keeps the
    decoded images for repeated passes (the per-epoch validation of :class:`StudyAuc`)."""
    positions = np.arange(len(frame), dtype=np.float32)
    return make_dataset(
        frame,
        targets=positions,
        size=size,
        batch_size=batch_size,
        training=False,
        bad_images=bad_images,
        cache=cache,
    )


def predict_dataset(model, ds: tf.data.Dataset, rows: int) -> np.ndarray:
    """Predict every batch of a :func:`prediction_dataset`; rows never yielded (undecodable
    images) are NaN."""
    n_out = int(model.output_shape[-1])
    out = np.full((rows, n_out), np.nan, dtype=np.float32)
    forward = _forward(model)
    for images, index in ds:
        out[index.numpy().astype(int)] = forward(images).numpy()
    return out


def predict_frame(
    model, frame: pd.DataFrame, *, size: int, batch_size: int, bad_images: BadImageLog
) -> np.ndarray:
    """Predict every row of ``frame`` with the same preprocessing as training.

    Returns an array with one row per frame row; rows whose image failed to decode are NaN
    (and are recorded in ``bad_images``).
    """
    ds = prediction_dataset(frame, size=size, batch_size=batch_size, bad_images=bad_images)
    return predict_dataset(model, ds, len(frame))
