"""The page's Content-Security-Policy and nosniff reach every path that serves the page
or one of its assets (no browser needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.service_support import make_settings, running
from service.doors.http.routes.page import CSP

PATHS = [
    "/",
    "/static/index.html",
    "/static/app.js",
    "/static/style.css",
    "/static/favicon.svg",
]


@pytest.mark.parametrize("path", PATHS)
def test_every_page_path_has_the_policy(untrained_bundle: Path, tmp_path: Path, path: str) -> None:
    with running(make_settings(untrained_bundle, tmp_path), wait=False) as (client, _):
        response = client.get(path)
    assert response.status_code == 200, path
    assert response.headers.get("content-security-policy") == CSP, path
    assert response.headers.get("x-content-type-options") == "nosniff", path
