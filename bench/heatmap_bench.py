"""Benchmark: what a heat map costs, against the prediction it explains, in the same run.

1. Model: a part model exported with its CAM output (what bundles ship) against the same
   model exported without it, ONNX Runtime, batch 1 (the CAM is a 1x1 convolution on
   feature maps the model computes anyway).
2. Service, in process (no network): ``POST /predict``; ``POST /predict`` with
   ``"heatmap": true`` (the map from the same pass, cached); ``GET /heatmap`` uncached
   (one two-stage pass + rendering) and cached (rendering only), on 384-512 px radiographs.

    python -m bench.heatmap_bench                      # ResNet50 224 px, random-init bundle
    python -m bench.heatmap_bench --backbone tiny --size 96
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import add_bundle_options, bundle_for, write_result

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _ms(samples: list[float]) -> float:
    return 1000 * statistics.median(samples)


def model_cost(bundle: Path, work: Path, repeats: int) -> dict[str, float]:
    """Median batch-1 ms of the elbow model with and without its CAM output."""
    import keras

    from bonexr.runtime import onnx_session
    from training.export import export_onnx

    plain = work / "elbow-plain.onnx"
    export_onnx(keras.models.load_model(bundle / "elbow.keras"), plain)
    size = int(json.loads((bundle / "manifest.json").read_text())["input"]["size"])
    x = np.random.default_rng(0).uniform(0, 255, (1, size, size, 1)).astype(np.float32)
    out: dict[str, float] = {}
    for label, path in (("without CAM", plain), ("with CAM (shipped)", bundle / "elbow.onnx")):
        session = onnx_session(path)
        name = session.get_inputs()[0].name
        for _ in range(3):
            session.run(None, {name: x})
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            session.run(None, {name: x})
            times.append(time.perf_counter() - start)
        out[label] = _ms(times)
    return out


def service_cost(bundle: Path, work: Path, count: int) -> dict[str, float]:
    """Median ms per request of each way to get a verdict and its heat map."""
    from fastapi.testclient import TestClient

    from bench.service_bench import _xray_pngs
    from service.doors.http.app import create_app
    from service.settings import Settings

    settings = Settings(
        models_dir=bundle.parent,
        bundle=bundle.name,
        upload_dir=work / "uploads",
        log_level="warning",
    )
    images = _xray_pngs(3 * count + 2, work)
    timings: dict[str, list[float]] = {
        "POST /predict": [],
        "POST /predict + heatmap": [],
        "GET /heatmap (uncached)": [],
        "GET /heatmap (cached)": [],
    }
    with TestClient(create_app(settings)) as client:
        assert client.app.state.services.engine.wait_until_settled(120)  # type: ignore[attr-defined]

        def upload(data: bytes) -> str:
            return str(
                client.post("/upload", files={"file": ("x.png", data, "image/png")}).json()[
                    "filename"
                ]
            )

        def timed(label: str, call) -> None:  # type: ignore[no-untyped-def]
            start = time.perf_counter()
            response = call()
            timings[label].append(time.perf_counter() - start)
            assert response.status_code == 200, response.text

        for data in images[:2]:  # warm-up
            name = upload(data)
            client.post("/predict", json={"filename": name, "heatmap": True})
            client.get(f"/heatmap/{name}")
        for i in range(count):
            a, b, c = (upload(images[2 + 3 * i + k]) for k in range(3))
            timed("POST /predict", lambda a=a: client.post("/predict", json={"filename": a}))
            timed(
                "POST /predict + heatmap",
                lambda b=b: client.post("/predict", json={"filename": b, "heatmap": True}),
            )
            timed("GET /heatmap (uncached)", lambda c=c: client.get(f"/heatmap/{c}"))
            timed("GET /heatmap (cached)", lambda c=c: client.get(f"/heatmap/{c}"))
    return {label: _ms(samples) for label, samples in timings.items()}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_bundle_options(parser)
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--out", type=Path, default=Path("bench/results/heatmap.json"))
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bonexr-heatmap-bench-"))
    try:
        bundle = bundle_for(args, work)
        print("measuring the part model with and without its CAM output ...")
        model = model_cost(bundle, work, args.repeats)
        print(f"measuring the service in process ({args.requests} requests each) ...")
        service = service_cost(bundle, work, args.requests)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"\nbonexr heat-map benchmark: {bundle.name}, {os.cpu_count()} CPU cores")
    print(f"\n{'part model, batch 1':<28}{'ms':>8}")
    for label, ms in model.items():
        print(f"{label:<28}{ms:>8.2f}")
    base = model["without CAM"]
    print(f"{'CAM output costs':<28}{model['with CAM (shipped)'] - base:>+8.2f}")
    print(f"\n{'service request (median)':<28}{'ms':>8}{'vs /predict':>14}")
    reference = service["POST /predict"]
    for label, ms in service.items():
        print(f"{label:<28}{ms:>8.1f}{ms - reference:>+13.1f}")
    result = {"bundle": bundle.name, "model_ms": model, "service_ms": service}
    write_result(args.out, result)
    return result


if __name__ == "__main__":
    main()
