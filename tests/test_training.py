"""Training end to end on synthetic MURA data: it learns, evaluates, exports and resumes.

Nothing is mocked: the models are trained here and measured on the held-out test split.
"""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest

from bonexr.bundle import verify_bundle
from bonexr.errors import BundleError, ConfigError, DataError
from bonexr.imaging import model_input, preprocess_file
from training.config import TrainConfig
from training.models import build_model, resolve_weights
from training.run import run_training
from training.train import model_frames

pytestmark = pytest.mark.slow


def _rows(report_md: str) -> str:
    return "\n".join(line for line in report_md.splitlines() if line.startswith("|"))


def test_pipeline_learns_both_tasks(trained_demo: dict) -> None:
    report = json.loads((trained_demo["bundle"] / "report.json").read_text())
    router_accuracy = report["router"]["image"]["accuracy"]
    aurocs = {part: m["study"]["auroc"] for part, m in report["parts"].items()}
    print(f"router accuracy {router_accuracy:.3f}; study AUROC {aurocs}")
    # Spread of the demo recipe over three seeds each (docs/benchmarks.md "Demo recipe, spread over
    # seeds"): router accuracy 0.992-1.000, study AUROC elbow 0.990-1.000, shoulder
    # 0.943-1.000, hand 1.000. The fixture is fixed-seed; the bounds sit below the worst
    # seed (router by 0.09, parts by 0.09).
    assert router_accuracy >= 0.9
    for part, auroc in aurocs.items():
        assert auroc >= 0.85, f"{part} study-level AUROC {auroc:.3f} < 0.85"
    assert (
        report["two_stage"]["overall"]["pooled"]["study"]["n"]
        == report["overall"]["pooled"]["study"]["n"]
    )


def test_corrupt_image_is_reported_and_skipped(trained_demo: dict) -> None:
    report = json.loads((trained_demo["bundle"] / "report.json").read_text())
    assert list(report["bad_images"]) == [str(trained_demo["corrupt"])]
    assert "Skipped images (1)" in (trained_demo["bundle"] / "report.md").read_text()


def test_bundle_contents_and_provenance(trained_demo: dict) -> None:
    bundle = trained_demo["bundle"]
    manifest = verify_bundle(bundle)
    assert manifest.synthetic and "DEMO ONLY" in manifest.intended_use
    for rel in (
        "split.csv",
        "report.md",
        "report.json",
        "plots/roc.png",
        "plots/confusion.png",
        "plots/training_curves.png",
        "test_predictions.csv",
    ):
        assert rel in manifest.files, rel
    split = pd.read_csv(bundle / "split.csv")
    predictions = pd.read_csv(bundle / "test_predictions.csv")
    root = str(trained_demo["root"].resolve())
    for shared in (split, predictions):  # a shareable artifact: no training-machine paths
        assert "path" not in shared.columns
        assert not shared.astype(str).apply(lambda c: c.str.contains(root, regex=False)).any().any()
    assert manifest.data["source"] == "MURA-v1.1"
    # the export's ONNX check ran on noise plus validation images of every part
    assert manifest.training["onnx_parity_images"] == 4 + 3 * len(manifest.router.classes)
    # the router knows all seven synthetic parts; abnormality models exist for three
    assert manifest.router.classes == [
        "Elbow", "Finger", "Forearm", "Hand", "Humerus", "Shoulder", "Wrist"
    ]  # fmt: skip
    assert sorted(manifest.parts) == ["Elbow", "Hand", "Shoulder"]
    report = json.loads((bundle / "report.json").read_text())
    assert len(report["router"]["image"]["confusion_matrix"]) == 7
    assert "CPUExecutionProvider" in manifest.training["onnx_parity_by_provider"]
    owners = split.groupby("patient_id")["split"].nunique()
    assert (owners == 1).all(), "a patient appears in two splits"
    assert manifest.data["split_seed"] == 0
    # two operating points per part, both from validation; they differ where the data do
    for spec in manifest.parts.values():
        assert spec.image_threshold is not None and 0.0 < spec.image_threshold < 1.0
        assert 0.0 < spec.threshold < 1.0
        assert spec.image_threshold_rule == "youden-j-on-validation-image-level"
    assert any(s.image_threshold != s.threshold for s in manifest.parts.values())
    assert "image" in manifest.metrics["operating_points"]["Elbow"]
    assert manifest.metrics["router_accuracy"] >= 0.9
    table = _rows((bundle / "report.md").read_text())
    assert "MURA paper" in table and "| Hand |" in table


