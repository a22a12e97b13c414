"""Runtimes and precision: OpenVINO beside ONNX Runtime, bf16 and int8 only where the
bundle's own test-split measurement allows them, checked against fp32 at load, refused
with a reason."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from bonexr.bundle import Manifest, PrecisionSpec, publish_bundle, read_manifest, verify_files
from bonexr.errors import BundleError
from bonexr.runtime import openvino_capabilities
from tests.bundles import write_as_exported
from tests.service_support import assert_error, make_settings, png_bytes, running
from training.precision import PrecisionTestSet, measure_precision
from training.quantize import produce_int8

pytestmark = pytest.mark.skipif(
    not (openvino_capabilities() or set()) >= {"BF16", "INT8"},
    reason="needs OpenVINO on a bf16/int8 CPU",
)

ONNX_FILES = {
    "router": "router.onnx",
    "elbow": "elbow.onnx",
    "hand": "hand.onnx",
    "shoulder": "shoulder.onnx",
}
PARTS = ["ELBOW", "HAND", "SHOULDER"]


def with_precision(bundle: Path, tmp_path: Path, name: str = "bf16", **spec: object) -> Path:
    copy = tmp_path / "models" / "copy"
    shutil.copytree(bundle, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["precisions"] = {
        name: {"allowed": True, "runtime": "openvino", "reason": "test", "tolerance": 0.05} | spec
    }
    write_as_exported(copy, manifest)
    return copy


def images(count: int, size: int, seed: int) -> PrecisionTestSet:
    """Random images spread over the three parts, two views per study."""
    rng = np.random.default_rng(seed)
    return PrecisionTestSet(
        rng.integers(0, 256, (count, size, size), dtype=np.uint8),
        [PARTS[i % 3] for i in range(count)],
        np.array([0, 1] * (count // 2)),
        [f"s{i // 2}" for i in range(count)],
    )


@pytest.fixture(scope="module")
def int8_bundle(untrained_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The random-init bundle republished with NNCF int8 variants, allowed (as the gate
    would for a bundle that passed it), with the tolerance measured on reference inputs."""
    staging = tmp_path_factory.mktemp("int8") / "staging"
    shutil.copytree(untrained_bundle, staging)
    (staging / "manifest.json").unlink()
    files, coverage = produce_int8(staging, ONNX_FILES, images(60, 64, seed=1))
    spec = measure_precision(
        "int8",
        staging,
        ONNX_FILES,
        images(24, 64, seed=2),
        dict.fromkeys(PARTS, 0.5),
        PARTS,
        variant_files=files,
    )
    manifest = read_manifest(untrained_bundle)
    allowed = spec.model_copy(update={"allowed": True, "reason": "allowed: test fixture"})
    manifest = manifest.model_copy(
        update={"version": "", "files": {}, "precisions": {"int8": allowed}}
    )
    destination = staging.parent / "models" / "int8"
    destination.parent.mkdir()
    publish_bundle(staging, manifest, destination)
    assert coverage["elbow"]["int8_layers"] == coverage["elbow"]["layers"] > 0
    return destination


def served(bundle: Path, tmp_path: Path, precision: str) -> tuple[str, list[float]]:
    """The runtime the service chose for ``precision`` and its answers for four uploads."""
    settings = make_settings(bundle, tmp_path, precision=precision)
    with running(settings) as (client, _):
        runtime = client.get("/ready").json()["runtime"]
        probabilities = []
        for seed in range(4):
            data = png_bytes(96, 80, seed=seed)
            upload = client.post("/upload", files={"file": ("x.png", data, "image/png")})
            answer = client.post("/predict", json={"filename": upload.json()["filename"]})
            probabilities.append(answer.json()["abnormality_probability"])
    return runtime, probabilities


def test_bf16_gate_measures_the_test_split(untrained_bundle: Path) -> None:
    spec = measure_precision(
        "bf16", untrained_bundle, ONNX_FILES, images(24, 64, 0), dict.fromkeys(PARTS, 0.5), PARTS
    )
    assert spec.measured["decisions"] == 24
    assert 0 < spec.measured["max_abs_probability_change"] < 0.05  # bf16 moves, a little
    assert spec.tolerance > spec.measured["reference_max_abs_diff"]
    assert spec.reason.startswith("allowed" if spec.allowed else "not allowed")
    assert set(spec.measured["parts"]) == {"Elbow", "Hand", "Shoulder"}
    assert spec.files == {}  # bf16 serves the ONNX files


