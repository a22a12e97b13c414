"""Runtimes and precision: OpenVINO beside ONNX Runtime, bf16 only where the bundle's own
test-split measurement allows it, checked against fp32 at load, refused with a reason."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from service.runtimes import openvino_capabilities
from tests.service_support import assert_error, make_settings, png_bytes, running
from training.precision import PrecisionTestSet, measure_bf16

pytestmark = pytest.mark.skipif(
    not (openvino_capabilities() or set()) >= {"BF16"}, reason="needs OpenVINO on a bf16 CPU"
)


def with_precision(bundle: Path, tmp_path: Path, **bf16: object) -> Path:
    copy = tmp_path / "models" / "copy"
    shutil.copytree(bundle, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["precisions"] = {
        "bf16": {"allowed": True, "runtime": "openvino", "reason": "test", "tolerance": 0.05} | bf16
    }
    (copy / "manifest.json").write_text(json.dumps(manifest))
    return copy


def predictions(client, names: list[str]) -> list[float]:  # type: ignore[no-untyped-def]
    return [
        client.post("/predict", json={"filename": n}).json()["abnormality_probability"]
        for n in names
    ]


def test_bf16_gate_measures_the_test_split(untrained_bundle: Path) -> None:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (24, 64, 64), dtype=np.uint8)
    test = PrecisionTestSet(
        pixels,
        ["ELBOW", "HAND", "SHOULDER"] * 8,
        np.array([0, 1] * 12),
        [f"s{i // 2}" for i in range(24)],
    )
    files = {
        "router": "router.onnx",
        "elbow": "elbow.onnx",
        "hand": "hand.onnx",
        "shoulder": "shoulder.onnx",
    }
    spec = measure_bf16(untrained_bundle, files, test, {"ELBOW": 0.5, "HAND": 0.5, "SHOULDER": 0.5})
    assert spec.measured["decisions"] == 24
    assert 0 < spec.measured["max_abs_probability_change"] < 0.05  # bf16 moves, a little
    assert spec.tolerance > spec.measured["reference_max_abs_diff"]
    assert spec.reason.startswith("allowed" if spec.allowed else "not allowed")
    assert set(spec.measured["parts"]) == {"Elbow", "Hand", "Shoulder"}


def test_auto_serves_bf16_when_allowed_and_close_to_fp32(
    untrained_bundle: Path, tmp_path: Path
) -> None:
    bundle = with_precision(untrained_bundle, tmp_path)
    images = [png_bytes(96, 80, seed=s) for s in range(4)]
    results = {}
    for precision in ("fp32", "auto"):
        settings = make_settings(bundle, tmp_path / precision, precision=precision)
        with running(settings) as (client, _):
            ready = client.get("/ready").json()
            results[precision] = (
                ready["runtime"],
                predictions(
                    client,
                    [
                        client.post("/upload", files={"file": ("x.png", d, "image/png")}).json()[
                            "filename"
                        ]
                        for d in images
                    ],
                ),
            )
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
