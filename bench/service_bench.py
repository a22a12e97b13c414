"""Benchmark: runtimes, the HTTP service and overload, all measured in the same run.

1. Runtimes (:mod:`bench.runtime_bench`): ONNX Runtime fp32, OpenVINO fp32/bf16/int8, one
   model and two-stage, batch 1..16. The fastest two-stage throughput and the fastest
   batch-1 two-stage time are the raw-engine references.
2. The engine in-process with the service's settings (``predict_batch``, the runtime the
   service chooses, preprocessing included), batch 1..16.
3. The service as a separate process (``bonexr serve``, ``BONEXR_PRECISION=auto``: the
   fastest precision the bundle allows) on loopback, driven by concurrent clients (each
   request = upload + predict of a distinct radiograph) at 1, 4, 8 and 16: throughput,
   p50/p95/p99 latency and the server's peak RSS.
4. Overload: a burst of concurrent predicts against a small queue: 429s and their latency,
   the accepted requests' p99, other statuses, lost requests.
5. Plain in-process TensorFlow (Keras ``predict_on_batch``) running the same two forwards
   (router + a part model) at batch 8: the baseline the service is compared with.

Targets (issue #12): service at 8 clients >= 3.0x the TensorFlow baseline and >= 0.85x the
fastest raw engine; p50 at 1 client <= the fastest batch-1 two-stage time + 20 ms; RSS <=
2.5 GB; every 429 in < 50 ms, no 5xx, nothing lost. The random-init bundle is allowed its
reduced precisions for this benchmark only (:func:`bench.common.allow_for_benchmark`).

    python -m bench.service_bench                       # ResNet50 224 px, random-init bundle
    python -m bench.service_bench --bundle models/demo  # any existing bundle
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from bench.common import add_bundle_options, bundle_for, median_ms, write_result

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _xray_pngs(count: int, workdir: Path) -> list[bytes]:
    """Distinct MURA-like uploads: synthetic radiographs, 384-512 px, as PNG bytes.

    Radiograph-like content matters: PNG decode/encode cost depends on how the pixels
    compress, and uniform noise would overstate it.
    """
    from training.synthetic import generate_synthetic_mura

    root = workdir / "images" / "MURA-v1.1"
    patients = max(6, count // 9 + 1)
    generate_synthetic_mura(
        root, patients_per_part=patients, seed=7, progress=False, min_size=384, max_size=512
    )
    files = sorted(root.rglob("*.png"))
    if len(files) < count:
        raise RuntimeError(f"generated {len(files)} images, need {count}")
    return [f.read_bytes() for f in files[:count]]


def raw_engine(bundle: Path, batch_sizes: list[int], repeats: int) -> dict:
    """Two-stage throughput of the engine called directly, with the service's settings."""
    from service.adapters.engine import InferenceEngine
    from service.settings import Settings

    engine = InferenceEngine(Settings(models_dir=bundle.parent, bundle=bundle.name))
    engine.load()
    size = engine.input_size
    rng = np.random.default_rng(0)
    results = {}
    for batch in batch_sizes:
        pixels = rng.integers(0, 256, (batch, size, size), dtype=np.uint8)
        engine.predict_batch(pixels)
        start = time.perf_counter()
        for _ in range(repeats):
            engine.predict_batch(pixels)
        seconds = (time.perf_counter() - start) / repeats
        results[batch] = {"ms_per_batch": seconds * 1000, "images_per_s": batch / seconds}
    return results


