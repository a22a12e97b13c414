"""Benchmark: latency through a hot swap (``POST /model/reload``) under load, same run.

A real ``bonexr serve`` with two bundles in its models folder; eight clients send
``POST /predict/image`` in a loop. The run has three windows of equal length: before the
swap, during it (from the reload request until its answer), and after it. Reports each
window's request count, failures and p50/p99 latency; the target (issue 39) is no failed
request and p99 during the swap at most twice the p99 before it.

    python -m bench.swap_bench                         # random-init 224 px ResNet50 bundles
    python -m bench.swap_bench --backbone tiny --size 64
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

from bench.common import write_result
from harness.bundles import make_untrained_bundle
from harness.service_support import png_bytes, server_process


def hammer(url: str, stop: threading.Event, log: list[tuple[float, float, int]]) -> None:
    image = png_bytes(512, 400, seed=5)
    with httpx.Client(timeout=120) as client:
        while not stop.is_set():
            started = time.monotonic()
            status = client.post(f"{url}/predict/image", files={"file": ("x.png", image)})
            log.append((started, time.monotonic() - started, status.status_code))


def window(log: list[tuple[float, float, int]], start: float, end: float) -> dict:
    inside = [(d, s) for t, d, s in log if start <= t < end]
    seconds = np.array([d for d, _ in inside]) * 1000
    return {
        "requests": len(inside),
        "failed": sum(s != 200 for _, s in inside),
        "p50_ms": round(float(np.percentile(seconds, 50)), 1) if len(seconds) else None,
        "p99_ms": round(float(np.percentile(seconds, 99)), 1) if len(seconds) else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--out", type=Path, default=Path("bench/results/swap.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        models = Path(folder) / "models"
        for name, seed in (("first", 0), ("second", 1)):
            make_untrained_bundle(
                models / name, input_size=args.size, backbone=args.backbone, seed=seed
            )
        env = {"BONEXR_BUNDLE": "first", "BONEXR_LOG_LEVEL": "warning"}
        with server_process(models, Path(folder) / "uploads", **env) as (url, _):
            log: list[tuple[float, float, int]] = []
            stop = threading.Event()
            clients = [
                threading.Thread(target=hammer, args=(url, stop, log)) for _ in range(args.clients)
            ]
            for client in clients:
                client.start()
            time.sleep(5)  # warm
            before_start = time.monotonic()
            time.sleep(10)
            swap_start = time.monotonic()
            reply = httpx.post(f"{url}/model/reload", json={"bundle": "second"}, timeout=600)
            swap_end = time.monotonic()
            time.sleep(max(10.0, swap_end - swap_start))
            after_end = time.monotonic()
            stop.set()
            for client in clients:
                client.join()
    result = {
        "bundle": f"{args.backbone} {args.size}px, random init",
        "clients": args.clients,
        "swap": reply.json(),
        "before": window(log, before_start, swap_start),
        "during": window(log, swap_start, swap_end),
        "after": window(log, swap_end, after_end),
    }
    before, during = result["before"]["p99_ms"], result["during"]["p99_ms"]
    result["p99_during_over_before"] = round(during / before, 2) if before and during else None
    for key in ("before", "during", "after"):
        print(key, result[key])
    print("swap:", result["swap"], "p99 during / before:", result["p99_during_over_before"])
    write_result(args.out, result)


if __name__ == "__main__":
    main()
