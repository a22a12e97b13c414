"""Memory a burst of large uploads costs the server, measured on a real server process.

Reproduces the decoding finding: small files that decode to hundreds of MB each, eight at
once, must keep peak RSS bounded and give the memory back. A benchmark-style test: it
asserts memory (RSS sampled every 10 ms by psutil), never time. Slow-marked: it starts a
server and pushes ~1 GB of decoded pixels through it.
"""

from __future__ import annotations

import concurrent.futures
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from harness.service_support import png_chunk, server_process
from tests.dicom_support import deflated_bomb

pytestmark = pytest.mark.slow

MB = 1024 * 1024


def striped_png(width: int, height: int, *, color_type: int, bit_depth: int) -> bytes:
    """A PNG of any size that compresses to a few hundred KB (vertical stripes)."""
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[color_type]
    row_bytes = width * channels * bit_depth // 8
    pattern = bytes((i * 37) % 256 for i in range(row_bytes))
    compressor = zlib.compressobj(1)
    row = b"\x00" + pattern
    chunks = [compressor.compress(row * 64) for _ in range(height // 64)]
    chunks.append(compressor.compress(row * (height % 64)))
    chunks.append(compressor.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", b"".join(chunks))
        + png_chunk(b"IEND", b"")
    )


class RssSampler:
    """Samples a process's RSS in a background thread; keeps the peak."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def rss(self) -> int:
        return int(self.process.memory_info().rss)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss())
            time.sleep(0.01)

    def __enter__(self) -> RssSampler:
        self.peak = self.rss()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@pytest.fixture(scope="module")
def server(untrained_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    uploads = tmp_path_factory.mktemp("mem-uploads")
    with server_process(untrained_bundle.parent, uploads) as (url, process):
        yield url
        assert process.poll() is None, "the server died during the memory test"


def _pid(url: str) -> int:
    port = int(url.rsplit(":", 1)[1])
    for conn in psutil.net_connections("tcp"):
        if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_LISTEN:
            return int(conn.pid)
    raise AssertionError("no process listens on the server's port")


def _upload(url: str, data: bytes) -> int:
    response = httpx.post(
        f"{url}/upload", files={"file": ("x.png", data, "image/png")}, timeout=120
    )
    return response.status_code


def _settle(sampler: RssSampler, target: int, seconds: float) -> int:
    deadline = time.monotonic() + seconds
    rss = sampler.rss()
    while rss > target and time.monotonic() < deadline:
        time.sleep(0.2)
        rss = sampler.rss()
    return rss


def test_over_budget_image_is_refused_from_its_header(server: str) -> None:
    # 7000x7000 16-bit RGBA: 392 MB decoded from a ~400 KB file.
    data = striped_png(7000, 7000, color_type=6, bit_depth=16)
    assert len(data) < 4 * MB
    with RssSampler(_pid(server)) as sampler:
        start = sampler.rss()
        response = httpx.post(
            f"{server}/upload", files={"file": ("x.png", data, "image/png")}, timeout=60
        )
    assert response.status_code == 413, response.text
    assert "decoded-memory budget" in response.json()["detail"]
    assert sampler.peak - start < 100 * MB


def test_deflated_dicom_bomb_is_refused_before_inflating(server: str) -> None:
    # 408 KB file declaring 50 frames of 2048x2048x16 bit (400 MB inflated)
    bomb = deflated_bomb(frames=50, rows=2048, cols=2048)
    assert len(bomb) < 450_000
    with RssSampler(_pid(server)) as sampler:
        start = sampler.rss()
        response = httpx.post(
            f"{server}/upload", files={"file": ("x.dcm", bomb, "application/dicom")}, timeout=60
        )
    assert response.status_code == 413, response.text
    assert "decoded-memory budget" in response.json()["detail"]
    print(f"DICOM bomb: +{(sampler.peak - start) / MB:.0f} MB peak")
    assert sampler.peak - start <= 300 * MB


def test_burst_of_large_uploads_is_bounded_and_returned(server: str) -> None:
    # Largest colour image under the default limits: 7000x7000 RGB (147 MB decoded).
    data = [striped_png(7000, 7000 - i, color_type=2, bit_depth=8) for i in range(8)]
    with RssSampler(_pid(server)) as sampler:
        start = sampler.rss()
        assert _upload(server, data[0]) in (200, 201)
        single_peak = sampler.peak - start
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            codes = list(pool.map(lambda d: _upload(server, d), [*data[1:], data[0]]))
        burst_peak = sampler.peak
        settled = _settle(sampler, start + 300 * MB, 10.0)
    assert all(code in (200, 201) for code in codes), codes
    print(
        f"start {start / MB:.0f} MB, single +{single_peak / MB:.0f} MB, "
        f"burst peak {burst_peak / MB:.0f} MB, after 10 s {settled / MB:.0f} MB"
    )
    assert single_peak <= 300 * MB
    assert burst_peak <= 2500 * MB
    assert settled <= start + 300 * MB


def test_four_concurrent_heat_maps_of_the_largest_upload_are_bounded(server: str) -> None:
    """The probe measured +1,292 MB for four concurrent GET /heatmap of a 7000x7000 upload
    (the largest the default limits allow); the bound is +600 MB."""
    data = striped_png(7000, 7000, color_type=0, bit_depth=8)
    uploaded = httpx.post(
        f"{server}/upload", files={"file": ("x.png", data, "image/png")}, timeout=120
    )
    assert uploaded.status_code in (200, 201), uploaded.text
    name = uploaded.json()["filename"]
    first = httpx.get(f"{server}/heatmap/{name}", timeout=120)
    assert first.status_code == 200, first.text  # the map is cached: what follows is drawing
    with RssSampler(_pid(server)) as sampler:
        start = sampler.rss()
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            answers = list(
                pool.map(lambda _: httpx.get(f"{server}/heatmap/{name}", timeout=120), range(4))
            )
    assert [a.status_code for a in answers] == [200] * 4
    print(f"four heat maps: +{(sampler.peak - start) / MB:.0f} MB peak")
    assert sampler.peak - start <= 600 * MB
