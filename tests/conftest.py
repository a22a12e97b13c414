"""Shared fixtures. Nothing here downloads anything: every model is random-init or trained here."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from harness.bundles import make_untrained_bundle

#: Shared fixtures defined elsewhere: ``browser`` (headless chromium for the page tests).
pytest_plugins = ("tests.browser_support",)


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
    """The demo bundle, trained here through the CLI exactly as ``bonexr demo`` makes it.

    The synthetic data is generated first (``bonexr synth``, the demo's size) and one image
    is truncated, so the run must report and skip it. Shared by the learning, export and
    training/serving-parity tests, all in ``tests/test_demo_bundle.py`` so that
    ``make test``'s ``--dist loadfile`` trains it on one worker only. Takes 370-560 s on
    2 quiet cores, the suite's largest single cost (docs/benchmarks.md).
    """
    from bonexr.cli import main
    from training.config import demo_config

    base = tmp_path_factory.mktemp("trained-demo")
    root = base / "MURA-v1.1"
    assert main(["synth", str(root), "--patients-per-part", "120", "--quiet"]) == 0
    corrupt = sorted((root / "train" / "XR_HAND").rglob("image1.png"))[0]
    corrupt.write_bytes(corrupt.read_bytes()[:100])  # a truncated PNG
    bundle = base / "models" / "demo"
    code = main(["demo", "--data", str(root), "--out", str(bundle),
                 "--run-dir", str(base / "runs" / "demo")])  # fmt: skip
    assert code == 0
    return {"root": root, "bundle": bundle, "config": demo_config(), "corrupt": corrupt.resolve()}


@pytest.fixture(scope="module")
def api(
    request: pytest.FixtureRequest,
    untrained_bundle: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[TestClient, FastAPI]]:
    """One running app (on the untrained bundle) shared by a test module's read-mostly tests.

    A module tunes it with a ``SERVICE_OVERRIDES`` dict of settings.
    """
    from harness.service_support import make_settings, running

    overrides: dict[str, Any] = getattr(request.module, "SERVICE_OVERRIDES", {})
    tmp = tmp_path_factory.mktemp("api")
    with running(make_settings(untrained_bundle, tmp, **overrides)) as pair:
        yield pair


@pytest.fixture
def client(api: tuple[TestClient, FastAPI]) -> TestClient:
    """The test client of the module's shared app."""
    return api[0]
