"""Benchmark: is the input pipeline ever the bottleneck of training?

Measures, in one run on the same data:
  * the ``tf.data`` pipeline alone (decode + letterbox + augment + batch), images/s;
  * the training step alone on an in-memory batch (no input pipeline), images/s;
  * both together (``model.fit`` on the pipeline), images/s.
The pipeline is fast enough when its rate comfortably exceeds the training step rate.
And, for the disk cache of decoded images (what a MURA-scale split uses when it exceeds
``--cache-memory-gb``), one full pass per ``--cache-sizes`` size with the cache cold
(decode + write) and warm (read back), images/s.

    python -m bench.pipeline_bench --size 224 --backbone resnet50 --cache-sizes 224,320
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


def _rate(images: int, seconds: float) -> float:
    return images / seconds if seconds > 0 else float("nan")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data", type=Path, help="MURA-format folder (default: generate a synthetic one)"
    )
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument(
        "--backbone", default="resnet50", choices=("resnet50", "densenet169", "tiny")
    )
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=8, help="batches timed per measurement")
    parser.add_argument("--out", type=Path, default=Path("bench/results/pipeline.json"))
    parser.add_argument("--cache-sizes", default="224,320", help="disk-cache passes at these sizes")
    return parser


def _frame(data: Path | None) -> Any:
    """The dataset index, shuffled (a synthetic MURA tree is generated when none is given)."""
    from training.dataset import index_dataset

    if data is None:
        from training.synthetic import generate_synthetic_mura

        data = Path(tempfile.mkdtemp(prefix="bonexr-bench-")) / "MURA-v1.1"
        generate_synthetic_mura(data, patients_per_part=30, seed=0, progress=False)
    index, _ = index_dataset(data)
    return index.sample(frac=1.0, random_state=0).reset_index(drop=True)


def _training_rates(args: argparse.Namespace, frame: Any) -> tuple[float, float, float]:
    """Images/s of the pipeline alone, the training step alone, and the two together."""
    import keras
    import numpy as np

    from training.models import build_model
    from training.pipeline import BadImageLog, make_dataset

    labels = frame["label"].to_numpy()
    n_images = args.steps * args.batch_size

    def pipeline() -> Any:
        return make_dataset(
            frame,
            targets=labels,
            size=args.size,
            batch_size=args.batch_size,
            training=True,
            bad_images=BadImageLog(),
            cache=False,
        ).repeat()

    ds = iter(pipeline())
    next(ds)  # warm-up: thread pools, first trace
    start = time.perf_counter()
    for _ in range(args.steps):
        next(ds)
    pipeline_rate = _rate(n_images, time.perf_counter() - start)

    model = build_model("abnormality", backbone=args.backbone, input_size=args.size, weights="none")
    model.compile(keras.optimizers.Adam(1e-4), loss="binary_crossentropy")
    x = (
        np.random.default_rng(0)
        .uniform(0, 255, (args.batch_size, args.size, args.size, 1))
        .astype("float32")
    )
    y = np.zeros((args.batch_size, 1), "float32")
    model.train_on_batch(x, y)
    start = time.perf_counter()
    for _ in range(args.steps):
        model.train_on_batch(x, y)
    step_rate = _rate(n_images, time.perf_counter() - start)

    fit_ds = pipeline().take(args.steps + 1)
    model.fit(fit_ds.take(1), verbose=0)
    start = time.perf_counter()
    model.fit(pipeline().take(args.steps), verbose=0)
    fit_rate = _rate(n_images, time.perf_counter() - start)
    return pipeline_rate, step_rate, fit_rate


def _cache_rates(args: argparse.Namespace, frame: Any) -> dict[str, dict[str, float]]:
    """One cold and one warm pass through the disk cache per size."""
    from training.pipeline import BadImageLog, make_dataset

    labels = frame["label"].to_numpy()
    cache_rates = {}
    for size in (int(v) for v in args.cache_sizes.split(",") if v):
        with tempfile.TemporaryDirectory(prefix="bonexr-cache-") as folder:
            rates = {}
            for state in ("cold", "warm"):
                start = time.perf_counter()
                ds = make_dataset(frame, targets=labels, size=size, batch_size=args.batch_size,
                                  training=True, bad_images=BadImageLog(), augment=False,
                                  disk_cache=Path(folder), memory_budget_gb=0.0)  # fmt: skip
                images = sum(int(batch[0].shape[0]) for batch in ds)
                rates[state] = round(_rate(images, time.perf_counter() - start), 1)
            cache_rates[str(size)] = rates
    return cache_rates


def main(argv: list[str] | None = None) -> dict:
    args = _parser().parse_args(argv)
    frame = _frame(args.data)
    pipeline_rate, step_rate, fit_rate = _training_rates(args, frame)
    cache_rates = _cache_rates(args, frame)

    result = {
        "size": args.size,
        "backbone": args.backbone,
        "batch_size": args.batch_size,
        "cpu_count": os.cpu_count(),
        "pipeline_images_per_s": round(pipeline_rate, 1),
        "train_step_images_per_s": round(step_rate, 1),
        "fit_with_pipeline_images_per_s": round(fit_rate, 1),
        "pipeline_headroom": round(pipeline_rate / step_rate, 2),
        "disk_cache_images_per_s": cache_rates,
        "images": len(frame),
    }
    print(
        f"\nInput pipeline vs training step ({args.backbone}, {args.size}px, "
        f"batch {args.batch_size})"
    )
    print(f"{'measurement':<38}{'images/s':>10}")
    print(f"{'tf.data pipeline alone':<38}{pipeline_rate:>10.1f}")
    print(f"{'training step alone (in-memory batch)':<38}{step_rate:>10.1f}")
    print(f"{'model.fit on the pipeline':<38}{fit_rate:>10.1f}")
    print(f"pipeline headroom: {pipeline_rate / step_rate:.1f}x the training step rate")
    for size, rates in cache_rates.items():
        print(f"disk cache, {size}px, one pass of {len(frame)} images: cold {rates['cold']} "
              f"images/s (decode + write), warm {rates['warm']} images/s (read)")  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
