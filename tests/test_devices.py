"""The training device, said out loud: ``--device gpu`` refuses without a GPU before any
data is read, the CPU time estimate, and ``--mixed-precision`` (bfloat16 on this CPU)
training a bundle that exports float32 graphs passing parity and the contract."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import keras
import numpy as np
import onnx
import pytest
import tensorflow as tf

from bonexr.bundle import verify_bundle
from bonexr.cli import main
from training.config import TrainConfig
from training.devices import TimeEstimate, choose_device
from training.models import build_model, is_mixed
from training.run import run_training

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


def test_mixed_precision_trains_and_exports_float32_graphs(
    synthetic_small: Path, tmp_path: Path
) -> None:
    config = TrainConfig(
        name="mixed",
        input_size=48,
        router_backbone="tiny",
        part_backbone="tiny",
        weights="none",
        epochs=1,
        batch_size=32,
        mixed_precision=True,
        progress=False,
    )
    out = tmp_path / "models" / "mixed"
    manifest = run_training(synthetic_small, config, out=out, run_dir=tmp_path / "run")
    assert manifest is not None
    trained = keras.models.load_model(tmp_path / "run" / "elbow" / "best.keras")
    assert is_mixed(trained)  # it really trained in bfloat16 ...
    assert trained.get_layer("probabilities").dtype_policy.compute_dtype == "float32"
    verify_bundle(out)  # ... and the bundle passes the contract (parity checked at export)
    for name in ("router", "elbow"):
        graph = onnx.load(str(out / f"{name}.onnx"))
        types = {t.type.tensor_type.elem_type for t in [*graph.graph.input, *graph.graph.output]}
        assert types == {onnx.TensorProto.FLOAT}
        used = {i.data_type for i in graph.graph.initializer}
        assert onnx.TensorProto.BFLOAT16 not in used and onnx.TensorProto.FLOAT16 not in used
