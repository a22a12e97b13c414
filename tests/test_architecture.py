"""The house a newcomer reads: the architecture page is what the code draws, the README
stays short and its links resolve, and no function hides a design in 80+ lines."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from harness.architecture import PAGE, _group, _modules, render

ROOT = Path(__file__).resolve().parents[1]
#: Code outside the tests that the function-length rule covers.
CODE = ("bonexr", "training", "service", "bench", "harness")
MAX_FUNCTION_LINES = 80
MAX_README_LINES = 200


def test_the_architecture_page_is_what_the_code_draws() -> None:
    page = PAGE.read_text(encoding="utf-8")
    assert page == render(page), "docs/architecture.md is stale: run python -m harness.architecture"


def test_every_module_is_drawn_in_a_group() -> None:
    assert [m for m, _ in _modules() if _group(m) is None] == []


def long_functions(paths: list[Path], root: Path = ROOT) -> list[str]:
    """``path:line name length`` of every function over the limit (paths from ``root``)."""
    found = []
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    found.append(f"{path.relative_to(root)}:{node.lineno} {node.name} {length}")
    return found


def test_no_function_outside_the_tests_is_over_80_lines() -> None:
    paths = [p for folder in CODE for p in sorted((ROOT / folder).rglob("*.py"))]
    assert long_functions(paths) == []


def test_the_length_rule_can_fail(tmp_path: Path) -> None:
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    (tmp_path / "long.py").write_text(f"def f():\n{body}\n")
    (tmp_path / "short.py").write_text("def g():\n    return 1\n")
    paths = [tmp_path / "long.py", tmp_path / "short.py"]
    assert long_functions(paths, root=tmp_path) == ["long.py:1 f 81"]


def test_the_readme_is_short_and_its_links_resolve() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= MAX_README_LINES
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        assert (ROOT / target).exists(), f"README links to {target}, which does not exist"


def test_a_generated_block_is_replaced_and_a_stale_page_found(tmp_path: Path) -> None:
    import pytest

    from bonexr.errors import ConfigError
    from bonexr.markdown import regenerate, replace_between

    page = tmp_path / "page.md"
    page.write_text("intro\n<!-- a -->\nold\n<!-- b -->\nafter\n")

    def render(text: str) -> str:
        return replace_between(text, "<!-- a -->", "<!-- b -->", "new\n")

    assert regenerate(page, render, check=True) == 1
    assert regenerate(page, render, check=False) == 0
    assert page.read_text() == "intro\n<!-- a -->\nnew\n<!-- b -->\nafter\n"
    assert regenerate(page, render, check=True) == 0
    with pytest.raises(ConfigError, match="no generated block"):
        replace_between("no markers", "<!-- a -->", "<!-- b -->", "x")
