"""What every benchmark does the same way: its bundle, its options for one, its result file."""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np


def add_bundle_options(parser: argparse.ArgumentParser) -> None:
    """``--bundle`` (an existing one) or ``--backbone``/``--size`` of a random-init one."""
    parser.add_argument(
        "--bundle", type=Path, help="bundle folder (default: build a random-init one)"
    )
    parser.add_argument("--size", type=int, default=224, help="input size of a built bundle")
    parser.add_argument("--backbone", default="resnet50", help="backbone of a built bundle")


def bundle_for(args: argparse.Namespace, work: Path) -> Path:
    """The ``--bundle`` given, or a random-init one built in ``work`` (speed needs no
    weights; int8 variants calibrated on random images); resolved."""
    if args.bundle is not None:
        return Path(args.bundle).resolve()
    from training.export import export_random_init_bundle

    bundle = work / "models" / f"{args.backbone}-{args.size}"
    print(f"building a random-init {args.backbone} {args.size}px bundle (speed needs no weights)")
    export_random_init_bundle(
        bundle, input_size=args.size, backbone=args.backbone, int8_calibration=32
    )
    allow_for_benchmark(bundle.resolve())
    return bundle.resolve()


def allow_for_benchmark(bundle: Path) -> None:
    """Let the service serve a random-init bundle's reduced precisions, so the benchmark
    measures the fastest path a gated bundle would get.

    Random weights have no test split to be gated on, so the export marks bf16/int8 not
    allowed; speed does not depend on the weights. This benchmark-only bundle (in a
    temporary folder, deleted afterwards) is marked allowed with that said in the reason,
    and with the load-time tolerance measured on the reference inputs as the export does.
    Accuracy figures come from the trained bundle's gate (``manifest.precisions``).
    """
    from bonexr.bundle import Manifest, read_manifest, rewrite_manifest
    from bonexr.labels import ROUTER, model_key
    from training.precision import load_tolerance, reference_diff, unavailable

    manifest = read_manifest(bundle)
    onnx = {ROUTER: str(manifest.router.onnx)} | {
        model_key(p): str(s.onnx) for p, s in manifest.parts.items()
    }
    raw = json.loads((bundle / "manifest.json").read_text())
    for name, spec in manifest.precisions.items():
        if unavailable(name) or (name == "int8" and not spec.files):
            continue
        diff = reference_diff(bundle, onnx, name, manifest.input.size, spec.files)
        raw["precisions"][name].update(
            allowed=True,
            reason="allowed for the benchmark only: random weights, speed measured, "
            "accuracy not (see a trained bundle's gate)",
            tolerance=load_tolerance(diff),
        )
    rewrite_manifest(bundle, Manifest.model_validate(raw))  # a new version: allowed here


def write_result(path: Path, result: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")


def median_ms(run, x: np.ndarray, repeats: int) -> float:  # type: ignore[no-untyped-def]
    """Median wall time of ``run(x)`` over ``repeats`` calls, after one warm-up call."""
    run(x)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run(x)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)
