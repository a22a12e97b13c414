"""Benchmark: what shadow mode costs the live service, with and without it, same run.

Two real ``bonexr serve`` runs on the same bundles (random-init, same architecture): one
without a shadow bundle, one with ``BONEXR_SHADOW_BUNDLE`` at 100% sampling. In each,
eight clients send ``POST /predict/study`` (one stored view each) for a fixed time; then
the shadow queue is left to drain. Reported: live p50/p99, the server's CPU seconds per
live request (psutil, the whole process: the shadow's work included), as ratios of the
run with the shadow to the run without, and how many studies the shadow answered and
dropped (it works in the live engine's idle time: under a saturating load most of its
work is dropped, by design). Targets (issue 39): CPU per request <= 1.3x, live
p99 up by at most 20%.

    python -m bench.shadow_bench                         # ResNet50 224 px bundles
    python -m bench.shadow_bench --backbone tiny --size 64 --seconds 10
"""

from __future__ import annotations

import argparse
import re
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import psutil

from bench.common import write_result
from harness.bundles import make_untrained_bundle
from harness.service_support import png_bytes, server_process


def _pid(url: str) -> int:
    port = int(url.rsplit(":", 1)[1])
    for conn in psutil.net_connections("tcp"):
        if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_LISTEN:
            return int(conn.pid)
    raise SystemExit("no server process found")


def run(url: str, clients: int, seconds: float, shadow: bool) -> dict:
    names = [
        httpx.post(f"{url}/upload", files={"file": ("x.png", png_bytes(512, 400, seed=i))}).json()[
            "filename"
        ]
        for i in range(32)
    ]
    process = psutil.Process(_pid(url))
    latencies: list[float] = []
    stop = threading.Event()

    def client(offset: int) -> None:
        with httpx.Client(timeout=120) as session:
            index = offset
            while not stop.is_set():
                started = time.monotonic()
                reply = session.post(
                    f"{url}/predict/study", json={"filenames": [names[index % len(names)]]}
                )
                if reply.status_code == 200:
                    latencies.append(time.monotonic() - started)
                index += clients

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:  # warm-up
        thread.start()
    time.sleep(3)
    latencies.clear()
    cpu_before = sum(process.cpu_times()[:2])
    time.sleep(seconds)
    served = len(latencies)
    timed = np.array(latencies[:served]) * 1000
    stop.set()
    for thread in threads:
        thread.join()
    if shadow:  # the shadow's backlog is part of the cost
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and httpx.get(f"{url}/shadow").json()["queued"]:
            time.sleep(0.5)
    cpu = sum(process.cpu_times()[:2]) - cpu_before
    extra = {}
    if shadow:
        metrics = httpx.get(f"{url}/metrics").text
        dropped = re.search(r'bonexr_shadow_jobs_total\{outcome="dropped"\} ([0-9.]+)', metrics)
        extra = {
            "shadow_answered": httpx.get(f"{url}/shadow").json()["studies"],
            "shadow_dropped": int(float(dropped.group(1))) if dropped else 0,
        }
    return {
        **extra,
        "requests": served,
        "p50_ms": round(float(np.percentile(timed, 50)), 1),
        "p99_ms": round(float(np.percentile(timed, 99)), 1),
        "cpu_s_per_request": round(cpu / max(served, 1), 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--out", type=Path, default=Path("bench/results/shadow.json"))
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        models = Path(folder) / "models"
        for name, seed in (("live", 0), ("candidate", 1)):
            make_untrained_bundle(
                models / name, input_size=args.size, backbone=args.backbone, seed=seed
            )
        for label, extra in (("without", {}), ("with", {"BONEXR_SHADOW_BUNDLE": "candidate"})):
            env = {"BONEXR_BUNDLE": "live", "BONEXR_LOG_LEVEL": "warning", **extra}
            with server_process(models, Path(folder) / f"uploads-{label}", **env) as (url, _):
                results[label] = run(url, args.clients, args.seconds, shadow=bool(extra))
            print(label, results[label], flush=True)
    without, with_shadow = results["without"], results["with"]
    result = {
        "bundle": f"{args.backbone} {args.size}px, random init",
        "clients": args.clients,
        **results,
        "cpu_per_request_ratio": round(
            with_shadow["cpu_s_per_request"] / without["cpu_s_per_request"], 2
        ),
        "p99_ratio": round(with_shadow["p99_ms"] / without["p99_ms"], 2),
    }
    print("cpu per request:", result["cpu_per_request_ratio"], "p99:", result["p99_ratio"])
    write_result(args.out, result)


if __name__ == "__main__":
    main()
