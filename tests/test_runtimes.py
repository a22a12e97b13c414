"""Runtimes and precision: OpenVINO beside ONNX Runtime, bf16 and int8 only where the
export's label-free gate allows them, checked against fp32 at load, refused with a
reason."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from bonexr.bundle import Manifest, PrecisionSpec, publish_bundle, read_manifest, verify_files
from bonexr.errors import BundleError
from bonexr.runtime import openvino_capabilities
from harness.bundles import write_as_exported
from harness.service_support import assert_error, make_settings, png_bytes, running
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


THRESHOLDS = {p: {"image": 0.5, "study": 0.5} for p in PARTS}


def images(count: int, size: int, seed: int, split: str = "validation") -> PrecisionTestSet:
    """Random images spread over the three parts, two views per study, labels alternating
    by study (so every part has both classes)."""
    rng = np.random.default_rng(seed)
    return PrecisionTestSet(
        rng.integers(0, 256, (count, size, size), dtype=np.uint8),
        [PARTS[(i // 2) % 3] for i in range(count)],
        np.array([(i // 6) % 2 for i in range(count)]),
        [f"s{i // 2}" for i in range(count)],
        [split] * count,
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
        THRESHOLDS,
        PARTS,
        variant_files=files,
        test=images(12, 64, seed=3, split="test"),
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
    """The runtime the service chose for ``precision`` and its answers for four uploads;
    ``/model`` names the same precision with its test figures beside fp32."""
    settings = make_settings(bundle, tmp_path, precision=precision)
    with running(settings) as (client, _):
        runtime = client.get("/ready").json()["runtime"]
        block = client.get("/model").json()["served_precision"]
        assert runtime.split(":")[0].endswith(block["precision"])
        if block["precision"] != "fp32":
            recorded = read_manifest(bundle).precisions[block["precision"]].measured
            assert set(block["test_study_auroc"]) == set(recorded.get("test", {}))
            assert all(
                {"fp32", block["precision"]} <= set(m) for m in block["test_study_auroc"].values()
            )
        probabilities = []
        for seed in range(4):
            data = png_bytes(96, 80, seed=seed)
            upload = client.post("/upload", files={"file": ("x.png", data, "image/png")})
            answer = client.post("/predict", json={"filename": upload.json()["filename"]})
            probabilities.append(answer.json()["abnormality_probability"])
    return runtime, probabilities


def test_bf16_gate_is_decided_on_the_pool_and_scored_on_test(untrained_bundle: Path) -> None:
    pool, test = images(48, 64, 0), images(24, 64, 5, split="test")
    spec = measure_precision(
        "bf16", untrained_bundle, ONNX_FILES, pool, THRESHOLDS, PARTS, test=test
    )
    flips = spec.measured["flips"]
    assert flips["image"]["decisions"] == 48 and flips["study"]["decisions"] == 24
    for level in ("image", "study"):  # the bound is exact Clopper-Pearson, above the rate
        assert flips[level]["upper_95"] > flips[level]["flipped"] / flips[level]["decisions"]
    # 48 images cannot show a flip rate under 1%: the gate refuses, whatever bf16 did
    assert flips["image"]["upper_95"] > 0.01 and not spec.allowed
    assert 0 < spec.measured["max_abs_probability_change"] < 0.05  # bf16 moves, a little
    assert spec.tolerance == pytest.approx(spec.measured["reference_max_abs_diff"] + 0.01, abs=1e-6)
    assert set(spec.measured["validation_noninferiority"]) == {"Elbow", "Hand", "Shoulder"}
    assert set(spec.measured["test"]) == {"Elbow", "Hand", "Shoulder"}  # for the record
    assert spec.files == {}  # bf16 serves the ONNX files


def test_the_precision_verdict_never_reads_test_labels(untrained_bundle: Path) -> None:
    """Same pool, same test images, the test labels flipped: the verdict and every gate
    figure are the same; only the test record changes."""
    pool, test = images(48, 64, 0), images(24, 64, 5, split="test")
    flipped = PrecisionTestSet(test.pixels, test.parts, 1 - test.labels, test.studies, test.splits)
    a, b = (
        measure_precision("bf16", untrained_bundle, ONNX_FILES, pool, THRESHOLDS, PARTS, test=t)
        for t in (test, flipped)
    )
    assert (a.allowed, a.reason, a.tolerance) == (b.allowed, b.reason, b.tolerance)
    assert a.measured["flips"] == b.measured["flips"]
    assert a.measured["validation_noninferiority"] == b.measured["validation_noninferiority"]
    elbow_a, elbow_b = a.measured["test"]["Elbow"], b.measured["test"]["Elbow"]
    assert elbow_a["study_auroc_fp32"] == pytest.approx(1 - elbow_b["study_auroc_fp32"])


def test_int8_gate_scores_the_quantised_files_two_stage(int8_bundle: Path, tmp_path: Path) -> None:
    manifest = verify_files(int8_bundle)  # the int8 IR files are hashed and verified
    spec = manifest.precisions["int8"]
    assert set(spec.files) == set(ONNX_FILES)
    assert {f"int8/{m}.bin" for m in ONNX_FILES} <= set(manifest.files)
    # int8 really changes the numbers (it is not the fp32 model under another name) ...
    assert spec.measured["max_abs_probability_change"] > 1e-4
    # ... and the gate counts two-stage answers, image and study
    assert spec.measured["flips"]["image"]["decisions"] == 24
    assert spec.measured["flips"]["study"]["decisions"] == 12
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
