"""Benchmark: the runtimes and precisions the service can use, measured in the same run.

ONNX Runtime fp32 (the reference), OpenVINO fp32, bf16 and int8 (the bundle's NNCF IR
files; skipped when the bundle has none), each opened through
``service.adapters.runtimes`` exactly as the engine opens it: one part model alone, and the
two-stage path (router, then a part model on the same images), at batch 1 to 16. The max
|P - P(ORT fp32)| on the same inputs is printed beside each row: speed with its accuracy.

    python -m bench.runtime_bench                       # ResNet50 224 px, random-init bundle
    python -m bench.runtime_bench --bundle models/demo  # any existing bundle
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from bench.common import add_bundle_options, bundle_for, median_ms, write_result

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

CHOICES = (
    ("onnxruntime", "fp32"),
    ("openvino", "fp32"),
    ("openvino", "bf16"),
    ("openvino", "int8"),
)


def measure(bundle: Path, batches: list[int], repeats: int) -> list[dict]:
    from bonexr.bundle import read_manifest
    from bonexr.labels import ROUTER
    from service.adapters.runtimes import RuntimeChoice, open_session
    from service.settings import Settings

    manifest = read_manifest(bundle)
    size = manifest.input.size
    part = next(iter(manifest.parts))
    settings = Settings(models_dir=bundle.parent)
    rng = np.random.default_rng(0)
    inputs = {b: rng.uniform(0, 255, (b, size, size, 1)).astype(np.float32) for b in batches}
    reference: dict[int, np.ndarray] = {}
    rows = []
    for runtime, precision in CHOICES:
        spec = manifest.precisions.get(precision)
        if precision == "int8" and (spec is None or not spec.files):
            print("int8 skipped: the bundle has no int8 files")
            continue
        choice = RuntimeChoice(runtime, precision, "benchmark")
        router = open_session(choice, bundle / manifest.served_file(ROUTER, precision), settings)
        model = open_session(choice, bundle / manifest.served_file(part, precision), settings)
        for batch in batches:
            x = inputs[batch]
            probs = model.run(x)[0][:, 0]
            reference.setdefault(batch, probs)
            single = median_ms(model.run, x, repeats)
            two_stage = median_ms(lambda v, r=router, m=model: (r.run(v), m.run(v)), x, repeats)
            rows.append(
                {
                    "runtime": runtime,
                    "precision": precision,
                    "batch": batch,
                    "single_ms": single,
                    "two_stage_ms": two_stage,
                    "two_stage_images_per_s": 1000 * batch / two_stage,
                    "max_abs_diff_vs_ort_fp32": float(np.max(np.abs(probs - reference[batch]))),
                }
            )
            print(f"{runtime} {precision} batch {batch}: {two_stage:.1f} ms two-stage")
    return rows


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_bundle_options(parser)
    parser.add_argument("--batches", default="1,2,4,8,16")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("bench/results/runtimes.json"))
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bonexr-runtime-bench-"))
    try:
        bundle = bundle_for(args, work)
        rows = measure(bundle, [int(b) for b in args.batches.split(",")], args.repeats)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\nbonexr runtime benchmark: {Path(bundle).name}, {os.cpu_count()} CPU cores")
    header = (
        f"{'runtime':<22}{'batch':>6}{'model ms':>10}{'2-stage ms':>12}{'img/s':>8}{'max|dP|':>10}"
    )
    print(header)
    for r in rows:
        print(
            f"{r['runtime'] + ' ' + r['precision']:<22}{r['batch']:>6}{r['single_ms']:>10.1f}"
            f"{r['two_stage_ms']:>12.1f}{r['two_stage_images_per_s']:>8.1f}"
            f"{r['max_abs_diff_vs_ort_fp32']:>10.4f}"
        )
    result = {"bundle": Path(bundle).name, "rows": rows}
    write_result(args.out, result)
    return result


if __name__ == "__main__":
    main()
