"""Training augmentation: independent draws per transform, letterbox bars stay black,
and the same seed gives the same augmented batch (fast: no training)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from bonexr.imaging import prepare_pixels

tf = pytest.importorskip("tensorflow")

from training.pipeline import (  # noqa: E402
    ROTATION_DEGREES,
    apply_augmentation,
    augment_batch,
    augmentation_params,
    letterbox_mask,
)

SIZE = 64


def letterboxed_batch(n: int = 8) -> np.ndarray:
    """Wide, textured images (never 0 inside) letterboxed to SIZE: bars top and bottom."""
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        content = rng.integers(30, 220, size=(40, 120), dtype=np.uint8)
        out.append(prepare_pixels(Image.fromarray(content), SIZE))
    return np.stack(out).astype(np.float32)[..., None]


def test_flip_angle_contrast_and_brightness_are_independent_draws() -> None:
    draws = augmentation_params(tf.constant([7, 11], tf.int64), tf.constant(400))
    flip = draws["flip"].numpy().astype(float)
    values = {k: draws[k].numpy() for k in ("angle", "contrast", "brightness")}
    assert 0.4 < flip.mean() < 0.6  # a fair coin
    limit = ROTATION_DEGREES * np.pi / 180
    assert values["angle"].min() >= -limit and values["angle"].max() <= limit
    for name, value in values.items():
        assert abs(np.corrcoef(flip, value)[0, 1]) < 0.15, name
    assert abs(np.corrcoef(values["angle"], values["contrast"])[0, 1]) < 0.15
    assert abs(np.corrcoef(values["contrast"], values["brightness"])[0, 1]) < 0.15


def test_letterbox_mask_marks_the_bars_only() -> None:
    batch = letterboxed_batch(2)
    mask = letterbox_mask(tf.constant(batch)).numpy()
    inside = batch > 0
    assert (mask[inside] == 1).all()
    assert mask[:, :5].sum() == 0 and mask[:, -5:].sum() == 0  # top and bottom bars
    assert (mask[:, SIZE // 2] == 1).all()  # a middle row is image from edge to edge


def test_outside_the_rotated_image_everything_is_black() -> None:
    batch = tf.constant(letterboxed_batch())
    for seed in range(5):
        augmented = augment_batch(batch, tf.constant([seed, 1], tf.int64)).numpy()
        assert augmented.min() >= 0 and augmented.max() <= 255
        # corners and bars carry no jitter: whatever is outside the image is exactly 0
        assert (augmented[letterbox_mask(tf.constant(augmented)).numpy() == 0] == 0).all()
        assert (augmented[:, 0, 0] == 0).all() and (augmented[:, -1, -1] == 0).all()


@pytest.mark.parametrize("flip", [False, True])
def test_brightness_and_contrast_jitter_leave_the_bars_at_zero(flip: bool) -> None:
    batch = letterboxed_batch(4)
    n = len(batch)
    draw = {
        "flip": tf.constant([flip] * n),
        "angle": tf.zeros([n]),
        "contrast": tf.fill([n], 1.2),
        "brightness": tf.fill([n], 25.0),  # the old layers turned the bars this grey
    }
    augmented = apply_augmentation(tf.constant(batch), draw).numpy()
    bars = letterbox_mask(tf.constant(batch)).numpy() == 0
    assert bars.any()
    assert (augmented[bars] == 0).all()
    inside = ~bars
    assert augmented[inside].mean() > batch[inside].mean() + 20  # the image did brighten


def test_same_seed_same_batch_other_seed_other_batch() -> None:
    batch = tf.constant(letterboxed_batch())
    a = augment_batch(batch, tf.constant([1, 2], tf.int64)).numpy()
    b = augment_batch(batch, tf.constant([1, 2], tf.int64)).numpy()
    c = augment_batch(batch, tf.constant([1, 3], tf.int64)).numpy()
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).mean() > 1.0
