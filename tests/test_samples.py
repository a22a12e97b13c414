"""Sample radiographs to try (issue 38): ``BONEXR_SAMPLES_DIR`` lists images with their
attribution; the page offers them as buttons that go through the same upload and study."""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import pytest

from harness.service_support import make_settings, running, server_process


def _samples(synthetic_small: Path, folder: Path) -> Path:
    folder.mkdir()
    for index, view in enumerate(sorted(synthetic_small.rglob("*.png"))[:30]):
        shutil.copy(view, folder / f"sample{index:02d}.png")
    (folder / "notes.txt").write_text("not an image")
    (folder / "ATTRIBUTION").write_text("Synthetic drawings\n\nMade by the test, CC0.\n")
    return folder


def test_samples_are_listed_with_their_attribution_and_nothing_else_is_served(
    untrained_bundle: Path, synthetic_small: Path, tmp_path: Path
) -> None:
    folder = _samples(synthetic_small, tmp_path / "samples")
    with running(make_settings(untrained_bundle, tmp_path, samples_dir=folder)) as (client, _):
        listed = client.get("/samples").json()
        first = client.get(listed["samples"][0]["url"])
        outside = client.get("/samples/..%2F..%2Fetc%2Fpasswd")
        not_listed = client.get("/samples/notes.txt")
    assert len(listed["samples"]) == 24 and listed["samples"][0]["name"] == "sample00.png"
    assert listed["attribution"] == "Synthetic drawings Made by the test, CC0."
    assert first.status_code == 200 and first.content == (folder / "sample00.png").read_bytes()
    assert outside.status_code == 404 and not_listed.status_code == 404
    with running(make_settings(untrained_bundle, tmp_path / "none")) as (client, _):
        assert client.get("/samples").json() == {"samples": [], "attribution": None}


@pytest.mark.slow
def test_the_page_offers_the_samples_and_answers_one(
    browser: object, untrained_bundle: Path, synthetic_small: Path, tmp_path: Path
) -> None:
    folder = _samples(synthetic_small, tmp_path / "samples")
    env = {"BONEXR_SAMPLES_DIR": str(folder)}
    with server_process(untrained_bundle.parent, tmp_path / "uploads", **env) as (url, _):
        page = browser.new_page()  # type: ignore[attr-defined]
        page.goto(url + "/")
        page.wait_for_selector("#samples-list button")
        assert "CC0" in page.inner_text("#samples-attribution")
        page.get_by_role("button", name="sample03.png").click()
        page.wait_for_selector("#study-body .verdict")
        assert page.locator(".view h3").all_inner_texts() == ["sample03.png"]
        assert httpx.get(f"{url}/worklist").json()["counts"]["all"] == 1
        page.close()
