"""Every triage error has exactly one form per door, and docs/api.md prints those forms."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from service.domain.errors import (
    NotEligibleError,
    StoreFullError,
    TriageError,
    UnknownOperatingPointError,
    all_triage_errors,
)
from service.doors.api_docs import PAGE, errors, render
from service.doors.dicom.outcomes import CANNOT_UNDERSTAND, OUT_OF_RESOURCES, instance_status
from service.doors.http.errors import HTTP_STATUS, known_error_body, status_for

ROOT = Path(__file__).resolve().parents[1]


def test_the_page_is_what_the_tables_generate() -> None:
    page = PAGE.read_text(encoding="utf-8")
    assert page == render(page), "docs/api.md is stale: run python -m service.doors.api_docs"
    for cls in errors():
        assert f"| `{cls.__name__}` |" in page


def test_every_triage_error_has_its_own_http_entry_and_a_code() -> None:
    for cls in all_triage_errors():
        assert cls in HTTP_STATUS, f"{cls.__name__} has no HTTP status"
        assert cls.code != TriageError.code, f"{cls.__name__} has no code of its own"
    codes = [cls.code for cls in all_triage_errors()]
    assert len(codes) - len(set(codes)) == 0


def test_one_json_shape_detail_code_and_the_error_fields() -> None:
    refused = NotEligibleError("not eligible: x", "modality", {"modality": "CT"})
    assert known_error_body(refused) == {
        "detail": "not eligible: x",
        "code": "not_eligible",
        "reason": "modality",
        "modality": "CT",
    }
    unknown = UnknownOperatingPointError("no such point", ["balanced", "triage"])
    assert known_error_body(unknown)["operating_points"] == ["balanced", "triage"]
    assert status_for(unknown) == 422 and status_for(ValueError("bug")) == 500


def test_the_dicom_node_refuses_an_instance_with_one_status_per_error() -> None:
    assert instance_status(StoreFullError("full")) == OUT_OF_RESOURCES
    assert instance_status(ValueError("anything else")) == CANNOT_UNDERSTAND


def test_the_generator_checks_the_page() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "service.doors.api_docs", "--check"], cwd=ROOT, check=False
    )
    assert result.returncode == 0
