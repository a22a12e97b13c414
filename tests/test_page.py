"""The web page in a real browser: Debian's chromium, headless, driven by Playwright.

Two views of one synthetic study go through the page; the verdicts it shows must be the
API's, the overlay must toggle, a text file must produce a plain sentence beside its view,
the layout must hold at desktop and tablet widths (screenshots are kept under
``build/test-artifacts/``), and the browser console must stay free of errors.

``make test`` installs chromium where it can (``scripts/ensure-debian-tool``); elsewhere the
test skips with the reason, except under CI, where a missing browser fails it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from harness.service_support import server_process

pytestmark = pytest.mark.slow

ARTIFACTS = Path(__file__).resolve().parent.parent / "build" / "test-artifacts"
#: Upload limit of the page test's server: small, so an "oversized file" is cheap to make.
UPLOAD_LIMIT = 2_000_000


@pytest.fixture(scope="module")
def served(untrained_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    uploads = tmp_path_factory.mktemp("page-uploads")
    limit = {"BONEXR_MAX_UPLOAD_BYTES": str(UPLOAD_LIMIT)}
    with server_process(untrained_bundle.parent, uploads, **limit) as (url, _process):
        yield url


def two_views(synthetic_small: Path) -> list[Path]:
    for study in sorted(synthetic_small.glob("train/XR_ELBOW/*/*")):
        views = sorted(study.glob("*.png"))
        if len(views) >= 2:
            return views[:2]
    raise AssertionError("no synthetic study with two views")


def test_page_shows_the_apis_answers(
    browser: object, served: str, synthetic_small: Path, tmp_path: Path
) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    context = browser.new_context(viewport={"width": 1280, "height": 900})  # type: ignore[attr-defined]
    page = context.new_page()
    console_errors: list[str] = []
    page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: console_errors.append(f"page error: {e}"))

    response = page.goto(served + "/")
    assert response.status == 200
    assert "default-src 'self'" in response.headers["content-security-policy"]
    page.wait_for_selector("#model:has-text('version')")
    assert page.is_visible("#demo-banner")  # the untrained bundle is marked synthetic
    assert page.locator("label[for=files]").count() == 1  # the picker has a label

    views = two_views(synthetic_small)
    page.set_input_files("#files", [str(v) for v in views])
    page.wait_for_selector("#study .verdict", timeout=60_000)
    page.locator(".view .verdict").nth(1).wait_for()

    # the page's numbers are the API's numbers for the same uploads
    with httpx.Client(base_url=served, timeout=30) as api:
        cards = page.locator(".view")
        filenames = []
        for i in range(cards.count()):
            card = cards.nth(i)
            filename = card.get_attribute("data-filename")
            filenames.append(filename)
            answer = api.post("/predict", json={"filename": filename}).json()
            assert card.get_attribute("data-body-part") == answer["body_part"]
            shown = float(card.get_attribute("data-probability"))
            assert shown == pytest.approx(answer["abnormality_probability"], abs=1e-9)
            verdict = card.locator(".verdict").get_attribute("data-result")
            assert verdict == answer["result"]
        study = api.post("/predict/study", json={"filenames": filenames}).json()
    shown = float(page.get_attribute("#study-body", "data-probability"))
    assert shown == pytest.approx(study["abnormality_probability"], abs=1e-9)
    assert page.locator("#study .verdict").get_attribute("data-result") == study["result"]

    # the overlay follows the toggle and the slider
    heat = page.locator(".frame img.heat").first
    page.locator("#opacity").evaluate(
        "el => { el.value = '0.3'; el.dispatchEvent(new Event('input')); }"
    )
    assert heat.evaluate("el => el.style.opacity") == "0.3"
    page.uncheck("#show-heat")
    assert heat.evaluate("el => el.style.opacity") == "0"
    page.check("#show-heat")
    assert heat.evaluate("el => getComputedStyle(el).opacity") == "0.3"
    page.screenshot(path=str(ARTIFACTS / "page-desktop.png"), full_page=True)
    page.set_viewport_size({"width": 820, "height": 1180})
    page.screenshot(path=str(ARTIFACTS / "page-tablet.png"), full_page=True)
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 820, "horizontal scrolling at tablet width"

    # bad input: a plain sentence beside the view, nothing broken
    text_file = tmp_path / "notes.txt"
    text_file.write_text("not an image")
    page.set_input_files("#files", [str(text_file)])
    error = page.wait_for_selector(".view .error")
    assert "Unsupported image format" in error.inner_text()
    assert page.get_attribute(".view .error", "role") == "alert"

    unexpected = [e for e in console_errors if "status of 415" not in e]
    assert unexpected == [], unexpected
    context.close()


def test_page_asks_for_the_api_key(browser: object, untrained_bundle: Path, tmp_path: Path) -> None:
    env = {"BONEXR_API_KEYS": "s3cret"}
    with server_process(untrained_bundle.parent, tmp_path / "up", **env) as (url, _):
        page = browser.new_page()  # type: ignore[attr-defined]
        page.goto(url + "/")
        page.wait_for_selector("#key-section:not([hidden])")
        assert "API key" in page.inner_text("#model")
        page.fill("#api-key", "s3cret")
        page.click("#key-form button")
        page.wait_for_selector("#model:has-text('version')")
        assert page.evaluate("sessionStorage.getItem('bonexr-api-key')") == "s3cret"
        page.close()


def test_page_explains_every_failure_beside_its_view(
    browser: object, served: str, tmp_path: Path
) -> None:
    """Oversized file, DICOM without pixels, a lost connection, an upload deleted before it
    was classified: each a sentence in its own card; the layout and the console stay clean."""
    import numpy as np
    from PIL import Image
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    from harness.service_support import encode, png_bytes

    big = tmp_path / "big.png"
    noise = np.random.default_rng(0).integers(0, 256, (1500, 1500), dtype=np.uint8)
    big.write_bytes(encode(Image.fromarray(noise, mode="L")))
    assert big.stat().st_size > UPLOAD_LIMIT
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    header_only = FileDataset("x.dcm", {}, file_meta=meta, preamble=b"\x00" * 128)
    header_only.Rows, header_only.Columns = 64, 64
    empty_dicom = tmp_path / "no-pixels.dcm"
    header_only.save_as(empty_dicom, enforce_file_format=True)

    page = browser.new_page(viewport={"width": 1280, "height": 900})  # type: ignore[attr-defined]
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
    page.goto(served + "/")
    page.wait_for_selector("#model:has-text('version')")

    def card_error(files: list[Path]) -> list[str]:
        page.set_input_files("#files", [str(f) for f in files])
        # (no wait_for_function: its string predicates need eval, which the page's CSP forbids)
        page.locator(".view .error, .view .verdict").nth(len(files) - 1).wait_for()
        return [e.inner_text() for e in page.query_selector_all(".view .error")]

    (too_big,) = card_error([big])
    assert "too large" in too_big and f"{UPLOAD_LIMIT:,} bytes" in too_big
    (message,) = card_error([empty_dicom])
    assert "DICOM" in message and message.endswith(".")

    # the connection drops during the upload
    page.route("**/upload", lambda route: route.abort())
    lost = tmp_path / "lost.png"
    lost.write_bytes(png_bytes(seed=71))
    assert card_error([lost]) == [
        "The server could not be reached (network error). Check the connection and try again."
    ]
    page.unroute("**/upload")

    # the upload is deleted (retention, another reader) before it is classified
    def delete_first(route, request) -> None:  # type: ignore[no-untyped-def]
        filename = request.post_data_json["filename"]
        httpx.delete(f"{served}/uploads/{filename}")
        route.continue_()

    page.route("**/predict", delete_first)
    expired = tmp_path / "expired.png"
    expired.write_bytes(png_bytes(seed=72))
    assert card_error([expired]) == ["No upload with that filename."]
    page.unroute("**/predict")

    assert page.evaluate("document.documentElement.scrollWidth") <= 1280
    expected = ("status of 413", "status of 422", "status of 404", "ERR_FAILED")
    unexpected = [e for e in errors if not any(x in e for x in expected)]
    assert unexpected == [], unexpected
    page.close()


@pytest.mark.parametrize(
    ("path", "rendered"),
    [("/docs", ".swagger-ui .info .title:has-text('bonexr')"), ("/redoc", "h1:has-text('bonexr')")],
)
def test_the_api_reference_renders_with_the_network_off(
    browser: object, served: str, path: str, rendered: str
) -> None:
    """The probe's /docs was blank on an isolated network (Swagger UI came from a CDN).
    Every request off this server is refused here, as an isolated network would."""
    context = browser.new_context()  # type: ignore[attr-defined]
    page = context.new_page()
    elsewhere: list[str] = []

    def only_this_server(route: object) -> None:
        url = route.request.url  # type: ignore[attr-defined]
        if url.startswith(served) or url.startswith("data:"):
            route.continue_()  # type: ignore[attr-defined]
        else:
            elsewhere.append(url)
            route.abort()  # type: ignore[attr-defined]

    page.route("**/*", only_this_server)
    assert page.goto(served + path).status == 200
    page.wait_for_selector(rendered, timeout=60_000)
    assert page.get_by_text("/predict/study").count() >= 1  # the operations are listed
    # ReDoc's bundle asks for its "powered by" logo from its maker's CDN; refused here, it
    # is a missing 16 px image and nothing else
    assert [u for u in elsewhere if u != "https://cdn.redoc.ly/redoc/logo-mini.svg"] == []
    context.close()


def test_every_page_study_is_recorded_and_a_partly_refused_one_says_why(
    browser: object, served: str, synthetic_small: Path, tmp_path: Path
) -> None:
    """The probe's single view never reached the worklist, and a study with one of two
    views refused lost its panel. Now both are recorded, the panel names the view left out
    and why, and the worklist keeps the file names in upload order."""
    import numpy as np
    from PIL import Image

    from harness.service_support import encode

    def recorded() -> int:
        return int(httpx.get(f"{served}/worklist/changes").json()["counts"]["all"])

    good = two_views(synthetic_small)[0]
    big = tmp_path / "too-big.png"
    noise = np.random.default_rng(1).integers(0, 256, (1500, 1500), dtype=np.uint8)
    big.write_bytes(encode(Image.fromarray(noise, mode="L")))
    page = browser.new_page(viewport={"width": 1280, "height": 900})  # type: ignore[attr-defined]
    page.goto(served + "/")
    page.wait_for_selector("#model:has-text('version')")
    before = recorded()
    page.set_input_files("#files", [str(good)])
    page.wait_for_selector("#study-body .verdict")
    assert recorded() == before + 1  # one view is a study, recorded like any other

    page.set_input_files("#files", [str(big), str(good)])
    page.wait_for_selector("#study-body .refused-views li")
    (left_out,) = page.locator("#study-body .refused-views li").all_inner_texts()
    assert left_out.startswith("too-big.png:") and "too large" in left_out
    assert page.locator("#study-body .verdict").count() == 1
    assert recorded() == before + 2
    newest = httpx.get(f"{served}/worklist", params={"limit": 50}).json()["items"]
    names = []
    for item in newest:
        study = httpx.get(f"{served}/worklist/{item['id']}").json()
        names.append([v["name"] for v in study["views"]])
    assert [good.name] in names
    page.close()


def test_the_model_health_section_shows_drift_agreement_and_the_shadow(
    browser: object, untrained_bundle: Path, synthetic_small: Path, tmp_path: Path
) -> None:
    """The page section of docs/operations.md (its picture is this test's screenshot):
    drift per signal once the windows are full, agreement with readers, the shadow."""
    import shutil

    from harness.bundles import make_untrained_bundle

    models = tmp_path / "models"
    shutil.copytree(untrained_bundle, models / "live")
    make_untrained_bundle(models / "candidate", input_size=64, seed=1)
    env = {
        "BONEXR_BUNDLE": "live",
        "BONEXR_SHADOW_BUNDLE": "candidate",
        "BONEXR_DRIFT_REFERENCE_SIZE": "20",
        "BONEXR_DRIFT_WINDOW": "20",
    }
    views = sorted(synthetic_small.rglob("*.png"))
    with server_process(models, tmp_path / "uploads", **env) as (url, _):
        for index in range(40):
            data = views[index % len(views)].read_bytes()
            name = httpx.post(f"{url}/upload", files={"file": ("x.png", data)}).json()["filename"]
            body = {"filenames": [name], "body_part": "Hand", "view_names": [f"view{index}.png"]}
            record = httpx.post(f"{url}/predict/study", json=body, timeout=60).json()["record_id"]
            if index < 6:
                verdict = {"reader_result": "abnormal" if index % 2 else "normal"}
                httpx.post(f"{url}/worklist/{record}/review", json=verdict)
        page = browser.new_page(viewport={"width": 1280, "height": 900})  # type: ignore[attr-defined]
        page.goto(url + "/")
        page.locator("#health-details summary").click()
        page.wait_for_selector("#health-body table.health")
        tables = page.locator("#health-body table.health")
        assert tables.count() == 4  # drift, agreement, refusals, shadow
        drift = tables.nth(0).inner_text()
        assert "probability · Hand" in drift and "content_score" not in drift  # no gate here
        agreement = tables.nth(1).inner_text()
        assert "Hand" in agreement and "not enough reviews (6 of 30 needed)" in agreement
        assert "never shown to readers" in tables.nth(3).inner_text()
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.locator("#health-section").screenshot(path=str(ARTIFACTS / "model-health.png"))
        page.close()
