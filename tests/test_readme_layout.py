"""The README's layout section names every module in the tree, and nothing that is gone."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("bonexr", "training", "service", "bench")


def _layout_block() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Layout", 1)[1]
    return section.split("```", 2)[1]


def _modules() -> set[str]:
    found = set()
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            if path.name != "__init__.py":
                found.add(path.name)
    return found


def test_every_module_is_in_the_layout() -> None:
    block = _layout_block()
    named = set(re.findall(r"[a-z_0-9]+\.py\b", block))
    missing = _modules() - named
    assert not missing, f"README layout does not mention: {sorted(missing)}"


def test_the_layout_names_no_module_that_is_gone() -> None:
    named = set(re.findall(r"[a-z_0-9]+\.py\b", _layout_block()))
    gone = named - _modules()
    assert not gone, f"README layout names modules that do not exist: {sorted(gone)}"
