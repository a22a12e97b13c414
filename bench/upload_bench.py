"""Benchmark: the upload path's PNG re-encode, encoder by encoder, and ``POST /upload``
before/after, in the same run.

Every upload is decoded and re-encoded as a pixel-only PNG before it is stored (nothing
but pixels survives). In review that re-encode was over half of an in-process upload of a
512 px PNG, so this measures:

1. Encoders on synthetic radiographs (384-512 px, 8-bit grayscale, what the store holds):
   median ms per image and mean KiB, each checked lossless by decoding it back.
2. ``POST /upload`` in process (FastAPI TestClient, folder store: decode, re-encode, two
   fsyncs), with the previous encoder (Pillow level 1) and the shipped one
   (:func:`bonexr.imaging.encode_png`), in alternating rounds.

Figures are medians; the interval is the range of the per-round medians.

    python -m bench.upload_bench                 # 40 images, 5 rounds
    python -m bench.upload_bench --images 80 --rounds 7
"""

from __future__ import annotations

import argparse
import io
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from unittest import mock

import imagecodecs
import numpy as np
from PIL import Image

from bench.common import write_result
from bonexr.imaging import encode_png, encode_png_pillow

Encoder = Callable[[np.ndarray], bytes]


def _pillow(**options: int) -> Encoder:
    def encode(pixels: np.ndarray) -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG", **options)
        return buffer.getvalue()

    return encode


ENCODERS: dict[str, Encoder] = {
    "Pillow level 6 (Pillow's default)": _pillow(compress_level=6),
    "Pillow level 1 (before)": _pillow(compress_level=1),
    "Pillow level 1, RLE strategy": _pillow(compress_level=1, compress_type=3),
    "libpng level 1, SUB filter": lambda a: bytes(imagecodecs.png_encode(a, level=1, filter=16)),
    "libpng level 1, RLE, SUB filter (shipped)": lambda a: encode_png(Image.fromarray(a)),
    "libspng level 1": lambda a: bytes(imagecodecs.spng_encode(a, level=1)),
}


def _radiographs(count: int, work: Path) -> list[bytes]:
    from bench.service_bench import _xray_pngs

    return _xray_pngs(count, work)


def _summary(per_round: list[float]) -> dict[str, float]:
    return {
        "median_ms": round(statistics.median(per_round), 3),
        "low_ms": round(min(per_round), 3),
        "high_ms": round(max(per_round), 3),
    }


def encoder_table(images: list[np.ndarray], rounds: int) -> dict[str, dict[str, float]]:
    """Per encoder: median ms per image (range over rounds), mean KiB; lossless checked."""
    sizes: dict[str, float] = {}
    for name, encode in ENCODERS.items():
        total = 0
        for pixels in images:
            data = encode(pixels)
            total += len(data)
            back = np.asarray(Image.open(io.BytesIO(data)))
            if not np.array_equal(back, pixels):
                raise AssertionError(f"{name} is not lossless")
        sizes[name] = total / len(images) / 1024
    per_round: dict[str, list[float]] = {name: [] for name in ENCODERS}
    for _ in range(rounds):
        for name, encode in ENCODERS.items():  # interleaved: load swings hit all alike
            times = []
            for pixels in images:
                start = time.perf_counter()
                encode(pixels)
                times.append(time.perf_counter() - start)
            per_round[name].append(1000 * statistics.median(times))
    return {
        name: _summary(per_round[name]) | {"mean_kib": round(sizes[name], 1)} for name in ENCODERS
    }


def upload_before_after(
    uploads: list[bytes], rounds: int, work: Path
) -> dict[str, dict[str, float]]:
    """Median ms of an in-process ``POST /upload``, previous encoder against shipped."""
    from fastapi.testclient import TestClient

    from service.doors.http.app import create_app
    from service.settings import Settings
    from training.export import export_random_init_bundle

    bundle = work / "models" / "tiny"  # the upload path does not depend on the model
    export_random_init_bundle(bundle, input_size=64, backbone="tiny")
    variants: dict[str, Callable[[Image.Image], bytes]] = {
        "before: Pillow level 1": encode_png_pillow,
        "after: libpng level 1, RLE, SUB": encode_png,
    }
    per_round: dict[str, list[float]] = {name: [] for name in variants}
    for index in range(rounds):
        for name, encoder in variants.items():
            settings = Settings(
                models_dir=bundle.parent,
                bundle=bundle.name,
                upload_dir=work / f"uploads-{index}-{len(per_round[name])}-{name[:5]}",
                log_level="warning",
            )
            with (
                mock.patch("service.doors.http.routes.upload.encode_png", encoder),
                TestClient(create_app(settings)) as client,
            ):
                times = []
                for data in uploads:
                    start = time.perf_counter()
                    response = client.post("/upload", files={"file": ("x.png", data, "image/png")})
                    times.append(time.perf_counter() - start)
                    if response.status_code not in (200, 201):
                        raise AssertionError(response.text)
            per_round[name].append(1000 * statistics.median(times))
    return {name: _summary(values) for name, values in per_round.items()}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("bench/results/upload.json"))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        uploads = _radiographs(args.images, work)
        images = [np.asarray(Image.open(io.BytesIO(data)).convert("L")) for data in uploads]
        encoders = encoder_table(images, args.rounds)
        upload = upload_before_after(uploads, args.rounds, work)
    sizes = sorted({f"{a.shape[1]}x{a.shape[0]}" for a in images})
    result = {
        "images": len(images),
        "rounds": args.rounds,
        "sizes": f"{sizes[0]} .. {sizes[-1]}",
        "encoders": encoders,
        "upload": upload,
    }
    print(f"\nPNG re-encode, {len(images)} synthetic radiographs, {args.rounds} rounds")
    print(f"{'encoder':45s} {'median ms':>10s} {'range':>15s} {'KiB':>7s}")
    for name, row in encoders.items():
        span = f"{row['low_ms']:.2f}-{row['high_ms']:.2f}"
        print(f"{name:45s} {row['median_ms']:10.2f} {span:>15s} {row['mean_kib']:7.1f}")
    print("\nPOST /upload in process (folder store)")
    for name, row in upload.items():
        span = f"{row['low_ms']:.2f}-{row['high_ms']:.2f}"
        print(f"{name:45s} {row['median_ms']:10.2f} {span:>15s}")
    write_result(args.out, result)
    return result


if __name__ == "__main__":
    main()
