"""Record every answer a bundle gives through the HTTP API and ``bonexr predict``, and
compare two such records field by field.

Why: a refactor of the doors must not change an answer. ``snapshot`` drives a set of
images through a real ``bonexr serve`` (``/upload`` then ``/predict`` per image,
``/predict/study`` per folder) and through ``bonexr predict`` (``images.csv``,
``studies.csv``), and writes one JSON; ``compare`` lists every field that differs between
two of them (``record_id`` and other per-run values left out).

    python bench/answer_parity.py snapshot --bundle models/demo --data DIR --out before.json
    python bench/answer_parity.py compare before.json after.json
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

#: Per-run values that differ between two runs of the same code.
VOLATILE = {"record_id", "heatmap_url", "filename", "created_at", "request_id"}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".dcm"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _images(data: Path, limit: int) -> list[Path]:
    """Up to ``limit`` images spread evenly over the sorted tree (every part and folder)."""
    found = sorted(p for p in data.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    step = max(1, -(-len(found) // limit))
    return found[::step]


def _strip(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def _http_answers(bundle: Path, images: list[Path], data: Path) -> dict[str, Any]:
    port = _free_port()
    with tempfile.TemporaryDirectory() as tmp:
        env = {
            **os.environ,
            "BONEXR_MODELS_DIR": str(bundle.parent),
            "BONEXR_BUNDLE": bundle.name,
            "BONEXR_UPLOAD_DIR": str(Path(tmp) / "uploads"),
            "BONEXR_DATABASE_URL": f"sqlite:///{Path(tmp) / 'records.db'}",
        }
        server = subprocess.Popen(
            [sys.executable, "-m", "bonexr.cli", "serve", "--port", str(port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            return _drive(f"http://127.0.0.1:{port}", images, data)
        finally:
            server.terminate()
            server.wait(timeout=60)


def _drive(base: str, images: list[Path], data: Path) -> dict[str, Any]:
    with httpx.Client(base_url=base, timeout=120) as client:
        for _ in range(600):
            try:
                if client.get("/ready").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        uploaded: dict[str, str] = {}
        answers: dict[str, Any] = {"images": {}, "studies": {}}
        for path in images:
            key = path.relative_to(data).as_posix()
            with path.open("rb") as handle:
                response = client.post("/upload", files={"file": (path.name, handle)})
            if response.status_code != 201 and response.status_code != 200:
                answers["images"][key] = {"status": response.status_code, **response.json()}
                continue
            uploaded[key] = response.json()["filename"]
            answer = client.post("/predict", json={"filename": uploaded[key]})
            answers["images"][key] = {"status": answer.status_code, **_strip(answer.json())}
        studies: dict[str, list[str]] = {}
        for key, name in uploaded.items():
            studies.setdefault(key.rpartition("/")[0], []).append(name)
        for study, names in sorted(studies.items()):
            answer = client.post("/predict/study", json={"filenames": names})
            answers["studies"][study] = {"status": answer.status_code, **_strip(answer.json())}
        return answers


def _cli_answers(bundle: Path, images: list[Path], data: Path) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        listing = Path(tmp) / "in"
        for path in images:  # the same files, in the same folders, as links
            target = listing / path.relative_to(data)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(path.resolve())
        out = Path(tmp) / "out"
        subprocess.run(
            [sys.executable, "-m", "bonexr.cli", "predict", str(listing), "--out", str(out),
             "--bundle", str(bundle), "--study-by", "parent", "--quiet"],
            check=True, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        answers: dict[str, Any] = {}
        for name in ("images.csv", "studies.csv", "errors.csv"):
            path = out / name
            rows = list(csv.DictReader(path.open())) if path.is_file() else []
            for row in rows:
                for column in ("path", "study"):
                    if column in row:
                        row[column] = (
                            Path(row[column])
                            .resolve()
                            .as_posix()
                            .replace(listing.resolve().as_posix() + "/", "")
                        )
            answers[name] = rows
        return answers


def snapshot(bundle: Path, data: Path, out: Path, limit: int) -> None:
    images = _images(data, limit)
    record = {
        "bundle": str(bundle),
        "images": len(images),
        "http": _http_answers(bundle, images, data),
        "cli": _cli_answers(bundle, images, data),
    }
    out.write_text(json.dumps(record, indent=1, sort_keys=True))
    print(f"wrote {out}: {len(images)} images")


def differences(before: Any, after: Any, where: str = "") -> list[str]:
    """Every path at which two records differ (a float compared exactly)."""
    if isinstance(before, dict) and isinstance(after, dict):
        found = []
        for key in sorted(set(before) | set(after)):
            if key not in before or key not in after:
                found.append(f"{where}/{key}: only in {'after' if key in after else 'before'}")
            else:
                found.extend(differences(before[key], after[key], f"{where}/{key}"))
        return found
    if isinstance(before, list) and isinstance(after, list):
        if len(before) != len(after):
            return [f"{where}: {len(before)} items before, {len(after)} after"]
        return [
            d
            for i, (b, a) in enumerate(zip(before, after, strict=True))
            for d in differences(b, a, f"{where}[{i}]")
        ]
    return [] if before == after else [f"{where}: {before!r} -> {after!r}"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("snapshot")
    p.add_argument("--bundle", type=Path, required=True)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--limit", type=int, default=120)
    p = sub.add_parser("compare")
    p.add_argument("before", type=Path)
    p.add_argument("after", type=Path)
    args = parser.parse_args()
    if args.command == "snapshot":
        snapshot(args.bundle, args.data, args.out, args.limit)
        return 0
    before = json.loads(args.before.read_text())
    after = json.loads(args.after.read_text())
    found = differences(before["http"], after["http"], "http") + differences(
        before["cli"], after["cli"], "cli"
    )
    for line in found:
        print(line)
    print(f"{len(found)} differing fields over {before['images']} images")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
