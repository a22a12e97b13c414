"""Which device trains, said out loud: GPU selection, mixed precision, the CPU warning.

A real MURA run takes days on a CPU and about an hour on one datacentre GPU, and TensorFlow
falls back to the CPU silently when it finds no GPU (a CPU-only wheel, a missing driver).
So ``bonexr train`` logs the devices it will use before reading any data, ``--device gpu``
refuses to start without one (one ``error:`` line), and on a CPU with a large dataset the
first steps are timed and the whole run's time is estimated (:class:`TimeEstimate`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import keras
import tensorflow as tf

from bonexr.errors import ConfigError

log = logging.getLogger(__name__)

#: A CPU run over more images than this gets the time estimate.
LARGE_DATASET = 3000
#: Steps timed for the estimate (after the first few, which include tracing).
WARMUP_STEPS, TIMED_STEPS = 3, 20


@dataclass(frozen=True)
class DeviceChoice:
    """Where training runs: ``gpu`` or ``cpu``, the devices, and the compute dtype."""

    kind: str
    devices: tuple[str, ...]
    mixed_policy: str | None  # mixed_float16 / mixed_bfloat16, or None (float32)

    def describe(self) -> str:
        policy = self.mixed_policy or "float32"
        return f"training on {self.kind.upper()}: {', '.join(self.devices)} ({policy})"


def _gpus() -> list[Any]:
    return list(tf.config.list_physical_devices("GPU"))


def choose_device(device: str, *, mixed_precision: bool) -> DeviceChoice:
    """Resolve ``--device`` (and ``--mixed-precision``) before any data is read.

    ``gpu`` without a visible GPU is a :class:`ConfigError` naming the usual causes;
    ``cpu`` hides the GPUs from TensorFlow (before it initialises them).
    """
    gpus = _gpus()
    if device == "gpu" and not gpus:
        raise ConfigError(
            "--device gpu: TensorFlow sees no GPU (installed the `train` extra, which is "
            "CPU-only on x86-64, instead of `train-gpu`? no NVIDIA driver or "
            "CUDA_VISIBLE_DEVICES empty?); see the README's Training section"
        )
    if device == "cpu" and gpus:
        tf.config.set_visible_devices([], "GPU")
        gpus = []
    kind = "gpu" if gpus else "cpu"
    names = tuple(g.name for g in gpus) or tuple(
        d.name for d in tf.config.list_physical_devices("CPU")
    )
    policy = None
    if mixed_precision:
        policy = "mixed_float16" if kind == "gpu" else "mixed_bfloat16"
    return DeviceChoice(kind, names, policy)


def apply_precision(choice: DeviceChoice) -> None:
    """Set Keras' global dtype policy for the models built from now on."""
    keras.mixed_precision.set_global_policy(choice.mixed_policy or "float32")


def float32_policy() -> None:
    """Back to float32: evaluation and export build float32 copies of the models."""
    keras.mixed_precision.set_global_policy("float32")


class TimeEstimate(keras.callbacks.Callback):
    """Times the first training steps on a CPU and logs what the whole run will take.

    ``images``: training images of all models to train; ``epochs``: the epoch budget of
    each (early stopping may end sooner, so the figure is an upper bound).
    """

    def __init__(self, *, batch_size: int, images: int, epochs: int) -> None:
        super().__init__()
        self.batch_size, self.images, self.epochs = batch_size, images, epochs
        self.step = 0
        self.started: float | None = None

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self.step += 1
        if self.step == WARMUP_STEPS:
            self.started = time.perf_counter()
        elif self.started is not None and self.step == WARMUP_STEPS + TIMED_STEPS:
            seconds = time.perf_counter() - self.started
            rate = TIMED_STEPS * self.batch_size / seconds
            hours = self.images * self.epochs / rate / 3600
            log.warning(
                "training on the CPU at %.1f images/s (measured over %d steps): %d images "
                "x %d epochs will take up to ~%.1f h; a GPU does this in a fraction "
                "(README, Training: the train-gpu extra)",
                rate,
                TIMED_STEPS,
                self.images,
                self.epochs,
                hours,
            )