def test_int8_gate_scores_the_quantised_files_two_stage(int8_bundle: Path, tmp_path: Path) -> None:
    manifest = verify_files(int8_bundle)  # the int8 IR files are hashed and verified
    spec = manifest.precisions["int8"]
    assert set(spec.files) == set(ONNX_FILES)
    assert {f"int8/{m}.bin" for m in ONNX_FILES} <= set(manifest.files)
    # int8 really changes the numbers (it is not the fp32 model under another name) ...
    assert spec.measured["max_abs_probability_change"] > 1e-4
    # ... and the gate counts two-stage decisions, routing included
    assert spec.measured["decisions"] == 24
    assert 0 <= spec.measured["two_stage"]["routing_changed"] <= 24
    # swapping an int8 file is caught like any model file
    tampered = tmp_path / "tampered"
    shutil.copytree(int8_bundle, tampered)
    with open(tampered / "int8" / "hand.bin", "r+b") as handle:
        handle.write(b"\x00\x01\x02\x03")
    with pytest.raises(BundleError, match=r"sha256 mismatch for int8/hand\.bin"):
        verify_files(tampered)


def test_a_precision_file_must_stay_inside_the_bundle() -> None:
    for bad in ("../elsewhere.xml", "/etc/model.xml", "int8/router.onnx"):
        with pytest.raises(ValueError, match=r"bundle-relative \.xml"):
            PrecisionSpec(
                allowed=True, runtime="openvino", reason="x", tolerance=0.1, files={"router": bad}
            )


def test_auto_serves_int8_when_allowed_and_within_its_tolerance(
    int8_bundle: Path, tmp_path: Path
) -> None:
    results = {p: served(int8_bundle, tmp_path / p, p) for p in ("fp32", "auto")}
    assert results["fp32"][0].startswith("openvino fp32")
    assert results["auto"][0].startswith("openvino int8: CPU has int8 and the bundle allows it")
    assert "bf16 not used" not in results["auto"][0]  # int8 is tried first
    diff = np.max(np.abs(np.subtract(results["auto"][1], results["fp32"][1])))
    tolerance = read_manifest(int8_bundle).precisions["int8"].tolerance
    assert 0 < diff < tolerance + 0.1  # different numbers, bounded like the reference check


def test_int8_refusals_name_the_reason(
    untrained_bundle: Path, int8_bundle: Path, tmp_path: Path
) -> None:
    # no int8 files in the bundle: asked for explicitly, refused at start-up with why
    with running(make_settings(untrained_bundle, tmp_path / "a", precision="int8")) as (c, _):
        assert "does not allow int8" in assert_error(c.get("/ready"), 503)["detail"]
    settings = make_settings(int8_bundle, tmp_path / "b", precision="int8", runtime="onnxruntime")
    with running(settings) as (c, _):
        assert "needs runtime openvino" in assert_error(c.get("/ready"), 503)["detail"]
    # the bundle allows int8, but its files drift from fp32 beyond the recorded tolerance
    manifest: Manifest = read_manifest(int8_bundle)
    strict = tmp_path / "c" / "models" / "strict"
    shutil.copytree(int8_bundle, strict)
    spec = manifest.precisions["int8"].model_copy(update={"tolerance": 0.0})
    raw = json.loads((strict / "manifest.json").read_text())
    raw["precisions"]["int8"] = spec.model_dump(mode="json")
    write_as_exported(strict, raw)
    with running(make_settings(strict, tmp_path / "c", precision="int8")) as (c, _):
        assert "refusing it" in assert_error(c.get("/ready"), 503)["detail"]


def test_auto_serves_bf16_when_allowed_and_close_to_fp32(
    untrained_bundle: Path, tmp_path: Path
) -> None:
    bundle = with_precision(untrained_bundle, tmp_path)
    results = {p: served(bundle, tmp_path / p, p) for p in ("fp32", "auto")}
    assert results["fp32"][0].startswith("openvino fp32")
    assert results["auto"][0].startswith("openvino bf16: CPU has bf16")
    diff = np.max(np.abs(np.subtract(results["auto"][1], results["fp32"][1])))
    assert 0 < diff < 0.05


def test_precision_refusals_name_the_reason(untrained_bundle: Path, tmp_path: Path) -> None:
    # the random-init bundle measured no bf16: asking for it is refused at start-up
    with running(make_settings(untrained_bundle, tmp_path / "a", precision="bf16")) as (c, _):
        assert "does not allow bf16" in assert_error(c.get("/ready"), 503)["detail"]
    settings = make_settings(
        untrained_bundle, tmp_path / "b", precision="bf16", runtime="onnxruntime"
    )
    with running(settings) as (c, _):
        assert "needs runtime openvino" in assert_error(c.get("/ready"), 503)["detail"]
    # allowed, but drifting beyond the recorded tolerance at load: refused, not served
    strict = with_precision(untrained_bundle, tmp_path / "c", tolerance=0.0)
    with running(make_settings(strict, tmp_path / "c", precision="bf16")) as (c, _):
        assert "refusing it" in assert_error(c.get("/ready"), 503)["detail"]
    # a runtime name that does not exist is a configuration error
    with pytest.raises(ValueError):
        make_settings(untrained_bundle, tmp_path, runtime="tensorrt")
