"""The MURA paper's recipe as a preset, and checkpoint ensembles exported as one graph."""

from __future__ import annotations

import argparse
from pathlib import Path

import keras
import numpy as np
import onnxruntime as ort
import pytest

from training.cli import add_training_options, config_from_args
from training.config import RECIPE_PRESETS, TrainConfig
from training.export import export_onnx
from training.models import build_ensemble, build_model, members_of, with_cam


def _args(*flags: str) -> TrainConfig:
    parser = argparse.ArgumentParser()
    add_training_options(parser, TrainConfig(), auto_parts=True)
    return config_from_args(parser.parse_args(list(flags)), TrainConfig())


def test_the_mura_paper_preset_and_explicit_flags_win() -> None:
    config = _args("--recipe", "mura-paper")
    assert (config.part_backbone, config.input_size, config.batch_size) == ("densenet169", 320, 8)
    assert (config.learning_rate, config.lr_schedule, config.ensemble) == (1e-4, "plateau", 5)
    assert config.jitter is False and config.recipe == "mura-paper"
    mine = _args("--recipe", "mura-paper", "--size", "224", "--ensemble", "3")
    assert (mine.input_size, mine.ensemble, mine.part_backbone) == (224, 3, "densenet169")
    # the default recipe changes nothing; the command line's parts default to auto
    assert _args().to_dict() == TrainConfig(body_parts=()).to_dict()
    assert _args("--recipe", "fracatlas-cpu").router_input_size == 128
    assert set(RECIPE_PRESETS["mura-paper"]) <= set(TrainConfig().to_dict())


def test_the_mura_paper_model_builds() -> None:
    config = _args("--recipe", "mura-paper")
    model = build_model(
        "abnormality",
        backbone=config.part_backbone,
        input_size=config.input_size,
        weights="none",  # the preset trains from ImageNet weights; tests stay offline
    )
    assert model.input_shape == (None, 320, 320, 1)
    assert model.get_layer("backbone").name == "backbone"
    assert model.count_params() > 12_000_000  # DenseNet169's body, not a stand-in
    assert with_cam(model).outputs[1].shape[1:] == (10, 10)  # 320 / 32


def test_an_ensemble_exports_one_graph_that_averages_its_members(tmp_path: Path) -> None:
    members = []
    for seed in (1, 2):
        keras.utils.set_random_seed(seed)
        members.append(build_model("abnormality", backbone="tiny", input_size=48, weights="none"))
    x = np.random.default_rng(0).uniform(0, 255, (4, 48, 48, 1)).astype(np.float32)
    singles = [[np.asarray(o) for o in with_cam(m)(x)] for m in members]
    ensemble = build_ensemble(members)
    assert len(members_of(ensemble)) == 2
    served = with_cam(ensemble)
    export_onnx(served, tmp_path / "ensemble.onnx")
    session = ort.InferenceSession(str(tmp_path / "ensemble.onnx"))
    probability, cam = session.run(None, {session.get_inputs()[0].name: x})
    np.testing.assert_allclose(probability, np.mean([s[0] for s in singles], axis=0), atol=1e-5)
    np.testing.assert_allclose(cam, np.mean([s[1] for s in singles], axis=0), atol=1e-5)
    assert not np.allclose(singles[0][0], singles[1][0])  # two different members
    with pytest.raises(ValueError):
        build_ensemble([])


def test_training_keeps_the_lowest_loss_checkpoints_as_the_ensemble(
    synthetic_small: Path, tmp_path: Path
) -> None:
    import json

    import pandas as pd

    from training.run import run_training

    config = TrainConfig(
        name="ensemble",
        input_size=48,
        router_backbone="tiny",
        part_backbone="tiny",
        weights="none",
        epochs=4,
        batch_size=32,
        ensemble=2,
        lr_schedule="plateau",
        jitter=False,
        progress=False,
    )
    run = tmp_path / "run"
    run_training(synthetic_small, config, out=tmp_path / "b", run_dir=run, only=["elbow"])
    history = pd.read_csv(run / "elbow" / "history.csv")
    lowest = sorted(history.nsmallest(2, "val_loss")["epoch"].add(1).tolist())
    kept = json.loads((run / "elbow" / "members" / "members.json").read_text())
    assert sorted(m["epoch"] for m in kept) == lowest
    assert len(list((run / "elbow" / "members").glob("*.weights.h5"))) == 2  # others deleted
    model = keras.models.load_model(run / "elbow" / "best.keras")
    members = members_of(model)
    assert len(members) == 2
    for member, entry in zip(members, kept, strict=True):
        single = build_model("abnormality", backbone="tiny", input_size=48, weights="none")
        single.load_weights(run / "elbow" / "members" / entry["file"])
        for a, b in zip(member.get_weights(), single.get_weights(), strict=True):
            np.testing.assert_array_equal(a, b)