class RssSampler(threading.Thread):
    """Polls a process's resident set size; keeps the peak."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        import psutil

        self.process = psutil.Process(pid)
        self.peak = 0
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            try:
                self.peak = max(self.peak, self.process.memory_info().rss)
            except Exception:
                return
            time.sleep(0.05)


def _multipart(data: bytes, boundary: str = "bonexrbenchboundary") -> tuple[bytes, str]:
    """A prebuilt multipart body, so the client spends no CPU encoding during the run."""
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="x.png"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode()
    return (
        head + data + f"\r\n--{boundary}--\r\n".encode(),
        f"multipart/form-data; boundary={boundary}",
    )


def _drive(port: int, bodies: list[tuple[bytes, str]], concurrency: int) -> dict:
    """Each of ``concurrency`` keep-alive clients sends upload+predict pairs until none are left.

    The client is deliberately thin (``http.client``, prebuilt bodies): on a 2-core machine
    the load generator shares the CPU with the server, and a heavy client would be measured
    as service overhead.
    """
    latencies: list[float] = []
    work = iter(bodies)
    lock = threading.Lock()
    failures: list[str] = []

    def client() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        while True:
            with lock:
                item = next(work, None)
            if item is None:
                break
            body, content_type = item
            start = time.perf_counter()
            connection.request("POST", "/upload", body, {"Content-Type": content_type})
            upload = connection.getresponse()
            payload = upload.read()
            if upload.status not in (200, 201):
                failures.append(f"upload {upload.status}")
                continue
            filename = json.loads(payload)["filename"]
            request = json.dumps({"filename": filename}).encode()
            connection.request("POST", "/predict", request, {"Content-Type": "application/json"})
            predict = connection.getresponse()
            predict.read()
            if predict.status != 200:
                failures.append(f"predict {predict.status}")
                continue
            with lock:
                latencies.append(time.perf_counter() - start)
        connection.close()

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    if failures:
        raise RuntimeError(f"{len(failures)} failed requests, e.g. {failures[0]}")
    ms = np.asarray(latencies) * 1000
    return {
        "concurrency": concurrency,
        "requests": len(latencies),
        "images_per_s": len(latencies) / elapsed,
        "p50_ms": float(np.percentile(ms, 50)),
        "p95_ms": float(np.percentile(ms, 95)),
        "p99_ms": float(np.percentile(ms, 99)),
    }


def _overload(port: int, bodies: list[tuple[bytes, str]]) -> dict:
    """Upload ``bodies``, then fire one predict per image at once (one thread each)."""
    names = []
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    for body, content_type in bodies:
        connection.request("POST", "/upload", body, {"Content-Type": content_type})
        names.append(json.loads(connection.getresponse().read())["filename"])
    connection.close()
    results: list[tuple[int, float]] = []
    lock = threading.Lock()
    go = threading.Event()

    def client(name: str) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        conn.connect()
        request = json.dumps({"filename": name}).encode()
        go.wait()
        start = time.perf_counter()
        conn.request("POST", "/predict", request, {"Content-Type": "application/json"})
        response = conn.getresponse()
        response.read()
        with lock:
            results.append((response.status, time.perf_counter() - start))
        conn.close()

    threads = [threading.Thread(target=client, args=(n,)) for n in names]
    for thread in threads:
        thread.start()
    time.sleep(0.5)  # every connection open: a true burst
    go.set()
    for thread in threads:
        thread.join()
    refused = [t * 1000 for s, t in results if s == 429]
    accepted = [t * 1000 for s, t in results if s == 200]
    return {
        "burst": len(names),
        "answered_200": len(accepted),
        "refused_429": len(refused),
        "other": sorted({s for s, _ in results if s not in (200, 429)}),
        "lost": len(names) - len(results),
        "p99_429_ms": float(np.percentile(refused, 99)) if refused else None,
        "max_429_ms": float(max(refused)) if refused else None,
        "p99_200_ms": float(np.percentile(accepted, 99)) if accepted else None,
    }


def _serve(bundle: Path, work: Path, port: int, **env: str) -> subprocess.Popen:
    variables = os.environ | {
        "BONEXR_MODELS_DIR": str(bundle.parent),
        "BONEXR_BUNDLE": bundle.name,
        "BONEXR_UPLOAD_DIR": str(work / "uploads"),
        "BONEXR_PORT": str(port),
        "BONEXR_HOST": "127.0.0.1",
        "BONEXR_LOG_LEVEL": "warning",
        **env,
    }
    bonexr = Path(sys.executable).with_name("bonexr")
    return subprocess.Popen([str(bonexr), "serve"], env=variables, stdout=subprocess.DEVNULL)


def _wait_ready(base: str, process: subprocess.Popen, timeout: float = 180) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"service exited with code {process.returncode}")
        try:
            if httpx.get(f"{base}/ready", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError("service did not become ready in time")


def tensorflow_baseline(bundle: Path, batch: int, repeats: int) -> dict:
    """Keras ``predict_on_batch`` of the router and one part model on the same batch: what
    serving straight from the training framework would give."""
    import keras

    from bonexr.bundle import read_manifest

    manifest = read_manifest(bundle)
    part = next(iter(manifest.parts.values()))
    router = keras.saving.load_model(bundle / str(manifest.router.keras), compile=False)
    model = keras.saving.load_model(bundle / str(part.keras), compile=False)
    size = manifest.input.size
    x = np.random.default_rng(0).uniform(0, 255, (batch, size, size, 1)).astype(np.float32)
    ms = median_ms(lambda v: (router.predict_on_batch(v), model.predict_on_batch(v)), x, repeats)
    seconds = ms / 1000
    return {"batch": batch, "ms_per_batch": 1000 * seconds, "images_per_s": batch / seconds}


def print_runtime_table(rows: list[dict]) -> None:
    print("\nRuntimes (max|dP|: largest probability change against ONNX Runtime fp32)")
    print(
        f"{'runtime':<22}{'batch':>6}{'model ms':>10}{'2-stage ms':>12}{'img/s':>8}{'max|dP|':>10}"
    )
    for r in rows:
        print(
            f"{r['runtime'] + ' ' + r['precision']:<22}{r['batch']:>6}{r['single_ms']:>10.1f}"
            f"{r['two_stage_ms']:>12.1f}{r['two_stage_images_per_s']:>8.1f}"
            f"{r['max_abs_diff_vs_ort_fp32']:>10.4f}"
        )


def _targets(
    *,
    at8: dict | None,
    at1: dict | None,
    fastest: dict,
    fastest_b1: dict,
    tensorflow: dict,
    peak_gb: float,
    overload: dict,
) -> dict:
    """Each target with its measured figure, printed as met / NOT met."""
    rows: list[tuple[str, str, bool]] = []
    if at8:
        vs_tf = at8["images_per_s"] / tensorflow["images_per_s"]
        vs_fast = at8["images_per_s"] / fastest["two_stage_images_per_s"]
        rows.append(("8 clients >= 3.0x TensorFlow batch 8", f"{vs_tf:.2f}x", vs_tf >= 3.0))
        rows.append(
            (
                f"8 clients >= 0.85x fastest engine ({fastest['runtime']} "
                f"{fastest['precision']} b{fastest['batch']})",
                f"{vs_fast:.2f}x",
                vs_fast >= 0.85,
            )
        )
    if at1:
        bound = fastest_b1["two_stage_ms"] + 20
        rows.append(
            (
                f"p50 at 1 client <= {fastest_b1['two_stage_ms']:.1f} + 20 ms",
                f"{at1['p50_ms']:.1f} ms",
                at1["p50_ms"] <= bound,
            )
        )
    rows.append(("peak RSS <= 2.5 GB", f"{peak_gb:.2f} GB", peak_gb <= 2.5))
    if overload["refused_429"]:
        rows.append(
            (
                "every 429 in < 50 ms",
                f"max {overload['max_429_ms']:.1f} ms",
                overload["max_429_ms"] < 50,
            )
        )
    rows.append(
        (
            "overload: no 5xx, nothing lost",
            f"{overload['other'] or 'no other statuses'}, lost {overload['lost']}",
            not overload["other"] and overload["lost"] == 0,
        )
    )
    print("\nTargets")
    for name, figure, met in rows:
        print(f"  {'met    ' if met else 'NOT met'}  {name}: {figure}")
    return {name: {"measured": figure, "met": met} for name, figure, met in rows}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_bundle_options(parser)
    parser.add_argument("--concurrency", default="1,4,8,16")
    parser.add_argument("--requests-per-client", type=int, default=12)
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--max-batch-wait-ms", type=float, default=5.0)
    parser.add_argument("--out", type=Path, default=Path("bench/results/service.json"))
    parser.add_argument("--burst", type=int, default=64, help="overload run: concurrent predicts")
    parser.add_argument("--burst-queue", type=int, default=8, help="overload run: BONEXR_MAX_QUEUE")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="bonexr-bench-"))
    try:
        return _run(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)  # bundle, images and uploads: nothing left


def _run(args: argparse.Namespace, work: Path) -> dict:
    bundle = bundle_for(args, work)

    from bench.runtime_bench import measure as measure_runtimes

    print("measuring the runtimes (one model and two-stage, batch 1..16) ...")
    runtimes = measure_runtimes(bundle, [1, 2, 4, 8, 16], repeats=5)
    fastest = max(runtimes, key=lambda r: r["two_stage_images_per_s"])
    fastest_b1 = min((r for r in runtimes if r["batch"] == 1), key=lambda r: r["two_stage_ms"])

    print("measuring the engine in-process (the service's runtime choice, two-stage) ...")
    raw = raw_engine(bundle, [1, 2, 4, 8, 16], repeats=6)
    service, bodies, peak_gb = _service_levels(args, bundle, work)
    overload = _overload_run(args, bundle, work, bodies[-args.burst :])

    print("measuring plain in-process TensorFlow (two forwards at batch 8) ...")
    tensorflow = tensorflow_baseline(bundle, batch=8, repeats=5)
    _print_run(bundle, runtimes, raw, service, tensorflow, overload, args.burst_queue)
    checks = _targets(
        at8=next((r for r in service if r["concurrency"] == 8), None),
        at1=next((r for r in service if r["concurrency"] == 1), None),
        fastest=fastest,
        fastest_b1=fastest_b1,
        tensorflow=tensorflow,
        peak_gb=peak_gb,
        overload=overload,
    )
    result = {
        "bundle": bundle.name,
        "cpu_count": os.cpu_count(),
        "runtimes": runtimes,
        "tensorflow_batch8": tensorflow,
        "raw_engine": raw,
        "fastest_runtime": fastest,
        "service": service,
        "peak_rss_gb": peak_gb,
        "overload": overload,
        "checks": checks,
    }
    write_result(args.out, result)
    return result


def _service_levels(
    args: argparse.Namespace, bundle: Path, work: Path
) -> tuple[list[dict], list[tuple[bytes, str]], float]:
    """The service over HTTP at each concurrency: results, the request bodies made (the
    overload run reuses the last ones) and the server's peak RSS in GB."""
    port = _free_port()
    process = _serve(
        bundle,
        work,
        port,
        BONEXR_MAX_BATCH_SIZE=str(args.max_batch_size),
        BONEXR_MAX_BATCH_WAIT_MS=str(args.max_batch_wait_ms),
    )
    sampler = RssSampler(process.pid)
    sampler.start()
    service = []
    try:
        _wait_ready(f"http://127.0.0.1:{port}", process)
        levels = [int(c) for c in args.concurrency.split(",")]
        needed = sum(levels) * args.requests_per_client + 4 + args.burst
        bodies = [_multipart(image) for image in _xray_pngs(needed, work)]
        _drive(port, bodies[:4], 2)  # warm-up
        offset = 4
        for level in levels:
            count = level * args.requests_per_client
            batch = bodies[offset : offset + count]
            offset += count
            print(f"driving the service at concurrency {level} ({count} upload+predict pairs) ...")
            service.append(_drive(port, batch, level))
    finally:
        process.terminate()
        process.wait(30)
        sampler.stopped.set()
    return service, bodies, sampler.peak / 1e9


