"""External programs the tests drive (hadolint, kubectl, checkov, nginx, chromium): a test
that needs a missing one skips with how to get it, except under CI, where it fails (CI must
run every check, not skip it)."""

from __future__ import annotations

import os

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in {"", "0", "false", "no"}


def missing(what: str, how: str) -> None:
    """Skip (or, under CI, fail) because ``what`` is not installed; ``how`` says the fix."""
    message = f"{what} not found; {how}"
    if in_ci():
        pytest.fail(f"{message} (CI must run this check, not skip it)")
    pytest.skip(message)
