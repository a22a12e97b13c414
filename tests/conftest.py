"""Shared fixtures. Nothing here downloads anything: every model is random-init or trained here."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest

from tests.bundles import make_untrained_bundle


@pytest.fixture(scope="session")
def untrained_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A complete, verifiable bundle of random-init tiny models (64 px): fast to build.

    Use it wherever the weights do not matter (API contract, limits, storage, metrics).
    Returns the bundle folder; its parent is a models dir holding only this bundle.
    """
    models_dir = tmp_path_factory.mktemp("models")
    return make_untrained_bundle(models_dir / "tiny", input_size=64)


@pytest.fixture(scope="session")
def synthetic_small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic MURA-v1.1 tree (all three default parts) for quick pipeline runs."""
    from training.synthetic import generate_synthetic_mura

    root = tmp_path_factory.mktemp("synthetic-small") / "MURA-v1.1"
    generate_synthetic_mura(root, patients_per_part=24, seed=1, progress=False)
    return root


@pytest.fixture(scope="session")
def trained_demo(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A bundle trained here on synthetic data with the demo recipe (tiny backbone).

    One image is corrupted first, so the run must report and skip it. Shared by the
    learning, export and training/serving-parity tests.
    """
    from training.config import demo_config
    from training.run import run_training
    from training.synthetic import generate_synthetic_mura

    base = tmp_path_factory.mktemp("trained-demo")
    root = base / "MURA-v1.1"
    generate_synthetic_mura(
        root, patients_per_part=TRAINED_PATIENTS_PER_PART, seed=0, progress=False
    )
    corrupt = sorted((root / "train" / "XR_HAND").rglob("image1.png"))[0]
    corrupt.write_bytes(corrupt.read_bytes()[:100])  # truncated PNG
    config = demo_config(progress=False, **TRAINED_OVERRIDES)
    bundle = base / "models" / "demo"
    run_training(root, config, out=bundle, run_dir=base / "runs" / "demo")
    return {"root": root, "bundle": bundle, "config": config, "corrupt": corrupt.resolve()}


TRAINED_PATIENTS_PER_PART = 60
TRAINED_OVERRIDES: dict = {"input_size": 64, "epochs": 10}
