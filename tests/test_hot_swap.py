"""Hot swap (issue 39): ``POST /model/reload`` loads a bundle beside the serving one,
verifies it and switches, on a real server under load from eight clients: no request
fails, every answer names one of the two versions, and after the swap only the new one;
a corrupt or missing candidate is refused with the reason while the old bundle serves."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from harness.bundles import make_untrained_bundle
from harness.service_support import png_bytes, server_process

pytestmark = pytest.mark.slow

CLIENTS = 8


@pytest.fixture(scope="module")
def models(untrained_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models folder with two bundles of different versions (seeds 0 and 1)."""
    folder = tmp_path_factory.mktemp("swap-models")
    shutil.copytree(untrained_bundle, folder / "first")
    make_untrained_bundle(folder / "second", input_size=64, seed=1)
    return folder


@pytest.fixture(scope="module")
def served(models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    uploads = tmp_path_factory.mktemp("swap-uploads")
    with server_process(models, uploads, BONEXR_BUNDLE="first", BONEXR_PREDICT_TIMEOUT_S="5") as (
        url,
        _,
    ):
        yield url


def _version(url: str) -> str:
    return str(httpx.get(f"{url}/model", timeout=30).json()["version"])


def _hammer(url: str, stop: threading.Event, answers: list[tuple[int, str, float]]) -> None:
    image = png_bytes(96, 80, seed=5)
    with httpx.Client(timeout=60) as client:
        while not stop.is_set():
            started = time.monotonic()  # when the request was sent: ordering, not a bound
            reply = client.post(f"{url}/predict/image", files={"file": ("x.png", image)})
            version = reply.json().get("model", {}).get("version", "") if reply.is_success else ""
            answers.append((reply.status_code, version, started))


def test_a_swap_under_load_drops_no_request(served: str, models: Path) -> None:
    first = _version(served)
    answers: list[tuple[int, str, float]] = []
    stop = threading.Event()
    clients = [
        threading.Thread(target=_hammer, args=(served, stop, answers)) for _ in range(CLIENTS)
    ]
    for client in clients:
        client.start()
    try:
        while len(answers) < 4 * CLIENTS:  # load before the swap
            stop.wait(0.05)
        swapped = httpx.post(f"{served}/model/reload", json={"bundle": "second"}, timeout=300)
        swap_returned = time.monotonic()
        after_swap = len(answers)
        while len(answers) < after_swap + 4 * CLIENTS:  # and after it
            stop.wait(0.05)
    finally:
        stop.set()
        for client in clients:
            client.join()
    assert swapped.status_code == 200, swapped.text
    second = _version(served)
    assert second != first and swapped.json()["current"].endswith(second)
    assert swapped.json()["previous"].endswith(first)
    statuses = [status for status, _, _ in answers]
    assert statuses.count(200) == len(answers), sorted(set(statuses))
    assert {version for _, version, _ in answers} <= {first, second}
    # every request sent after the reload answered is the new bundle's (the switch comes
    # before that answer); those sent earlier may be either
    late = [version for _, version, sent in answers if sent > swap_returned]
    assert late and set(late) == {second}
    ready = httpx.get(f"{served}/ready", timeout=30)
    assert ready.status_code == 200


def test_a_corrupt_or_missing_candidate_is_refused_and_the_old_one_serves(
    served: str, models: Path
) -> None:
    serving = _version(served)
    corrupt = models / "corrupt"
    shutil.copytree(models / "second", corrupt)
    model_file = next(corrupt.glob("*.onnx"))
    data = bytearray(model_file.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one byte: the manifest's hash no longer matches
    model_file.write_bytes(bytes(data))
    refused = httpx.post(f"{served}/model/reload", json={"bundle": "corrupt"}, timeout=300)
    assert refused.status_code == 422, refused.text
    assert refused.json()["code"] == "bundle_rejected"
    assert "the serving one goes on" in refused.json()["detail"]
    missing = httpx.post(f"{served}/model/reload", json={"bundle": "no-such"}, timeout=300)
    assert missing.status_code == 422 and missing.json()["code"] == "bundle_rejected"
    assert _version(served) == serving
    answer = httpx.post(
        f"{served}/predict/image", files={"file": ("x.png", png_bytes(seed=2))}, timeout=60
    )
    assert answer.status_code == 200 and answer.json()["model"]["version"] == serving
