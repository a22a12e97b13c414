"""Concurrency: many uploads, predicts and deletes at once lose nothing and leave no debris."""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import threading
from pathlib import Path

import httpx

from bonexr.imaging import decode_image, encode_png
from harness.service_support import make_settings, png_bytes, running
from service.adapters.stores.base import TEMP_PREFIX
from service.adapters.stores.folder import FileUploadStore


def stored_name(data: bytes) -> str:
    return hashlib.sha256(encode_png(decode_image(data))).hexdigest() + ".png"


def test_200_concurrent_uploads_predicts_and_deletes(
    untrained_bundle: Path, tmp_path: Path
) -> None:
    """Kept images are uploaded several times each (duplicates race each other); the
    to-delete images each run upload -> predict -> delete; predicts of kept images race
    their uploads. All of it interleaved in one asyncio.gather."""
    settings = make_settings(untrained_bundle, tmp_path, max_batch_wait_ms=5, max_batch_size=8)
    kept = [png_bytes(40 + i, 30 + i, seed=1000 + i) for i in range(20)]
    doomed = [png_bytes(40 + i, 50 + i, seed=2000 + i) for i in range(30)]
    kept_names = {stored_name(d) for d in kept}
    doomed_names = {stored_name(d) for d in doomed}
    assert len(kept_names) == 20 and len(doomed_names) == 30

    with running(settings) as (client, app):

        async def scenario() -> list[tuple[str, int]]:
            transport = httpx.ASGITransport(app=app)
            limits = httpx.Limits(max_connections=None)
            async with httpx.AsyncClient(
                transport=transport, base_url="http://t", limits=limits, timeout=120
            ) as ac:

                async def up(data: bytes) -> tuple[str, int]:
                    r = await ac.post("/upload", files={"file": ("x.png", data, "image/png")})
                    assert r.status_code in (200, 201), r.text
                    return r.json()["filename"], r.status_code

                async def predict(name: str) -> int:
                    r = await ac.post("/predict", json={"filename": name})
                    assert r.status_code in (200, 404), r.text  # 404 if it races its upload
                    return r.status_code

                async def lifecycle(data: bytes) -> str:
                    name, _ = await up(data)
                    assert (await predict(name)) == 200
                    r = await ac.delete(f"/uploads/{name}")
                    assert r.status_code == 204, r.text
                    return name

                jobs = []
                for i in range(140):  # 140 uploads of 20 kept images: 7 copies each
                    jobs.append(up(kept[i % 20]))
                jobs += [lifecycle(d) for d in doomed]  # 30 more uploads -> 170
                jobs += [up(kept[i]) for i in range(20)]  # -> 190
                jobs += [predict(n) for n in sorted(kept_names)]
                jobs += [up(kept[i]) for i in range(10)]  # -> 200 uploads in total
                random.Random(0).shuffle(jobs)
                results = await asyncio.gather(*jobs)
            return [r for r in results if isinstance(r, tuple)]

        uploads = asyncio.run(scenario())
        assert len(uploads) == 170  # + 30 inside the lifecycles = 200 uploads

        # Each kept image was created exactly once: one upload got 201, its duplicates 200.
        for name in kept_names:
            codes = [code for n, code in uploads if n == name]
            assert codes.count(201) == 1 and len(codes) >= 7, (name, codes)
        upload_dir = settings.upload_dir
        # the folder also holds the records database (bonexr.db, its WAL and lock files)
        on_disk = {n for n in os.listdir(upload_dir) if not n.startswith("bonexr.db")}
        assert not [n for n in on_disk if n.startswith(TEMP_PREFIX)], on_disk
        assert on_disk == kept_names
        for name in kept_names:
            r = client.post("/predict", json={"filename": name})
            assert r.status_code == 200, r.text
        for name in doomed_names:
            assert client.post("/predict", json={"filename": name}).status_code == 404
        registry = app.state.services.metrics.registry
        assert registry.get_sample_value("bonexr_uploads_stored") == 20
        new = registry.get_sample_value("bonexr_uploads_total", {"outcome": "new"})
        dup = registry.get_sample_value("bonexr_uploads_total", {"outcome": "duplicate"})
        assert (new, dup) == (50, 150)


def test_store_same_bytes_from_many_threads(tmp_path: Path) -> None:
    """Racing saves of identical bytes: one creates, the others see a duplicate."""
    store = FileUploadStore(tmp_path / "store")
    payloads = [encode_png(decode_image(png_bytes(seed=s))) for s in range(4)]
    barrier = threading.Barrier(32)
    results = []
    lock = threading.Lock()

    def work(i: int) -> None:
        barrier.wait()
        stored = store.save(payloads[i % 4])
        with lock:
            results.append(stored)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(r.created for r in results) == 4
    assert sorted(os.listdir(store.directory)) == sorted({r.filename for r in results})
    for r in results:
        data = (store.directory / r.filename).read_bytes()
        assert hashlib.sha256(data).hexdigest() + ".png" == r.filename


def test_store_ignores_temp_files_and_sweeps(tmp_path: Path) -> None:
    store = FileUploadStore(tmp_path)
    saved = store.save(encode_png(decode_image(png_bytes(seed=5))))
    (tmp_path / f"{TEMP_PREFIX}abc.png").write_bytes(b"partial")
    (tmp_path / "notes.txt").write_text("not an upload")
    assert list(store.names()) == [saved.filename]
    assert store.count() == 1
    now = os.path.getmtime(tmp_path / saved.filename)
    assert store.sweep(3600, now=now + 60) == 0
    assert (tmp_path / f"{TEMP_PREFIX}abc.png").exists()  # young temp file: a save in flight
    assert store.sweep(3600, now=now + 7200) == 1
    assert not (tmp_path / f"{TEMP_PREFIX}abc.png").exists()  # stale temp file: crash debris
    assert store.count() == 0
    assert (tmp_path / "notes.txt").exists()
