"""The GPU check: what one training GPU does with this project's models, in one command.

On a machine with an NVIDIA GPU (and the ``train-gpu`` extra), ``scripts/gpu-check`` runs
this module. It measures, in one run:

* training throughput of the real architecture (ResNet50 by default) for ``--steps``
  steps at 224 and 320 px, float32 and mixed precision (float16), images/s and peak GPU
  memory (``tf.config.experimental.get_memory_info``);
* an exported bundle (random init, the real export path: ONNX with heat maps, contract,
  reference inputs) run by ONNX Runtime on CUDA against the CPU on the reference inputs
  (parity) and on batches of 16 (throughput).

It never downloads weights or data: models start from random weights (throughput does not
depend on them) and inputs are synthetic. ``--allow-cpu`` runs the same steps on a CPU
(the suite does, tiny and short, so the script cannot rot); figures from a CPU are not GPU
figures and the result says which device it ran on.

    scripts/gpu-check                     # on the GPU machine; JSON in bench/results/
    python -m bench.gpu_check --allow-cpu --backbone tiny --sizes 64 --steps 3
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

RESULT = Path("bench/results/gpu_check.json")


def train_throughput(
    backbone: str, size: int, batch: int, steps: int, mixed: bool, gpu: bool
) -> dict[str, Any]:
    """Images/s of ``steps`` training steps (after two warm-up steps) and peak memory."""
    import keras
    import numpy as np
    import tensorflow as tf

    from training.models import build_model

    keras.mixed_precision.set_global_policy(
        ("mixed_float16" if gpu else "mixed_bfloat16") if mixed else "float32"
    )
    try:
        model = build_model("abnormality", backbone=backbone, input_size=size, weights="none")
        model.compile(keras.optimizers.Adam(1e-4), "binary_crossentropy")
        rng = np.random.default_rng(0)
        x = tf.constant(rng.uniform(0, 255, (batch, size, size, 1)).astype("float32"))
        y = tf.constant(rng.integers(0, 2, (batch, 1)).astype("float32"))
        if gpu:
            tf.config.experimental.reset_memory_stats("GPU:0")
        for _ in range(2):  # tracing and autotuning
            model.train_on_batch(x, y)
        started = time.perf_counter()
        for _ in range(steps):
            loss = model.train_on_batch(x, y)
        float(np.asarray(loss))  # wait for the device
        seconds = time.perf_counter() - started
        peak = tf.config.experimental.get_memory_info("GPU:0")["peak"] if gpu else None
    finally:
        keras.mixed_precision.set_global_policy("float32")
    return {
        "backbone": backbone,
        "size": size,
        "batch": batch,
        "mixed_precision": mixed,
        "steps": steps,
        "images_per_s": round(batch * steps / seconds, 1),
        "peak_gpu_memory_mb": None if peak is None else round(peak / 2**20),
    }


def serving_check(backbone: str, size: int, work: Path, repeats: int) -> dict[str, Any]:
    """Export a random-init bundle; ONNX Runtime CUDA vs CPU on the reference inputs
    (parity) and batches of 16 per second on each."""
    import numpy as np
    import onnxruntime as ort

    from bonexr.contract import reference_inputs
    from bonexr.runtime import OnnxRuntimeSession
    from training.export import export_random_init_bundle

    bundle = work / "models" / "check"
    manifest = export_random_init_bundle(bundle, input_size=size, backbone=backbone)
    x = reference_inputs(size).astype(np.float32)
    batch = np.random.default_rng(1).uniform(0, 255, (16, size, size, 1)).astype(np.float32)
    cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    out: dict[str, Any] = {"bundle_version": manifest.version, "cuda_provider": cuda}
    sessions = {"cpu": ["CPUExecutionProvider"]}
    if cuda:
        sessions["cuda"] = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    for model in ("router", "elbow"):
        runs = {
            k: OnnxRuntimeSession(bundle / f"{model}.onnx", providers=p)
            for k, p in sessions.items()
        }
        entry: dict[str, Any] = {}
        for name, session in runs.items():
            session.run(batch)  # warm-up
            started = time.perf_counter()
            for _ in range(repeats):
                session.run(batch)
            seconds = time.perf_counter() - started
            entry[f"{name}_images_per_s"] = round(16 * repeats / seconds, 1)
        if "cuda" in runs:
            diffs = [
                np.max(np.abs(a - b))
                for a, b in zip(runs["cuda"].run(x), runs["cpu"].run(x), strict=True)
            ]
            entry["cuda_vs_cpu_max_abs_diff"] = float(max(diffs))
        out[model] = entry
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--backbone", default="resnet50", choices=("resnet50", "densenet169", "tiny")
    )
    parser.add_argument("--sizes", default="224,320")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=20, help="ONNX Runtime batches timed")
    parser.add_argument("--allow-cpu", action="store_true", help="run without a GPU (a smoke run)")
    parser.add_argument("--result", type=Path, default=RESULT)
    args = parser.parse_args(argv)

    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus and not args.allow_cpu:
        print("error: no GPU visible to TensorFlow (install the train-gpu extra; check the driver)")
        return 2
    if gpus:
        for gpu in gpus:
            tf.config.experimental.set_memory_growth(gpu, True)  # honest peak figures
    device = (
        tf.config.experimental.get_device_details(gpus[0]).get("device_name", "GPU")
        if gpus
        else "CPU"
    )
    result: dict[str, Any] = {"device": device, "tensorflow": tf.__version__, "training": []}
    for size in (int(s) for s in args.sizes.split(",")):
        for mixed in (False, True):
            row = train_throughput(args.backbone, size, args.batch, args.steps, mixed, bool(gpus))
            print(json.dumps(row), flush=True)
            result["training"].append(row)
    with tempfile.TemporaryDirectory(prefix="bonexr-gpu-check-") as work:
        size = int(args.sizes.split(",")[0])
        result["serving"] = serving_check(args.backbone, size, Path(work), args.repeats)
    print(json.dumps(result["serving"]), flush=True)
    args.result.parent.mkdir(parents=True, exist_ok=True)
    args.result.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.result}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
