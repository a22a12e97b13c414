"""Small service pieces on their own: content negotiation, provider choice, the pixel cache,
and the API's surface (paths, tags, HEAD on the probes)."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.adapters.engine import choose_providers
from service.adapters.pixel_cache import PixelCache
from service.doors.http.routes.model import prefers_json

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        ("", False),
        ("*/*", False),
        ("image/png", False),
        ("application/json", True),
        ("Application/JSON", True),
        ("image/png, application/json", False),  # tie: the PNG default wins
        ("image/png;q=0.5, application/json", True),
        ("application/json;q=0.4, image/*;q=0.5", False),
        ("application/json;q=0.9, image/png;q=0.8", True),
        ("application/json;q=0", False),
        ("application/json;q=oops", False),  # unreadable quality counts as 0
        ("text/html, application/json;q=0.9", True),
    ],
)
def test_prefers_json(accept: str, expected: bool) -> None:
    assert prefers_json(accept) is expected


@pytest.mark.parametrize(
    ("device", "available", "expected"),
    [
        ("auto", [CUDA, CPU], [CUDA, CPU]),
        ("gpu", [CUDA, CPU], [CUDA, CPU]),
        ("cpu", [CUDA, CPU], [CPU]),
        ("auto", [CPU], [CPU]),
        ("gpu", [CPU], [CPU]),  # falls back, with a warning
        ("auto", ["TensorrtExecutionProvider", CUDA, CPU], [CUDA, CPU]),
    ],
)
def test_choose_providers(device: str, available: list[str], expected: list[str]) -> None:
    assert choose_providers(device, available) == expected


def test_choose_providers_warns_when_gpu_is_asked_for_but_absent(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level("WARNING", logger="bonexr.engine"):
        choose_providers("gpu", [CPU])
    assert "no CUDA provider" in caplog.text


def pixels(value: int, size: int = 4) -> np.ndarray:
    return np.full((size, size), value, np.uint8)


def test_pixel_cache_hit_miss_and_sizes_are_separate() -> None:
    cache = PixelCache(max_entries=4)
    assert cache.get("a.png", 4) is None
    cache.put("a.png", 4, pixels(1))
    cache.put("a.png", 8, pixels(2, 8))
    got = cache.get("a.png", 4)
    assert got is not None and got.shape == (4, 4) and int(got[0, 0]) == 1
    assert int(cache.get("a.png", 8)[0, 0]) == 2  # type: ignore[index]
    assert cache.get("b.png", 4) is None


def test_pixel_cache_copies_and_freezes_what_it_stores() -> None:
    cache = PixelCache()
    original = pixels(5)
    cache.put("a.png", 4, original)
    original[:] = 9  # the caller's array changes later
    stored = cache.get("a.png", 4)
    assert stored is not None and int(stored[0, 0]) == 5
    with pytest.raises(ValueError):
        stored[0, 0] = 0  # read-only: a route cannot corrupt the cache


def test_pixel_cache_evicts_least_recently_used() -> None:
    cache = PixelCache(max_entries=2)
    cache.put("a.png", 4, pixels(1))
    cache.put("b.png", 4, pixels(2))
    cache.get("a.png", 4)  # a is now the most recent
    cache.put("c.png", 4, pixels(3))
    assert len(cache) == 2
    assert cache.get("b.png", 4) is None
    assert cache.get("a.png", 4) is not None and cache.get("c.png", 4) is not None


def test_pixel_cache_discard_drops_every_size_of_a_file() -> None:
    cache = PixelCache()
    cache.put("a.png", 4, pixels(1))
    cache.put("a.png", 8, pixels(1, 8))
    cache.put("b.png", 4, pixels(2))
    cache.discard("a.png")
    assert cache.get("a.png", 4) is None and cache.get("a.png", 8) is None
    assert len(cache) == 1


def test_pixel_cache_disabled_stores_nothing() -> None:
    cache = PixelCache(max_entries=0)
    cache.put("a.png", 4, pixels(1))
    assert len(cache) == 0 and cache.get("a.png", 4) is None


def test_pixel_cache_stays_bounded_under_concurrent_writers() -> None:
    cache = PixelCache(max_entries=16)

    def writer(worker: int) -> None:
        for i in range(200):
            cache.put(f"{worker}-{i}.png", 4, pixels(i % 256))
            cache.get(f"{worker}-{i // 2}.png", 4)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(cache) == 16


EXPECTED_OPERATIONS = {
    ("/upload", "post", "upload"),
    ("/uploads/{filename}", "delete", "upload"),
    ("/predict", "post", "predict"),
    ("/predict/image", "post", "predict"),
    ("/predict/study", "post", "predict"),
    ("/heatmap/{filename}", "get", "predict"),
    ("/model", "get", "model"),
    ("/model/card", "get", "model"),
    ("/rules", "get", "model"),
    ("/health", "get", "operations"),
    ("/ready", "get", "operations"),
    ("/metrics", "get", "operations"),
    ("/dicom-web/studies", "post", "dicom"),
    ("/dicom-web/studies/{study_uid}", "post", "dicom"),
    ("/worklist", "get", "worklist"),
    ("/worklist/export.csv", "get", "worklist"),
    ("/worklist/{study_id}", "get", "worklist"),
    ("/worklist/{study_id}", "delete", "worklist"),
    ("/worklist/{study_id}/review", "post", "worklist"),
    ("/audit", "get", "worklist"),
    ("/worklist/changes", "get", "worklist"),
    ("/whoami", "get", "worklist"),
    ("/model/reload", "post", "model"),
    ("/shadow", "get", "model"),
    ("/monitoring", "get", "model"),
    ("/samples", "get", "samples"),
    ("/samples/{name}", "get", "samples"),
}


def test_openapi_lists_every_route_once_with_its_tag(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    found = {
        (path, method, tag)
        for path, operations in spec["paths"].items()
        for method, operation in operations.items()
        for tag in operation["tags"]
    }
    assert found == EXPECTED_OPERATIONS


@pytest.mark.parametrize("path", ["/health", "/ready"])
def test_probes_answer_head(client: TestClient, path: str) -> None:
    response = client.head(path)
    assert response.status_code == 200
    assert response.content == b""


def test_head_on_ready_says_503_while_not_ready(untrained_bundle: Path, tmp_path: Path) -> None:
    from harness.service_support import make_settings, running

    settings = make_settings(untrained_bundle, tmp_path, bundle="missing")
    with running(settings) as (client, _app):
        assert client.head("/ready").status_code == 503
        assert client.head("/health").status_code == 200
