"""The predictor: one answer path for the API and ``bonexr predict`` (warnings included),
and every request's work bounded: the queue is checked before any decoding, one deadline
covers decode + queue + inference, heat maps are drawn at bounded cost, and a request the
server cancels at shutdown gets a JSON 503."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import threading
import time
import tracemalloc
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from bonexr.cli import main
from bonexr.heatmap import overlay, render_overlay, to_image_grid
from harness.service_support import make_settings, png_bytes, running
from service.adapters.pixel_cache import PixelCache
from service.doors.http.errors import LastResortMiddleware
from service.triage.heatmaps import render
from tests.dicom_support import dicom_file


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def radiograph(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(10, 240, (70, 90), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, "L").save(buffer, format="PNG")
    return buffer.getvalue()


def test_cli_rows_carry_exactly_the_api_answers_warnings_included(
    untrained_bundle: Path, tmp_path: Path
) -> None:
    """Images and studies, a DICOM whose BodyPartExamined disagrees with the router, and
    a study of mixed views: each row is the API's answer for the same files, with the same
    warnings (names aside: the API names uploads, the CLI names files)."""
    tree = tmp_path / "studies"
    files: dict[str, bytes] = {}
    for study in range(3):
        for view in range(2):
            files[f"study{study}/view{view}.png"] = radiograph(10 * study + view)
    codes = np.random.default_rng(7).integers(0, 4000, (64, 80)).astype(np.uint16)
    # a part the bundle's router knows (a FOREARM header is refused: it never learned one)
    files["study3/view0.dcm"] = dicom_file(codes, bits_stored=12, BodyPartExamined="ELBOW")
    files["study3/view1.png"] = radiograph(99)
    for name, data in files.items():
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        (tree / name).write_bytes(data)
    out = tmp_path / "out"
    models = str(untrained_bundle.parent)
    assert main(["predict", str(tree), "--out", str(out), "--study-by", "parent",
                 "--models-dir", models, "--quiet"]) == 0  # fmt: skip
    rows = {Path(r["path"]).relative_to(tree).as_posix(): r for r in read_csv(out / "images.csv")}
    study_rows = {Path(r["study"]).name: r for r in read_csv(out / "studies.csv")}
    assert set(rows) == set(files)
    dicom_row = rows["study3/view0.dcm"]
    disagrees = dicom_row["bone_type"] != "Elbow"
    assert ("BodyPartExamined ELBOW" in dicom_row["warnings"]) == disagrees
    compared = {"images": 0, "studies": 0}

    with running(make_settings(untrained_bundle, tmp_path)) as (client, _):
        uploaded: dict[str, str] = {}
        for name, data in files.items():
            stored = client.post("/upload", files={"file": (Path(name).name, data)}).json()
            uploaded[name] = stored["filename"]
        for name, row in rows.items():
            answer = client.post("/predict", json={"filename": uploaded[name]})
            cli_path = str(tree / name)
            if answer.status_code == 422:  # a part without a model: the refusal, as a row
                assert row["result"] == "" and row["warnings"] == answer.json()["detail"]
                continue
            body = answer.json()
            expected = [w.replace(uploaded[name], cli_path) for w in body["warnings"]]
            assert row["warnings"] == "; ".join(expected), name
            assert row["result"] == body["result"] and row["bone_type"] == body["bone_type"]
            assert float(row["abnormality_probability"]) == pytest.approx(
                body["abnormality_probability"], abs=1e-4
            )
            compared["images"] += bool(body["warnings"])
        for study, row in study_rows.items():
            names = sorted(n for n in files if n.startswith(f"{study}/"))
            answer = client.post("/predict/study", json={"filenames": [uploaded[n] for n in names]})
            if answer.status_code == 422:
                assert row["result"] == "" and row["warnings"] == answer.json()["detail"].replace(
                    *_rename(names, uploaded)
                )
                continue
            body = answer.json()
            warnings = body["warnings"]
            for name in names:
                warnings = [w.replace(uploaded[name], Path(name).name) for w in warnings]
            assert row["warnings"] == "; ".join(warnings), study
            assert row["result"] == body["result"] and row["bone_type"] == body["bone_type"]
            assert float(row["abnormality_probability"]) == pytest.approx(
                body["abnormality_probability"], abs=1e-4
            )
            compared["studies"] += bool(body["warnings"])
    # answers with warnings were compared, at both levels (not only refusals)
    assert compared["images"] >= 4 and compared["studies"] >= 2, compared


def _rename(names: list[str], uploaded: dict[str, str]) -> tuple[str, str]:
    """(upload name, file name) of the first view: refusals name at most the views."""
    return uploaded[names[0]], Path(names[0]).name


def _counting_decodes(services: object) -> list[int]:
    """Make the app decode through a counter (and keep no prepared pixels, so every
    predict must decode): returns the list that grows by one per decode."""
    calls: list[int] = []
    real = services.decode  # type: ignore[attr-defined]

    def counted(data: bytes) -> object:
        calls.append(1)
        return real(data)

    services.decode = counted  # type: ignore[attr-defined]
    services.pixels = PixelCache(max_entries=0)  # type: ignore[attr-defined]
    return calls


def test_a_full_queue_is_refused_before_any_decoding(
    untrained_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = make_settings(
        untrained_bundle, tmp_path, max_queue=2, max_batch_size=1, max_batch_wait_ms=0
    )
    with running(settings) as (client, app):
        services = app.state.services
        names = [
            client.post("/upload", files={"file": ("x.png", png_bytes(seed=s))}).json()["filename"]
            for s in range(10)
        ]
        decodes = _counting_decodes(services)
        gate = threading.Event()  # no batch finishes until every response is in
        real = services.engine.batcher.run_batch

        def held(*args: object) -> object:
            gate.wait(60)
            return real(*args)

        monkeypatch.setattr(services.engine.batcher, "run_batch", held)

        async def burst() -> list[httpx.Response]:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:

                async def one(name: str) -> httpx.Response:
                    response = await http.post("/predict", json={"filename": name})
                    if response.status_code == 429:
                        refused.append(name)
                        if len(refused) == len(names) - 2:
                            gate.set()  # every refusal arrived while no batch could finish
                    return response

                refused: list[str] = []
                return await asyncio.gather(*(one(n) for n in names))

        responses = asyncio.run(burst())
        gate.set()
        statuses = [r.status_code for r in responses]
        assert sorted(statuses) == [200, 200] + [429] * 8, statuses
        assert len(decodes) == 2  # only the two admitted requests decoded anything
        for response in responses:
            if response.status_code == 429:
                assert int(response.headers["retry-after"]) >= 1
                assert "at capacity" in response.json()["detail"]


def test_the_deadline_covers_decoding_and_is_a_json_503(
    untrained_bundle: Path, tmp_path: Path
) -> None:
    settings = make_settings(untrained_bundle, tmp_path, predict_timeout_s=0.5)
    with running(settings) as (client, app):
        services = app.state.services
        name = client.post("/upload", files={"file": ("x.png", png_bytes())}).json()["filename"]
        decodes = _counting_decodes(services)
        real = services.decode
        release = threading.Event()

        def stuck(data: bytes) -> object:
            release.wait(30)  # a decode that outlives the deadline
            return real(data)

        services.decode = stuck
        try:
            response = client.post("/predict", json={"filename": name})
            study = client.post("/predict/study", json={"filenames": [name]})
        finally:
            release.set()
        for answer in (response, study):
            assert answer.status_code == 503, answer.text
            assert answer.headers["content-type"].startswith("application/json")
            assert "did not finish within 0.5 s" in answer.json()["detail"]
        assert decodes == []  # the counter was replaced: the stuck decoder ran instead
        services.decode = real
        assert client.post("/predict", json={"filename": name}).status_code == 200


def test_heatmap_drawing_does_no_full_size_float_work_and_keeps_the_aspect() -> None:
    """A 4000x3000 upload: the old drawing made float32 and float64 maps of the whole image
    (~140 MB of numpy arrays); the bounded one works at 1024 px in floats and in 8-bit
    planes (Pillow's), on the image reduced by a whole factor to at most 2,048 px a side
    (here 2000x1500). Measured with tracemalloc (numpy's allocations)."""
    width, height = 4000, 3000
    stored = Image.new("L", (width, height), 90)
    buffer = io.BytesIO()
    stored.save(buffer, format="PNG")
    cam = np.random.default_rng(0).random((6, 6))
    tracemalloc.start()
    try:
        body = render(buffer.getvalue(), cam, 64, opacity=0.5, raw=False)
        _, bounded_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        overlay(stored, to_image_grid(cam, width, height, 64), 0.5)
        _, full_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    with Image.open(io.BytesIO(body)) as picture:
        assert picture.size == (width // 2, height // 2)
    with Image.open(io.BytesIO(render(buffer.getvalue(), cam, 64, opacity=0.5, raw=True))) as raw:
        assert raw.size == (width // 2, height // 2)
    assert full_peak > 100e6  # the float maps of the whole image
    assert bounded_peak < 20e6, bounded_peak


def test_bounded_overlay_matches_the_full_resolution_one() -> None:
    rng = np.random.default_rng(3)
    image = Image.fromarray(rng.integers(0, 255, (300, 500), dtype=np.uint8), "L")
    cam = rng.random((6, 6))
    bounded = np.asarray(render_overlay(image, cam, 64, 0.7)).astype(int)
    full = np.asarray(overlay(image, to_image_grid(cam, 500, 300, 64), 0.7)).astype(int)
    assert np.abs(bounded - full).max() <= 1  # one 8-bit rounding step at most


def test_a_request_cancelled_at_shutdown_gets_a_json_503() -> None:
    """What uvicorn does past its SIGTERM grace window: cancel the request's task."""

    async def cancelled_app(scope: object, receive: object, send: object) -> None:
        raise asyncio.CancelledError

    sent: list[dict[str, object]] = []

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": b""}

    scope = {"type": "http", "method": "POST", "path": "/heatmap/x", "headers": []}
    asyncio.run(LastResortMiddleware(cancelled_app)(scope, receive, send))  # type: ignore[arg-type]
    assert sent[0]["status"] == 503
    body = json.loads(b"".join(m.get("body", b"") for m in sent[1:]))  # type: ignore[misc]
    assert "shutting down" in body["detail"]


def test_a_late_decode_never_becomes_a_late_answer(untrained_bundle: Path, tmp_path: Path) -> None:
    """The 503 is final: the decode that finished after the deadline is not sent anyway
    (one response per request), and the service keeps serving."""
    settings = make_settings(untrained_bundle, tmp_path, predict_timeout_s=0.3)
    with running(settings) as (client, app):
        services = app.state.services
        name = client.post("/upload", files={"file": ("x.png", png_bytes(seed=5))}).json()[
            "filename"
        ]
        services.pixels = PixelCache(max_entries=0)
        real = services.decode
        finished = threading.Event()

        def slow(data: bytes) -> object:
            time.sleep(0.6)  # past the deadline (a fake slow decoder, not a bound)
            result = real(data)
            finished.set()
            return result

        services.decode = slow
        response = client.post("/predict", json={"filename": name})
        assert response.status_code == 503
        assert finished.wait(30)  # the abandoned decode did finish, in its slot
        services.decode = real
        assert client.post("/predict", json={"filename": name}).status_code == 200
