"""docs/configuration.md is exactly what the Settings fields generate."""

from __future__ import annotations

from service.doors.config_docs import PAGE, render
from service.settings import Settings


def test_configuration_page_matches_the_settings() -> None:
    assert PAGE.read_text(encoding="utf-8") == render(), (
        "docs/configuration.md is stale: run python -m service.doors.config_docs"
    )


def test_every_setting_is_a_row() -> None:
    page = render()
    for name in Settings.model_fields:
        assert f"| `BONEXR_{name.upper()}` |" in page, name
