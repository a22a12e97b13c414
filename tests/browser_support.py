"""A real browser for the page tests: Debian's chromium, headless, driven by Playwright
(no browser download). ``make test`` installs chromium where it can; elsewhere the tests
skip with the reason, except under CI, where a missing browser fails them. (No tests here.)
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.tools import missing

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "chrome")


def find_chromium() -> str | None:
    configured = os.environ.get("BONEXR_CHROMIUM")
    if configured and Path(configured).is_file():
        return configured
    for name in CHROMIUM_NAMES:
        if found := shutil.which(name):
            return found
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One headless chromium per test module."""
    sync_api = pytest.importorskip("playwright.sync_api")
    executable = find_chromium()
    if executable is None:
        missing("chromium", "apt install chromium, or set BONEXR_CHROMIUM")
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=executable, headless=True, args=["--no-sandbox"]
        )
        yield launched
        launched.close()
