"""Benchmark: bonexr against the peer a user would pick instead (LitServe), in one run.

Same bundle, same runtime and precision choice (both build
:class:`service.adapters.engine.InferenceEngine` with ``BONEXR_PRECISION=auto``), same images, same
keep-alive clients:

* **bonexr upload+predict**: ``POST /upload`` (decode, pixel-only re-encode, two fsyncs:
  an accepted upload is on disk) then ``POST /predict``; distinct images every round, so
  no upload is a duplicate.
* **bonexr one request**: ``POST /predict/image`` with the image in the body (stored as
  ``/upload`` stores it, answered as ``/predict`` answers); distinct images every round.
* **bonexr predict-only**: ``POST /predict`` of images uploaded before the rounds.
* **LitServe**: :mod:`bench.litserve_peer`, one ``POST /predict`` per image with the image
  in it, batched 8 / 5 ms (bonexr's batcher runs with the same 8 / 5 ms); bonexr's
  decoding and preprocessing imported, so only the serving layer differs.
* **raw engine**: in process, decode + letterbox + ``predict_batch`` at batch 8, no HTTP.

Single passes on a 2-core machine contradict each other, so the modes run in an order
rotated every round, over ``--rounds`` rounds (default 5); figures are medians with the
range of the rounds. The peer's answers are compared with bonexr's for the same images.

Targets (benchmark, not test): bonexr one request >= 1.0x LitServe at 1 and 8 clients;
bonexr upload+predict (two requests) >= 0.85x LitServe at 1 and 8 clients; bonexr
predict-only >= 0.9x the raw engine at 8 clients.

    python -m bench.peer_bench                       # ResNet50 224 px, random-init bundle
    python -m bench.peer_bench --bundle models/demo  # any existing bundle
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.common import add_bundle_options, bundle_for, write_result
from bench.service_bench import _free_port, _multipart, _serve, _wait_ready, _xray_pngs

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

Body = tuple[bytes, str]
#: One client's exchange for one image over its keep-alive connection: the answer or None.
Exchange = Callable[[http.client.HTTPConnection, Any], "dict[str, Any] | None"]

MODES = ("bonexr one request", "bonexr upload+predict", "bonexr predict-only", "LitServe")


def _post(
    connection: http.client.HTTPConnection, path: str, body: bytes, content_type: str
) -> tuple[int, bytes]:
    connection.request("POST", path, body, {"Content-Type": content_type})
    response = connection.getresponse()
    return response.status, response.read()


def _upload_predict(connection: http.client.HTTPConnection, item: Body) -> dict | None:
    status, payload = _post(connection, "/upload", *item)
    if status not in (200, 201):
        return None
    return _predict(connection, json.loads(payload)["filename"])


def _predict(connection: http.client.HTTPConnection, filename: str) -> dict | None:
    request = json.dumps({"filename": filename}).encode()
    status, payload = _post(connection, "/predict", request, "application/json")
    return json.loads(payload) if status == 200 else None


def _one_request(connection: http.client.HTTPConnection, item: Body) -> dict | None:
    status, payload = _post(connection, "/predict/image", *item)
    return json.loads(payload) if status == 200 else None


def _peer_predict(connection: http.client.HTTPConnection, item: Body) -> dict | None:
    status, payload = _post(connection, "/predict", *item)
    return json.loads(payload) if status == 200 else None


def _drive(port: int, items: list[Any], clients: int, exchange: Exchange) -> dict[str, Any]:
    """``clients`` keep-alive connections work through ``items``; images/s and answers."""
    answers: list[dict | None] = [None] * len(items)
    queue = iter(enumerate(items))
    lock = threading.Lock()

    def client() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        while True:
            with lock:
                job = next(queue, None)
            if job is None:
                break
            index, item = job
            answers[index] = exchange(connection, item)
        connection.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    failed = sum(answer is None for answer in answers)
    if failed:
        raise RuntimeError(f"{failed} of {len(items)} requests failed")
    return {"images_per_s": len(items) / elapsed, "answers": answers}


def _raw_engine(bundle: Path, images: list[bytes], batch: int = 8) -> float:
    """Images/s of decode + letterbox + ``predict_batch`` in process, batches of ``batch``."""
    from bonexr.imaging import decode_image, prepare_pixels
    from service.adapters.engine import InferenceEngine
    from service.settings import Settings

    engine = _raw_engine.engines.get(bundle)  # type: ignore[attr-defined]
    if engine is None:
        engine = InferenceEngine(Settings(models_dir=bundle.parent, bundle=bundle.name))
        engine.load()
        _raw_engine.engines[bundle] = engine  # type: ignore[attr-defined]
    size = engine.input_size
    start = time.perf_counter()
    for first in range(0, len(images), batch):
        pixels = [prepare_pixels(decode_image(d), size) for d in images[first : first + batch]]
        engine.predict_batch(pixels)
    return len(images) / (time.perf_counter() - start)


_raw_engine.engines = {}  # type: ignore[attr-defined]


def _serve_peer(bundle: Path, port: int) -> subprocess.Popen:
    command = [sys.executable, "-m", "bench.litserve_peer", "--bundle", str(bundle)]
    return subprocess.Popen(
        [*command, "--port", str(port)],
        env=os.environ | {"LITSERVE_DISABLE_TELEMETRY": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # LitServe spawns workers: stopped as one group
    )


def _wait_peer(port: int, process: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"LitServe exited with code {process.returncode}")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            connection.request("GET", "/health")
            if connection.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError("LitServe did not become healthy in time")


def _summary(values: list[float]) -> dict[str, float]:
    return {
        "median": round(statistics.median(values), 2),
        "low": round(min(values), 2),
        "high": round(max(values), 2),
    }


def measure(
    bundle: Path,
    work: Path,
    *,
    clients: tuple[int, ...] = (1, 8),
    rounds: int = 5,
    per_client: int = 6,
    max_batch_size: int = 8,
    max_batch_wait_ms: float = 5.0,
) -> dict[str, Any]:
    """Every mode at every client count, ``rounds`` rotated rounds; medians and ranges."""
    counts = {level: max(16, level * per_client) for level in clients}
    per_round = sum(counts.values())
    images = _xray_pngs(per_round * (2 * rounds + 1) + 4, work / "peer-images")
    shared = images[:per_round]  # predict-only and LitServe: the same images every round
    fresh = iter(images[per_round:])  # the storing modes: distinct images every round

    bonexr_port, peer_port = _free_port(), _free_port()
    bonexr = _serve(
        bundle,
        work / "peer-service",
        bonexr_port,
        BONEXR_MAX_BATCH_SIZE=str(max_batch_size),
        BONEXR_MAX_BATCH_WAIT_MS=str(max_batch_wait_ms),
    )
    peer = _serve_peer(bundle, peer_port)
    rates: dict[str, dict[int, list[float]]] = {
        mode: {level: [] for level in clients} for mode in (*MODES, "raw engine")
    }
    try:
        _wait_ready(f"http://127.0.0.1:{bonexr_port}", bonexr)
        _wait_peer(peer_port, peer)
        bodies = [_multipart(data) for data in shared]
        uploaded = _drive(
            bonexr_port, bodies, 2, lambda c, b: json.loads(_post(c, "/upload", *b)[1])
        )
        names = [answer["filename"] for answer in uploaded["answers"]]
        warm = [_multipart(data) for data in images[-4:]]
        _drive(bonexr_port, warm, 2, _upload_predict)
        _drive(peer_port, warm, 2, _peer_predict)
        _raw_engine(bundle, shared[:8])
        bonexr_answers: dict[int, dict] = {}
        peer_answers: dict[int, dict] = {}
        ports = {"bonexr": bonexr_port, "peer": peer_port}
        for round_index in range(rounds):
            shift = round_index % len(MODES)
            order = MODES[shift:] + MODES[:shift]
            print(f"round {round_index + 1}/{rounds}: {', '.join(order)}, then the raw engine")
            offset = 0
            for level in clients:
                span = range(offset, offset + counts[level])
                offset += counts[level]
                for mode in order:
                    run = _run_mode(mode, ports, level, span, fresh, names, bodies)
                    if mode == "bonexr predict-only":
                        bonexr_answers.update(zip(span, run["answers"], strict=True))
                    elif mode == "LitServe":
                        peer_answers.update(zip(span, run["answers"], strict=True))
                    rates[mode][level].append(run["images_per_s"])
                rates["raw engine"][level].append(
                    _raw_engine(bundle, shared[span.start : span.stop])
                )
    finally:
        bonexr.terminate()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(peer.pid, signal.SIGTERM)
        for process in (bonexr, peer):
            process.wait(30)

    result = _compare_answers(bonexr_answers, peer_answers)
    result.update(
        rounds=rounds,
        images_per_round={str(level): counts[level] for level in clients},
        images_per_s={
            mode: {str(level): _summary(values) for level, values in by_level.items()}
            for mode, by_level in rates.items()
        },
        ratios=_ratios(rates, clients),
    )
    return result


def _compare_answers(bonexr: dict[int, dict], peer: dict[int, dict]) -> dict[str, Any]:
    """How far the peer's answers are from bonexr's for the same images."""
    largest_diff = max(
        abs(bonexr[i]["abnormality_probability"] - peer[i]["abnormality_probability"])
        for i in bonexr
    )
    return {
        "runtime": next(iter(peer.values()))["runtime"],
        "answers_compared": len(bonexr),
        "max_abs_probability_diff_vs_peer": largest_diff,
        "body_parts_differing_from_peer": sum(
            bonexr[i]["bone_type"] != peer[i]["bone_type"] for i in bonexr
        ),
    }


def _run_mode(
    mode: str,
    ports: dict[str, int],
    level: int,
    span: range,
    fresh: Any,
    names: list[str],
    bodies: list[Body],
) -> dict[str, Any]:
    """One mode at one client count over the images of ``span`` (fresh ones where the
    mode stores images, so no upload is a duplicate)."""
    if mode == "bonexr one request":
        items = [_multipart(next(fresh)) for _ in span]
        return _drive(ports["bonexr"], items, level, _one_request)
    if mode == "bonexr upload+predict":
        items = [_multipart(next(fresh)) for _ in span]
        return _drive(ports["bonexr"], items, level, _upload_predict)
    if mode == "bonexr predict-only":
        return _drive(ports["bonexr"], [names[i] for i in span], level, _predict)
    return _drive(ports["peer"], [bodies[i] for i in span], level, _peer_predict)


def _ratios(rates: dict[str, dict[int, list[float]]], clients: tuple[int, ...]) -> dict:
    """Per round ratios (same round, same conditions), then their median and range."""

    def ratio(a: str, b: str, level: int) -> dict[str, float]:
        pairs = zip(rates[a][level], rates[b][level], strict=True)
        return _summary([x / y for x, y in pairs])

    out = {}
    for level in clients:
        out[f"one request / LitServe, {level} clients"] = ratio(
            "bonexr one request", "LitServe", level
        )
        out[f"upload+predict / LitServe, {level} clients"] = ratio(
            "bonexr upload+predict", "LitServe", level
        )
        out[f"predict-only / LitServe, {level} clients"] = ratio(
            "bonexr predict-only", "LitServe", level
        )
        out[f"predict-only / raw engine, {level} clients"] = ratio(
            "bonexr predict-only", "raw engine", level
        )
    return out


TARGETS = {
    "one request / LitServe, 8 clients": 1.0,
    "one request / LitServe, 1 clients": 1.0,
    "upload+predict / LitServe, 8 clients": 0.85,
    "upload+predict / LitServe, 1 clients": 0.85,
    "predict-only / raw engine, 8 clients": 0.9,
}


def print_peer(result: dict[str, Any]) -> None:
    print(
        f"\nbonexr vs LitServe (same bundle and runtime: {result['runtime']}; "
        f"{result['rounds']} rotated rounds; median images/s [range])"
    )
    levels = list(next(iter(result["images_per_s"].values())))
    print(f"{'':24}" + "".join(f"{level + ' clients':>24}" for level in levels))
    for mode, by_level in result["images_per_s"].items():
        cells = "".join(
            "{:>24}".format(f"{s['median']:.1f} [{s['low']:.1f}-{s['high']:.1f}]")
            for s in by_level.values()
        )
        print(f"{mode:24}{cells}")
    print("\nratios (per round, then median [range])")
    for name, s in result["ratios"].items():
        target = TARGETS.get(name)
        verdict = "" if target is None else ("  met" if s["median"] >= target else "  NOT met")
        goal = f" (target >= {target})" if target else ""
        print(f"  {name}: {s['median']:.2f} [{s['low']:.2f}-{s['high']:.2f}]{goal}{verdict}")
    print(
        f"\nanswers: {result['answers_compared']} images scored by both; largest probability "
        f"difference {result['max_abs_probability_diff_vs_peer']:.2e}, body part differs on "
        f"{result['body_parts_differing_from_peer']}"
    )


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_bundle_options(parser)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--per-client", type=int, default=6, help="images per client per round")
    parser.add_argument("--out", type=Path, default=Path("bench/results/peer.json"))
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bonexr-peer-"))
    try:
        bundle = bundle_for(args, work)
        result = measure(bundle, work, rounds=args.rounds, per_client=args.per_client)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print_peer(result)
    write_result(args.out, result)
    return result


if __name__ == "__main__":
    main()
