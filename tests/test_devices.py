"""The training device, said out loud: ``--device gpu`` refuses without a GPU before any
data is read, ``auto`` and the precision policy it picks, and the CPU time estimate.
``--mixed-precision`` training a bundle end to end is in tests/test_training.py (the
one-process-per-GPU run trains in bfloat16)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from bonexr.cli import main
from training.devices import TimeEstimate, choose_device
from training.models import build_model

HAS_GPU = bool(tf.config.list_physical_devices("GPU"))


@pytest.fixture(autouse=True)
def float32_afterwards() -> Iterator[None]:
    yield
    keras.mixed_precision.set_global_policy("float32")


@pytest.mark.skipif(HAS_GPU, reason="needs a machine without a GPU")
def test_device_gpu_without_one_is_one_error_line_before_any_data(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "no-such-dataset"  # never read: the device check comes first
    code = main(["train", str(missing), "--device", "gpu", "--run-dir", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error: --device gpu: TensorFlow sees no GPU")
    assert not (tmp_path / "r").exists()


def test_auto_picks_the_cpu_here_and_mixed_precision_is_bfloat16_on_it() -> None:
    choice = choose_device("auto", mixed_precision=True)
    if HAS_GPU:
        assert choice.kind == "gpu" and choice.mixed_policy == "mixed_float16"
    else:
        assert choice.kind == "cpu" and choice.mixed_policy == "mixed_bfloat16"
        assert "training on CPU" in choice.describe()
    assert choose_device("cpu", mixed_precision=False).mixed_policy is None


def test_the_cpu_estimate_is_measured_from_the_first_steps(
    caplog: pytest.LogCaptureFixture,
) -> None:
    model = build_model("abnormality", backbone="tiny", input_size=32, weights="none")
    model.compile("adam", "binary_crossentropy")
    x = np.random.default_rng(0).uniform(0, 255, (8 * 30, 32, 32, 1)).astype("float32")
    y = np.zeros((len(x), 1), "float32")
    estimate = TimeEstimate(batch_size=8, images=40_000, epochs=20)
    with caplog.at_level(logging.WARNING, logger="training.devices"):
        model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[estimate])
    warnings = [r.getMessage() for r in caplog.records if "training on the CPU" in r.message]
    assert len(warnings) == 1  # once, after the timed steps
    assert "40000 images x 20 epochs" in warnings[0] and "images/s" in warnings[0]