def test_reloaded_bundle_predicts_identically(trained_demo: dict) -> None:
    """Export -> reload: the bundle's Keras files reproduce the evaluation's probabilities."""
    bundle = trained_demo["bundle"]
    manifest = verify_bundle(bundle)
    predictions = (
        pd.read_csv(bundle / "test_predictions.csv")
        .dropna(subset=["routed_part", "prob_HAND"])
        .head(24)
    )
    assert len(predictions) >= 10  # hand views and views routed to the hand model
    batch = np.concatenate(
        [
            model_input(preprocess_file(trained_demo["root"] / rel, manifest.input.size))
            for rel in predictions["rel_path"]
        ]
    )
    router = keras.models.load_model(bundle / manifest.router.keras)
    router_probs = np.asarray(router(batch, training=False))
    expected = predictions[[f"router_{p.upper()}" for p in manifest.router.classes]].to_numpy()
    np.testing.assert_allclose(router_probs, expected, atol=1e-6)
    hand = keras.models.load_model(bundle / manifest.parts["Hand"].keras)
    np.testing.assert_allclose(
        np.asarray(hand(batch, training=False))[:, 0], predictions["prob_HAND"], atol=1e-6
    )


def test_existing_bundle_is_refused_before_training(trained_demo: dict) -> None:
    with pytest.raises(BundleError, match="already exists"):
        run_training(
            trained_demo["root"],
            trained_demo["config"],
            out=trained_demo["bundle"],
            run_dir=trained_demo["bundle"].parent / "unused-run",
        )
    assert not (trained_demo["bundle"].parent / "unused-run").exists()


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


def test_heatmaps_localise_the_drawn_defects(trained_demo: dict) -> None:
    """The demo's CAMs are scored against the defect the generator drew, beside a blank
    map (whose guess is the image centre).

    Measured basis for the bound (pointing game, this fixture's recipe and data size):
    heat map vs centre 0.537 vs 0.315 (README run at a5779a9), 0.352 vs 0.315 (a fresh
    clone of c089347, issue 18): the margin over the centre ranged 0.04-0.22 in two runs.
    A margin of 0.15 therefore does not hold reliably and was dropped; what both runs
    support is "not worse than the centre". That the maps localise usefully is NOT
    established by this recipe (see docs/benchmarks.md: heat maps are unvalidated).
    """
    report = json.loads((trained_demo["bundle"] / "report.json").read_text())
    overall = report["localisation"]["overall"]
    print(f"pointing game: heat map {overall['heatmap']:.3f}, centre {overall['centre']:.3f}")
    assert overall["n"] >= 30
    assert overall["heatmap"] >= overall["centre"]  # spread above: margin 0.04-0.22
    assert (trained_demo["bundle"] / "plots" / "heatmaps.png").stat().st_size > 20_000
    assert "Where the model looked" in (trained_demo["bundle"] / "report.md").read_text()


def test_reduced_precision_was_measured_on_the_test_split(trained_demo: dict) -> None:
    """bf16 and int8 were scored two-stage on the test split, and the allow/deny decision
    follows the stated limits (AUROC drop <= 0.005, <= 1% flips, at least one)."""
    bundle = trained_demo["bundle"]
    manifest = verify_bundle(bundle)
    test_images = int((pd.read_csv(bundle / "split.csv")["split"] == "test").sum())
    for name in ("bf16", "int8"):
        spec = manifest.precisions[name]
        print(f"{name}: {spec.reason}")
        if not spec.measured:  # needs OpenVINO (and NNCF for int8) on a bf16/int8 CPU
            assert not spec.allowed
            continue
        measured = spec.measured
        assert measured["decisions"] == test_images  # every routable test image, two-stage
        assert set(measured["parts"]) == set(manifest.parts)
        assert {"study_auroc_fp32", f"study_auroc_{name}"} <= set(measured["two_stage"])
        limit = max(1, int(0.01 * measured["decisions"]))
        within = measured["worst_study_auroc_drop"] <= 0.005 and measured["flipped"] <= limit
        assert spec.allowed == within
    int8 = manifest.precisions["int8"]
    if int8.files:  # produced: one calibrated IR per model, hashed like every model file
        assert set(int8.files) == {"router", *(p.lower() for p in manifest.parts)}
        for model, coverage in int8.measured["quantisation"].items():
            assert coverage["int8_layers"] == coverage["layers"] > 0, model
            assert coverage["calibration_images"] >= 16
        assert all(f in manifest.files for f in manifest.model_files())