def _overload_run(
    args: argparse.Namespace, bundle: Path, work: Path, bodies: list[tuple[bytes, str]]
) -> dict:
    print(f"overload: {args.burst} predicts at once against a queue of {args.burst_queue} ...")
    port = _free_port()
    process = _serve(
        bundle,
        work,
        port,
        BONEXR_MAX_BATCH_SIZE=str(args.max_batch_size),
        BONEXR_MAX_QUEUE=str(args.burst_queue),
    )
    try:
        _wait_ready(f"http://127.0.0.1:{port}", process)
        return _overload(port, bodies)
    finally:
        process.terminate()
        process.wait(30)


def _print_run(
    bundle: Path,
    runtimes: list[dict],
    raw: dict,
    service: list[dict],
    tensorflow: dict,
    overload: dict,
    burst_queue: int,
) -> None:
    print(f"\nbonexr benchmark: {bundle.name}, {os.cpu_count()} CPU cores, one run")
    print_runtime_table(runtimes)
    print("\nEngine in-process (service settings and runtime choice, preprocessing included)")
    print(f"{'batch':>6}{'ms/batch':>12}{'images/s':>12}")
    for batch, r in raw.items():
        print(f"{batch:>6}{r['ms_per_batch']:>12.1f}{r['images_per_s']:>12.1f}")
    print(
        "\nService over HTTP (one request = upload + predict of a distinct 384-512 px radiograph)"
    )
    print(f"{'clients':>8}{'images/s':>10}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}")
    for r in service:
        print(
            f"{r['concurrency']:>8}{r['images_per_s']:>10.1f}"
            f"{r['p50_ms']:>9.1f}{r['p95_ms']:>9.1f}{r['p99_ms']:>9.1f}"
        )
    print(
        f"\nPlain TensorFlow, two forwards at batch 8: {tensorflow['images_per_s']:.1f} images/s "
        f"({tensorflow['ms_per_batch']:.0f} ms per batch)"
    )
    print(
        f"\nOverload ({overload['burst']} predicts at once, queue {burst_queue}): "
        f"{overload['answered_200']} answered, {overload['refused_429']} refused (429), "
        f"other statuses {overload['other'] or 'none'}, lost {overload['lost']}"
    )


if __name__ == "__main__":
    main()
