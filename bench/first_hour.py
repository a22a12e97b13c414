"""A new user's first hour, reproduced: clone, ``make run``, upload a real radiograph, review
it on the worklist. Measures the time from ``make run`` to ready (the README's figure).

1. ``git clone`` this repository's HEAD into a temporary folder (no ``.venv``: what a new
   user has; the shipped bundle ``models/fracatlas`` comes with the clone).
2. ``make run PORT=<free port>``, timed until ``GET /ready`` answers 200; its output is kept
   and checked: the stage lines are there, no traceback, the line naming what to upload.
3. A real radiograph (a FracAtlas hand or leg image from ``--fracatlas``, or ``--image``) is
   uploaded and answered as the page does it (``/upload`` then ``/predict/study`` with its
   file name), then found in ``GET /worklist`` and reviewed there.

    python -m bench.first_hour                      # pip's cache as it is on this machine
    python -m bench.first_hour --cold               # PIP_NO_CACHE_DIR=1: every wheel downloaded

Writes ``bench/results/first_hour.json``. Time is the point here (it is a benchmark, never
a test): run it on a quiet machine and say which cache state it had.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench.common import write_result

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def real_radiograph(fracatlas: Path) -> Path:
    """The first readable FracAtlas hand image (the shipped bundle judges hands and legs)."""
    with (fracatlas / "dataset.csv").open() as handle:
        for row in csv.DictReader(handle):
            if row.get("hand") == "1" and row.get("fractured") == "1":
                path = fracatlas / "images" / row["image_id"]
                if path.is_file():
                    return path
    raise SystemExit(f"no hand radiograph found in {fracatlas}")


def wait_ready(url: str, process: subprocess.Popen[bytes], limit_s: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < limit_s:
        if process.poll() is not None:
            raise SystemExit(f"make run exited with {process.returncode} before it was ready")
        try:
            if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                return time.monotonic() - started
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"not ready after {limit_s:.0f} s")


def first_study(url: str, image: Path) -> dict:
    """Upload, answer and review one real radiograph as the page would."""
    with image.open("rb") as handle:
        stored = httpx.post(f"{url}/upload", files={"file": (image.name, handle)}, timeout=60)
    stored.raise_for_status()
    name = stored.json()["filename"]
    study = httpx.post(
        f"{url}/predict/study",
        json={"filenames": [name], "view_names": [image.name]},
        timeout=60,
    )
    answer = study.json()
    if study.status_code != 200:
        return {"answered": False, "status": study.status_code, "detail": answer.get("detail")}
    listed = httpx.get(f"{url}/worklist", timeout=30).json()["items"]
    assert any(i["id"] == answer["record_id"] for i in listed), "not on the worklist"
    review = httpx.post(
        f"{url}/worklist/{answer['record_id']}/review",
        json={"reader_result": answer["result"], "note": "first-hour walkthrough"},
        timeout=30,
    ).json()
    return {
        "answered": True,
        "image": image.name,
        "body_part": answer["body_part"],
        "result": answer["result"],
        "abnormality_probability": round(answer["abnormality_probability"], 3),
        "on_worklist": True,
        "reviewed": review["status"] == "reviewed",
        "view_name_kept": review["views"][0]["name"] == image.name,
    }


def check_output(log: str) -> dict:
    return {
        "stage_lines": len(re.findall(r"^make run: \[\d/2\]", log, re.M)),
        "tracebacks": log.count("Traceback"),
        "names_what_to_upload": "radiograph (PNG, JPEG, WebP or DICOM)" in log,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--fracatlas", type=Path, default=REPO.parent / "shared/datasets/fracatlas")
    parser.add_argument("--image", type=Path, help="a radiograph to try (default: FracAtlas)")
    parser.add_argument("--cold", action="store_true", help="no pip cache (PIP_NO_CACHE_DIR=1)")
    parser.add_argument("--limit-s", type=float, default=1800)
    parser.add_argument("--out", type=Path, default=REPO / "bench/results/first_hour.json")
    args = parser.parse_args()
    image = args.image or real_radiograph(args.fracatlas)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    with tempfile.TemporaryDirectory() as folder:
        clone = Path(folder) / "bonexr"
        subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True)
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("BONEXR_", "VIRTUAL_ENV"))}
        if args.cold:
            env["PIP_NO_CACHE_DIR"] = "1"
        log_path = Path(folder) / "make-run.log"
        with log_path.open("wb") as log:
            started = time.monotonic()
            process = subprocess.Popen(
                ["make", "run", f"PORT={port}"],
                cwd=clone,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            try:
                ready_s = wait_ready(f"http://127.0.0.1:{port}", process, args.limit_s)
                print(f"make run: ready after {ready_s:.0f} s", flush=True)
                study = first_study(f"http://127.0.0.1:{port}", image)
                first_answer_s = time.monotonic() - started
            finally:
                os.killpg(process.pid, signal.SIGTERM)
                process.wait(60)
        output = check_output(log_path.read_text(errors="replace"))
    result = {
        "commit": commit,
        "pip_cache": "none (PIP_NO_CACHE_DIR=1)" if args.cold else "as on this machine",
        "seconds_to_ready": round(ready_s, 1),
        "seconds_to_first_reviewed_study": round(first_answer_s, 1),
        "first_study": study,
        "make_run_output": output,
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
    }
    print(json.dumps(result, indent=2))
    write_result(args.out, result)
    ok = study["answered"] and output["tracebacks"] == 0 and output["names_what_to_upload"]
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
