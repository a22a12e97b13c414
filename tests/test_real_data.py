"""Real radiographs: the FracAtlas recipe end to end on a few dozen FracAtlas images, and the
shipped bundle (``models/fracatlas``) verified and answering a real radiograph.

FracAtlas: Abedeen et al., Scientific Data 10, 521 (2023), CC BY 4.0. The tests skip with
the reason where ``../shared/datasets/fracatlas`` is absent (CI has it).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pandas as pd
import pytest

from bonexr.bundle import serving_copy, verify_bundle
from bonexr.errors import ConfigError
from harness.service_support import running
from service.settings import Settings
from tests.fracatlas_support import ROOT, fracatlas_root, small_fracatlas
from training.config import FRACATLAS_CPU, TrainConfig
from training.run import run_training

SHIPPED = ROOT / "models" / "fracatlas"


def _settings(bundle: Path, tmp_path: Path) -> Settings:
    return Settings(models_dir=bundle.parent, bundle=bundle.name, upload_dir=tmp_path / "up")


def _answer(client: object, path: Path) -> tuple[int, dict]:
    with path.open("rb") as handle:
        upload = client.post("/upload", files={"file": (path.name, handle, "image/jpeg")})  # type: ignore[attr-defined]
    assert upload.status_code == 201, upload.text
    answer = client.post("/predict", json={"filename": upload.json()["filename"]})  # type: ignore[attr-defined]
    return answer.status_code, answer.json()


@pytest.mark.slow
def test_the_fracatlas_recipe_runs_end_to_end(tmp_path: Path) -> None:
    """The recipe's code path (ResNet50 router at its own resolution, part models for the
    parts named, the shoulder router-only, FracAtlas boxes and hardware) on 36 images (6
    per part and label), at toy sizes: the bundle is complete, says what it was trained
    on, and answers."""
    root = small_fracatlas(tmp_path / "fracatlas", per_part_label=6)
    config = TrainConfig(
        **{
            **FRACATLAS_CPU,
            "name": "fracatlas-small",
            "body_parts": ("HAND", "LEG"),  # 8 fractured each: too few for auto, named here
            "input_size": 64,
            "router_input_size": 32,
            "gate_dimensions": 8,
            "epochs": 1,
            "batch_size": 8,
            "progress": False,
            "mixed_precision": False,
        }
    )
    manifest = run_training(root, config, out=tmp_path / "bundle", run_dir=tmp_path / "run")
    assert manifest is not None
    assert manifest.router.classes == ["Hand", "Shoulder", "Leg"]  # the vocabulary's order
    assert sorted(manifest.parts) == ["Hand", "Leg"]
    assert manifest.router.backbone == "resnet50" and manifest.data["layout"] == "fracatlas"
    assert "no fracture model" in manifest.intended_use and "shoulder" in manifest.intended_use
    report = json.loads((tmp_path / "bundle" / "report.json").read_text())
    assert "image (the data set has no patient ids" in report["fitted_on"]["unit_of_resampling"]
    baselines = report["baselines"]["parts"]
    assert {"orientation", "size", "thumbnail_spread", "combined", "hardware"} <= set(
        baselines["Hand"]["baselines"]
    )
    assert report["localisation"] is not None  # scored against FracAtlas's fracture boxes
    card = (tmp_path / "bundle" / "MODEL_CARD.md").read_text()
    assert "FracAtlas" in card and "CC BY 4.0" in card and "by image" in card
    # the serving copy: ONNX, manifest, card and report only, and it still verifies
    slim = serving_copy(tmp_path / "bundle", tmp_path / "models" / "fracatlas-small")
    assert not [f for f in slim.files if f.endswith((".keras", ".csv", ".png"))]
    assert slim.router.keras is None and verify_bundle(tmp_path / "models" / "fracatlas-small")
    table = pd.read_csv(root / "dataset.csv")
    with running(_settings(tmp_path / "models" / "fracatlas-small", tmp_path)) as (client, _):
        # every answer links the model card, which says the split is by image
        served_card = client.get("/model/card")
        assert served_card.status_code == 200 and "by image" in served_card.text
        assert served_card.headers["content-type"].startswith("text/markdown")
        guarantees = client.get("/model").json()["guarantees"]
        assert (
            set(guarantees) == {"Hand", "Leg"}
            and "Insufficient data" in guarantees["Hand"]["study"]
        )
        shoulder = root / "images" / table[table["body_part"] == "shoulder"]["image_id"].iloc[0]
        status, body = _answer(client, shoulder)
        # one epoch on 36 images routes at random; whatever the router says, a view routed
        # to the shoulder (no model) is refused naming it, and only modelled parts answer
        if status == 200:
            assert body["bone_type"] in ("Hand", "Leg") and body["model"]["name"] == slim.name
            assert body["model"]["card_url"] == "/model/card"
            assert body["operating_point"]["insufficient_data"] is True  # 6 fractured hands
            assert any("Insufficient data" in w for w in body["warnings"])
        else:
            assert status == 422 and body["code"] in ("unsupported_body_part", "not_eligible")
            if body["code"] == "unsupported_body_part":
                assert body["bone_type"] == "Shoulder"


def test_the_shipped_bundle_verifies_and_answers_a_real_radiograph(tmp_path: Path) -> None:
    if not (SHIPPED / "manifest.json").is_file():
        pytest.skip(f"no shipped bundle at {SHIPPED}")
    manifest = verify_bundle(SHIPPED)
    assert not manifest.synthetic and "FracAtlas" in (SHIPPED / "MODEL_CARD.md").read_text()
    # the size limits as the project's own check counts them (du, MiB): <= 100 in all,
    # no file over 95
    size = sum((SHIPPED / f).stat().st_size for f in manifest.files)
    assert size <= 100 * 2**20 and all((SHIPPED / f).stat().st_size <= 95e6 for f in manifest.files)
    assert not [f for f in manifest.files if f.endswith(".keras")]
    source = fracatlas_root()
    test_split = json.loads((SHIPPED / "report.json").read_text())["counts"]["test"]
    assert test_split["images"] > 100
    table = pd.read_csv(source / "dataset.csv")
    hand = table[(table["body_part"] == "hand") & (table["fractured"] == 1)]["image_id"].iloc[0]
    with running(_settings(SHIPPED, tmp_path)) as (client, _):
        status, body = _answer(client, source / "images" / hand)
        assert status in (200, 422), body
        if status == 200:
            assert body["bone_type"] in manifest.parts and body["model"]["name"] == manifest.name
            assert body["operating_point"]["test_sensitivity_ci"] is not None
        else:  # a refusal names its reason
            assert body.get("code") in ("unsupported_body_part", "not_eligible"), body


def test_the_recipe_is_one_config(tmp_path: Path) -> None:
    config = TrainConfig(**FRACATLAS_CPU)
    assert config.router_backbone == "resnet50" and config.downsample_for("router") == 2
    assert config.body_parts == ()  # auto: every part with enough positives
    assert dataclasses.replace(config, input_size=384).downsample_for("router") == 3
    assert config.epochs_for("router") == 12 and config.epochs_for("hand") == 30
    # ImageNet weights where a user has them: the ResNet50 router; the small part models
    # have none and start from random init
    online = dataclasses.replace(config, weights="imagenet")
    assert online.weights_for("router") == "imagenet" and online.weights_for("hand") == "none"
    with pytest.raises(ConfigError, match="must be at least 32 and divide"):
        dataclasses.replace(config, router_input_size=100)
    with pytest.raises(ConfigError, match=r"--target-sensitivity 1 must lie in \(0.5, 1\)"):
        dataclasses.replace(config, target_sensitivity=1.0)
