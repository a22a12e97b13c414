"""Bundle format: verification catches tampering; publishing is atomic and refuses overwrites."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from bonexr.bundle import MANIFEST_NAME, find_bundle, read_manifest, verify_bundle
from bonexr.errors import BundleError
from bonexr.imaging import PREPROCESSING_ID
from tests.bundles import make_untrained_bundle


def _copy(bundle: Path, tmp_path: Path) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(bundle, target)
    return target


def test_manifest_describes_everything(untrained_bundle: Path) -> None:
    manifest = verify_bundle(untrained_bundle)
    assert manifest.body_parts == ["Elbow", "Hand", "Shoulder"]
    assert manifest.router.classes == manifest.body_parts
    assert manifest.input.size == 64 and manifest.input.preprocessing == PREPROCESSING_ID
    assert manifest.synthetic and "not for clinical use" in manifest.intended_use.lower()
    assert set(manifest.files) >= {"router.keras", "router.onnx", "hand.keras", "hand.onnx"}
    assert len(manifest.version) == 12
    assert manifest.libraries["onnxruntime"] and manifest.libraries["keras"]
    parity = manifest.training["onnx_parity_max_abs_diff"]
    assert max(parity.values()) < 1e-4


def test_tampered_file_fails_sha256(untrained_bundle: Path, tmp_path: Path) -> None:
    bundle = _copy(untrained_bundle, tmp_path)
    onnx = bundle / "hand.onnx"
    data = bytearray(onnx.read_bytes())
    data[-10] ^= 0xFF
    onnx.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"sha256 mismatch for hand\.onnx"):
        verify_bundle(bundle)


def test_missing_file_and_bad_manifest(untrained_bundle: Path, tmp_path: Path) -> None:
    bundle = _copy(untrained_bundle, tmp_path)
    (bundle / "router.onnx").unlink()
    with pytest.raises(BundleError, match=r"router\.onnx.*missing"):
        verify_bundle(bundle)
    (bundle / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(BundleError, match="cannot read"):
        read_manifest(bundle)
    raw = json.loads((untrained_bundle / MANIFEST_NAME).read_text()) | {"schema_version": 99}
    (bundle / MANIFEST_NAME).write_text(json.dumps(raw))
    with pytest.raises(BundleError, match="schema_version 99"):
        read_manifest(bundle)
    with pytest.raises(BundleError, match="does not exist"):
        read_manifest(tmp_path / "nowhere")


def test_publish_refuses_existing_bundle(untrained_bundle: Path, tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="already exists"):
        make_untrained_bundle(untrained_bundle)
    verify_bundle(untrained_bundle)  # untouched by the refused export
    models = tmp_path / "models"
    first = make_untrained_bundle(models / "first", seed=1)
    second = make_untrained_bundle(models / "second", seed=2)
    # no staging folders are left behind; find_bundle picks by name, else the newest
    assert not [p for p in models.iterdir() if p.name.startswith(".")]
    assert find_bundle(models, "first") == first
    assert find_bundle(models) == second
    assert verify_bundle(first).version != verify_bundle(second).version
    with pytest.raises(BundleError, match="no model bundle"):
        find_bundle(models, "absent")
