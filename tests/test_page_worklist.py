"""The triage worklist on the web page, in a real browser (Debian's chromium, headless).

Two studies are analysed through the API while the page is open; the page's poll must show
them in the API's triage order. Bob (key-b, typed into the page's key form) opens the most
urgent one with the keyboard, sees its verdict and heat maps, and records "Reader:
abnormal"; the study view, the list's order and the unread/reviewed counts must follow
without a reload. Alice (key-a, the admin key) then reads the audit trail, where bob's
list, view, heat-map and review accesses appear under his key's name; bob himself gets the
API's refusal sentence. Finally "more" pages through the list one study at a time.

A screenshot of the worklist with the study view open is kept as
``build/test-artifacts/worklist.png`` (``docs/worklist.png`` is an optimised copy of it).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from harness.service_support import server_process

pytestmark = pytest.mark.slow

ARTIFACTS = Path(__file__).resolve().parent.parent / "build" / "test-artifacts"
ENV = {
    "BONEXR_API_KEYS": "alice:key-a,bob:key-b",
    "BONEXR_ADMIN_KEYS": "alice",
    "BONEXR_ELIGIBILITY": "warn",
}
ALICE = {"X-API-Key": "key-a"}
#: Errors the browser logs for answers the test provokes on purpose: the first calls before
#: a key is entered (401), bob's audit request (403).
EXPECTED_ERRORS = ("status of 401", "status of 403")
WAIT = 20_000  # ms: a poll is every 5 s


@pytest.fixture(scope="module")
def served(untrained_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    # its own folder: the records database is created beside the upload folder
    uploads = tmp_path_factory.mktemp("worklist-page") / "uploads"
    with server_process(untrained_bundle.parent, uploads, **ENV) as (url, _process):
        yield url


def elbow_studies(synthetic_small: Path, count: int) -> list[list[Path]]:
    studies = []
    for study in sorted(synthetic_small.glob("train/XR_ELBOW/*/*")):
        views = sorted(study.glob("*.png"))
        if len(views) >= 2:
            studies.append(views[:2])
        if len(studies) == count:
            return studies
    raise AssertionError(f"fewer than {count} synthetic elbow studies with two views")


def analyse(api: httpx.Client, views: list[Path]) -> dict[str, Any]:
    names = []
    for view in views:
        upload = api.post("/upload", files={"file": (view.name, view.read_bytes(), "image/png")})
        assert upload.status_code == 201, upload.text
        names.append(upload.json()["filename"])
    answer = api.post("/predict/study", json={"filenames": names})
    assert answer.status_code == 200, answer.text
    assert answer.json()["record_id"], answer.json()
    return answer.json()


def row_ids(page: Any) -> list[str]:
    return page.locator("#worklist-rows tr").evaluate_all("rows => rows.map(r => r.dataset.id)")


def api_ids(api: httpx.Client, status: str) -> list[str]:
    listed = api.get("/worklist", params={"status": status})
    assert listed.status_code == 200, listed.text
    return [item["id"] for item in listed.json()["items"]]


def expect_counts(page: Any, expect: Any, unread: int, reviewed: int, total: int) -> None:
    expect(page.locator("#count-unread")).to_have_text(str(unread), timeout=WAIT)
    expect(page.locator("#count-reviewed")).to_have_text(str(reviewed), timeout=WAIT)
    expect(page.locator("#count-all")).to_have_text(str(total), timeout=WAIT)


def test_worklist_review_and_audit_in_the_page(
    browser: Any, served: str, synthetic_small: Path
) -> None:
    from playwright.sync_api import expect

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    console_errors: list[str] = []
    page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: console_errors.append(f"page error: {e}"))

    page.goto(served + "/")
    page.evaluate("window.bonexrTestMarker = 'same page'")  # gone if the page reloads
    expect(page.locator("#key-section")).to_be_visible()
    page.fill("#api-key", "key-b")  # bob
    page.click("#key-form button")
    expect(page.locator("#model")).to_contain_text("version")
    expect(page.locator("#worklist-status")).to_have_text("No unread studies.")
    expect_counts(page, expect, 0, 0, 0)
    assert page.locator("#worklist-filter legend").inner_text() == "Show"

    rows = page.locator("#worklist-rows tr")
    with httpx.Client(base_url=served, headers=ALICE, timeout=60) as api:
        # two studies arrive while the page is open: its poll shows them, in triage order
        studies = elbow_studies(synthetic_small, 2)
        uploaded = {analyse(api, views)["record_id"]: views for views in studies}
        expect(rows).to_have_count(2, timeout=WAIT)
        expected = api_ids(api, "unread")
        assert set(expected) == set(uploaded)
        assert row_ids(page) == expected
        expect_counts(page, expect, 2, 0, 2)
        listed = api.get("/worklist", params={"status": "unread"}).json()["items"]
        for i, item in enumerate(listed):
            row = rows.nth(i)
            expect(row).to_have_class(re.compile(r"\bunread\b"))  # highlighted
            expect(row.locator(".part")).to_have_text(item["body_part"])
            expect(row.locator(".probability")).to_have_text(
                f"{100 * item['abnormality_probability']:.1f}%"
            )
            expect(row.locator(".model-result .result")).to_have_text(
                {"abnormal": "Abnormal", "normal": "Normal"}.get(item["result"], "No finding")
            )
            expect(row.locator(".badge")).to_have_text("Unread")
            expect(row.locator(".reviews-count")).to_have_text("0")
            expect(row.locator("time")).to_have_attribute("datetime", item["arrived_at"])

        # bob opens the most urgent study with the keyboard
        first = expected[0]
        study = api.get(f"/worklist/{first}").json()
        open_button = rows.nth(0).get_by_role("button", name=re.compile(r"^Open study 1"))
        open_button.focus()
        page.keyboard.press("Enter")
        record = page.locator("#record")
        expect(record).to_be_visible()
        expect(page.locator("#record-body")).to_have_attribute("data-id", first)
        expect(page.locator("#record-title")).to_have_text(f"Study: {study['body_part']}")
        verdict = page.locator("#record-body .verdict")
        expect(verdict).to_have_attribute("data-result", study["result"] or "none")
        shown = float(page.get_attribute("#record-body", "data-probability") or "nan")
        assert shown == pytest.approx(study["abnormality_probability"], abs=1e-9)
        details = page.locator("#record-body dl").inner_text()
        assert f"threshold {100 * study['threshold']:.1f}%" in details
        assert study["operating_point"] in details
        assert study["model"]["version"] in details
        expect(rows.nth(0)).to_have_attribute("aria-current", "true")

        # each view's heat map, fetched with the key and shown from an object URL
        heat_views = [v for v in study["views"] if v["heatmap_url"]]
        assert heat_views, study["views"]
        images = page.locator("#record-views img")
        expect(images).to_have_count(len(heat_views))
        for i, view in enumerate(heat_views):
            image = images.nth(i)
            expect(image).to_have_attribute("src", re.compile(r"^blob:"))
            with Image.open(uploaded[first][view["position"]]) as original:
                width = original.width
            expect(image).to_have_js_property("naturalWidth", width)  # decoded, full size
        expect(page.locator("#record-reviews")).to_have_text(
            "No reader has reviewed this study yet."
        )

        # bob may not read the audit trail: the API's sentence, plainly
        page.locator("#audit-details summary").click()
        expect(page.locator("#audit-status")).to_have_text(
            "GET /audit is for the keys named in BONEXR_ADMIN_KEYS."
        )
        expect(page.locator("#audit")).to_be_hidden()

        # bob's verdict
        page.fill("#review-note", "cortical break, distal humerus")
        page.get_by_role("button", name="Reader: abnormal").click()
        expect(page.locator("#review-status")).to_have_text("Recorded: abnormal, reader bob.")
        review = page.locator("#record-reviews li.review")
        expect(review).to_have_count(1)
        expect(review).to_have_attribute("data-reader", "bob")
        expect(review).to_contain_text("bob: abnormal")
        expect(review.locator(".note")).to_have_text("cortical break, distal humerus")
        expect(page.locator("#record-body")).to_have_attribute("data-status", "reviewed")
        expect(page.locator("#review-note")).to_have_value("")

        # bob corrects himself: an amendment, the first look kept and marked replaced
        page.get_by_role("button", name="Amend my review: normal").click()
        expect(page.locator("#review-status")).to_have_text("Recorded: normal, reader bob.")
        expect(review).to_have_count(2)
        expect(review.first).to_have_attribute("data-replaced", "true")
        expect(review.last).to_contain_text("bob: normal")
        page.get_by_role("button", name="Amend my review: abnormal").click()  # and back
        expect(review).to_have_count(3)
        expect(page.locator("#record-reviews li.review.replaced")).to_have_count(2)

        # the list follows without a reload: the reviewed study leaves "unread"
        expect_counts(page, expect, 1, 1, 2)
        expect(rows).to_have_count(1)
        assert row_ids(page) == api_ids(api, "unread") == [i for i in expected if i != first]
        page.check("#filter-all")
        expect(rows).to_have_count(2)
        assert row_ids(page) == api_ids(api, "all")
        reviewed_row = page.locator(f"#worklist-rows tr[data-id='{first}']")
        expect(reviewed_row).to_have_attribute("data-status", "reviewed")
        expect(reviewed_row).not_to_have_class(re.compile(r"\bunread\b"))
        expect(reviewed_row.locator(".badge")).to_have_text("Reviewed")
        expect(reviewed_row.locator(".reviews-count")).to_have_text("1")
        page.evaluate("document.getElementById('triage').scrollIntoView()")
        page.screenshot(path=str(ARTIFACTS / "worklist.png"))

        # alice, the admin, reads the audit trail (the open section reloads with her key)
        page.click("#change-key")
        page.fill("#api-key", "key-a")
        page.click("#key-form button")
        audit_rows = page.locator("#audit-rows tr")
        expect(page.locator("#audit")).to_be_visible()
        reviewed = page.locator("#audit-rows tr[data-action='review']")
        expect(reviewed).to_have_count(1)
        events = audit_rows.evaluate_all(
            "rows => rows.map(r => [...r.cells].map(c => c.textContent.trim()))"
        )
        texts = {tuple(cells[1:]) for cells in events}  # (key, action, study, outcome)
        short = first[:8]
        assert ("bob", "review", short, "ok") in texts, events
        assert ("bob", "view", short, "ok") in texts, events
        assert ("bob", "heatmap", short, "ok") in texts, events
        assert ("bob", "list", "–", "ok") in texts, events
        assert ("bob", "audit", "–", "403") in texts, events
        seen = [tuple(cells[1:]) for cells in events]
        # each heat map fetched once (the page keeps it), bob's refusal not asked again
        assert seen.count(("bob", "heatmap", short, "ok")) == len(heat_views), events
        assert seen.count(("bob", "audit", "–", "403")) == 1, events
        expect(reviewed.locator(".study button")).to_have_attribute("title", first)
        trail = api.get("/audit").json()["items"]
        assert {(e["key_name"], e["action"], e["study_id"]) for e in trail} >= {
            ("bob", "review", first),
            ("bob", "view", first),
        }
        assert page.evaluate("window.bonexrTestMarker") == "same page"
        page.locator("#audit-section").screenshot(path=str(ARTIFACTS / "worklist-audit.png"))

        # "more": one study a page, through next_cursor (a navigation: the key stays)
        page.goto(served + "/?worklist_limit=1")
        page.check("#filter-all")
        expect(rows).to_have_count(1)
        more = page.locator("#worklist-more")
        expect(more).to_be_visible()
        more.click()
        expect(rows).to_have_count(2)
        expect(more).to_be_hidden()
        assert row_ids(page) == api_ids(api, "all")

    unexpected = [e for e in console_errors if not any(x in e for x in EXPECTED_ERRORS)]
    assert unexpected == [], unexpected
    context.close()
