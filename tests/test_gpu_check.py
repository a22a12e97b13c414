"""The GPU check (scripts/gpu-check) stays runnable: a tiny, short smoke run on the CPU
produces every figure the GPU run reports, and without --allow-cpu it refuses the CPU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import tensorflow as tf

from bench.gpu_check import main

HAS_GPU = bool(tf.config.list_physical_devices("GPU"))


@pytest.mark.skipif(HAS_GPU, reason="needs a machine without a GPU")
def test_without_a_gpu_it_refuses_unless_allowed(tmp_path: Path) -> None:
    assert main(["--result", str(tmp_path / "r.json")]) == 2
    assert not (tmp_path / "r.json").exists()


def test_a_cpu_smoke_run_reports_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "gpu_check.json"
    args = ["--allow-cpu", "--backbone", "tiny", "--sizes", "48", "--steps", "2",
            "--batch", "8", "--repeats", "1", "--result", str(out)]  # fmt: skip
    assert main(args) == 0
    result = json.loads(out.read_text())
    assert (result["device"] == "CPU") is not HAS_GPU  # says which device made the figures
    rows = result["training"]
    assert [r["mixed_precision"] for r in rows] == [False, True]
    assert all(r["images_per_s"] > 0 and r["size"] == 48 for r in rows)
    serving = result["serving"]
    assert serving["router"]["cpu_images_per_s"] > 0 and serving["elbow"]["cpu_images_per_s"] > 0
    if serving["cuda_provider"]:
        assert serving["router"]["cuda_vs_cpu_max_abs_diff"] < 1e-3
