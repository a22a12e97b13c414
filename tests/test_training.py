"""Training end to end on synthetic MURA data: it learns, evaluates, exports and resumes.

Nothing is mocked: the models are trained here and measured on the held-out test split.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import keras
import numpy as np
import onnx
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from bonexr.bundle import verify_bundle
from bonexr.errors import ConfigError, DataError
from training.config import TrainConfig
from training.metrics import study_level
from training.models import build_model, is_mixed, resolve_weights
from training.pipeline import BadImageLog, predict_frame
from training.run import run_training
from training.split import read_split
from training.train import model_frames

pytestmark = pytest.mark.slow


class _InterruptAfter(keras.callbacks.Callback):
    """Simulates Ctrl-C after a given epoch has been checkpointed."""

    def __init__(self, epoch: int) -> None:
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        if epoch == self.epoch:
            raise KeyboardInterrupt


class _RecordStart(keras.callbacks.Callback):
    def on_train_begin(self, logs=None) -> None:
        self.weights = [w.copy() for w in self.model.get_weights()]

    def on_epoch_begin(self, epoch: int, logs=None) -> None:
        self.__dict__.setdefault("first_epoch", epoch)


def test_resume_continues_from_checkpoint(synthetic_small: Path, tmp_path: Path) -> None:
    config = TrainConfig(
        name="resume",
        input_size=48,
        router_backbone="tiny",
        part_backbone="tiny",
        weights="none",
        epochs=4,
        batch_size=32,
        patience=10,
        progress=False,
    )
    run_dir, out = tmp_path / "run", tmp_path / "models" / "resume"
    with pytest.raises(KeyboardInterrupt):
        run_training(
            synthetic_small,
            config,
            out=out,
            run_dir=run_dir,
            only=["router"],
            callbacks=(_InterruptAfter(1),),
        )
    history = pd.read_csv(run_dir / "router" / "history.csv")
    assert history["epoch"].tolist() == [0, 1]
    saved = keras.models.load_model(run_dir / "router" / "best.keras")  # exists after epoch 1
    assert saved.output_shape == (None, len(config.body_parts))  # the router, loadable

    with pytest.raises(ConfigError, match="--resume"):
        run_training(synthetic_small, config, out=out, run_dir=run_dir, only=["router"])
    changed = TrainConfig(**{**config.to_dict(), "epochs": 6})
    with pytest.raises(ConfigError, match=r"different config.*epochs"):
        run_training(synthetic_small, changed, out=out, run_dir=run_dir, resume=True)

    backup = build_model("router", classes=list(config.body_parts), backbone="tiny", input_size=48)
    backup.load_weights(run_dir / "router" / "backup_finetune" / "latest.weights.h5")
    recorder = _RecordStart()
    result = run_training(
        synthetic_small,
        config,
        out=out,
        run_dir=run_dir,
        resume=True,
        only=["router"],
        callbacks=(recorder,),
    )
    assert result is None  # part models not trained yet: no bundle
    assert recorder.first_epoch == 2
    for restored, checkpointed in zip(recorder.weights, backup.get_weights(), strict=True):
        np.testing.assert_array_equal(restored, checkpointed)
    history = pd.read_csv(run_dir / "router" / "history.csv")
    assert history["epoch"].tolist() == [0, 1, 2, 3]
    assert (run_dir / "router" / "done.json").is_file()


def test_imagenet_offline_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.setattr("training.models._download_host_reachable", lambda *a, **k: False)
    with pytest.raises(ConfigError, match="--weights none"):
        resolve_weights("imagenet", "resnet50")
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_weights(str(tmp_path / "missing.h5"), "resnet50")
    with pytest.raises(ConfigError, match="no ImageNet weights"):
        resolve_weights("imagenet", "tiny")


def test_single_label_part_is_refused() -> None:
    split = pd.DataFrame(
        {
            "body_part": ["HAND"] * 4,
            "label": [0, 0, 0, 0],
            "split": ["train", "train", "validation", "validation"],
        }
    )
    with pytest.raises(DataError, match="HAND has only label 0"):
        model_frames(split, "hand")


def test_resnet50_path_builds_trains_exports_reloads(synthetic_small: Path, tmp_path: Path) -> None:
    """The real ResNet50 configuration: build, one training step on real data, export, reload."""
    from bonexr.cli import main
    from training.dataset import index_dataset
    from training.export import export_bundle
    from training.pipeline import BadImageLog, make_dataset, router_targets
    from training.train import _compile

    parts = ["ELBOW", "HAND"]
    index, _ = index_dataset(synthetic_small, body_parts=parts)
    # The abnormality head (with its CAM output, the harder export) on the real ResNet50
    # body; the router and the second part model stay tiny: each ResNet50 costs ~100 s of
    # tracing, training and tf2onnx here, and the router shares the same build code.
    backbones = {"router": "tiny", "elbow": "resnet50", "hand": "tiny"}
    models = {"router": build_model("router", classes=parts, backbone="tiny", input_size=32)}
    models |= {
        p.lower(): build_model("abnormality", backbone=backbones[p.lower()], input_size=32)
        for p in parts
    }
    for name, model in models.items():
        rows = index if name == "router" else index[index["body_part"] == name.upper()]
        targets = router_targets(rows, parts) if name == "router" else rows["label"].to_numpy()
        data = make_dataset(
            rows,
            targets=targets,
            size=32,
            batch_size=8,
            training=True,
            bad_images=BadImageLog(),
            cache=False,
        )
        _compile(model, name, 1e-4)
        history = model.fit(data.take(1), epochs=1, verbose=0)
        assert np.isfinite(history.history["loss"][0])
    out = tmp_path / "models" / "r50"
    export_bundle(
        out,
        models=models,
        name="r50",
        body_parts=parts,
        input_size=32,
        backbones=backbones,
        thresholds={
            p: {k: {"value": 0.5, "rule": "fixed"} for k in ("image", "study")} for p in parts
        },
        metrics={},
        data={},
        training={},
        synthetic=True,
    )
    assert main(["verify", str(out)]) == 0
    manifest = verify_bundle(out)
    assert manifest.parts["Elbow"].backbone == "resnet50"
    assert max(manifest.training["onnx_parity_max_abs_diff"].values()) < 1e-4
    batch = np.random.default_rng(0).uniform(0, 255, (3, 32, 32, 1)).astype("float32")
    for name, model in models.items():
        reloaded = keras.models.load_model(out / f"{name}.keras")
        if backbones[name] == "resnet50":
            assert reloaded.count_params() > 23_000_000  # the ResNet50 body, not a stand-in
        np.testing.assert_allclose(
            reloaded(batch, training=False), model(batch, training=False), atol=1e-6
        )


def _small_config(**overrides: object) -> TrainConfig:
    values: dict = dict(
        name="repro",
        input_size=48,
        router_backbone="tiny",
        part_backbone="tiny",
        weights="none",
        epochs=2,
        batch_size=32,
        seed=5,
    )
    values.update(overrides)
    return TrainConfig(**values)


def test_seeded_training_is_reproducible(synthetic_small: Path, tmp_path: Path) -> None:
    """The same seeded run twice on the CPU: identical history, identical weights."""
    runs = []
    for attempt in ("a", "b"):
        run_training(
            synthetic_small,
            _small_config(),
            out=tmp_path / attempt / "bundle",
            run_dir=tmp_path / attempt / "run",
            only=["elbow"],
        )
        runs.append(tmp_path / attempt / "run" / "elbow")
    first, second = (pd.read_csv(run / "history.csv") for run in runs)
    pd.testing.assert_frame_equal(first, second, check_exact=True)
    # a part model is selected by the AUROC of validation *studies* (view means): the kept
    # checkpoint scores the best value the history logged, recomputed from scratch
    done = json.loads((runs[0] / "done.json").read_text())
    assert done["monitor"] == "val_study_auc"
    assert done["best_value"] == first["val_study_auc"].max()
    split = read_split(tmp_path / "a" / "run" / "split.csv", synthetic_small)
    val = split[(split["split"] == "validation") & (split["body_part"] == "ELBOW")]
    best = keras.models.load_model(runs[0] / "best.keras")
    probs = predict_frame(best, val, size=48, batch_size=8, bad_images=BadImageLog())[:, 0]
    studies = study_level(val.assign(prob=probs))
    recomputed = roc_auc_score(studies["label"], studies["prob"])
    assert recomputed == pytest.approx(done["best_value"], abs=1e-6)
    weights = [keras.models.load_model(run / "best.keras").get_weights() for run in runs]
    for a, b in zip(*weights, strict=True):
        np.testing.assert_array_equal(a, b)
    other = tmp_path / "c"
    run_training(
        synthetic_small,
        _small_config(seed=6),
        out=other / "bundle",
        run_dir=other / "run",
        only=["elbow"],
    )
    assert not pd.read_csv(other / "run" / "elbow" / "history.csv").equals(first)


def test_models_train_in_separate_processes_and_one_run_gathers_them(
    synthetic_small: Path, tmp_path: Path
) -> None:
    """The multi-GPU pattern (docs/training.md, "Partial runs"): one ``--only`` process per
    model, each stopping with no bundle (exit 3), then one run without ``--only`` that
    trains nothing and exports the bundle of all of them. Trained with
    ``--mixed-precision`` (bfloat16 on this CPU): the models really compute in bfloat16,
    and the export is float32 graphs that pass parity and the contract."""
    import subprocess
    import sys

    run, out = tmp_path / "run", tmp_path / "models" / "gathered"
    common = [str(synthetic_small), "--run-dir", str(run), "--size", "48", "--backbone", "tiny",
              "--router-backbone", "tiny", "--weights", "none", "--epochs", "1",
              "--batch-size", "32", "--mixed-precision", "--parts", "elbow"]  # fmt: skip

    def train(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "bonexr.cli", "train", *common, *extra],
            capture_output=True,
            text=True,
            timeout=600,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        )

    first = train("--only", "router")
    assert first.returncode == 3, first.stderr
    assert train("--resume", "--only", "elbow").returncode == 3
    assert not out.exists()
    trained = {p.parent.name: p.stat().st_mtime for p in run.glob("*/best.keras")}
    assert set(trained) == {"router", "elbow"}
    final = train("--resume", "--out", str(out))
    assert final.returncode == 0, final.stderr
    assert "already trained; skipping" in final.stdout + final.stderr
    assert {p.parent.name: p.stat().st_mtime for p in run.glob("*/best.keras")} == trained
    manifest = verify_bundle(out)  # parity was checked at export; contract and hashes here
    assert set(manifest.parts) == {"Elbow"}
    trained_model = keras.models.load_model(run / "elbow" / "best.keras")
    assert is_mixed(trained_model)  # it really trained in bfloat16 ...
    assert trained_model.get_layer("probabilities").dtype_policy.compute_dtype == "float32"
    for name in ("router", "elbow"):  # ... and exported float32 graphs
        graph = onnx.load(str(out / f"{name}.onnx"))
        ends = [*graph.graph.input, *graph.graph.output]
        assert {t.type.tensor_type.elem_type for t in ends} == {onnx.TensorProto.FLOAT}
        stored = {i.data_type for i in graph.graph.initializer}
        assert not stored & {onnx.TensorProto.BFLOAT16, onnx.TensorProto.FLOAT16}
