"""Every documentation page renders as written: parsed with a CommonMark parser
(``markdown-it-py``, tables on, as GitHub renders them), no code fence left open, no table
swallowed by a code block or a paragraph, every relative link and anchor found.

The probe found ``docs/api.md`` rendering its whole errors table as code (a closing fence
with text after it never closes); nothing else looked at the rendered page.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from markdown_it import MarkdownIt

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted(
    [
        ROOT / "README.md",
        ROOT / "CHANGELOG.md",
        ROOT / "models" / "README.md",
        *(ROOT / "docs").glob("*.md"),
    ]
)


def _parser() -> MarkdownIt:
    return MarkdownIt("commonmark").enable("table")


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    tokens = _parser().parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for index, token in enumerate(tokens):
        if token.type == "heading_open":
            slug, n = _slug(tokens[index + 1].content), 1
            while slug in found:  # GitHub numbers repeated headings
                slug, n = f"{_slug(tokens[index + 1].content)}-{n}", n + 1
            found.add(slug)
    return found


def problems(path: Path) -> list[str]:
    """What would render wrong in ``path``."""
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    tokens = _parser().parse(text)
    found = []
    covered: set[int] = set()  # source lines inside a table or a code block
    for token in tokens:
        if token.map is None:
            continue
        start, end = token.map
        if token.type in ("fence", "code_block", "table_open"):
            covered.update(range(start, end))
        if token.type == "fence":
            closing = lines[end - 1].strip() if end - 1 < len(lines) else ""
            if end - 1 == start or not re.fullmatch(r"(`{3,}|~{3,})", closing):
                found.append(f"line {start + 1}: a code fence that never closes")
            for offset, inner in enumerate(lines[start + 1 : end - 1], start + 2):
                if re.match(r"\s{0,3}(`{3,}|~{3,})", inner):  # text after it: no closing fence
                    found.append(f"line {offset}: a fence inside a code block (text after it?)")
    for number, line in enumerate(lines):
        if re.match(r"\s{0,3}\|.*\|\s*$", line) and number not in covered:
            found.append(f"line {number + 1}: a table row that does not render as a table")
    return found


def broken_links(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    found = []
    for token in _parser().parse(text):
        for child in token.children or []:
            href = child.attrs.get("href") if child.type == "link_open" else None
            if not isinstance(href, str) or re.match(r"[a-z]+:", href):
                continue  # http(s), mailto: not checked offline
            target, _, anchor = href.partition("#")
            page = (path.parent / target).resolve() if target else path
            if not page.exists():
                found.append(f"{href}: no such file")
            elif anchor and page.suffix == ".md" and anchor not in _anchors(page):
                found.append(f"{href}: no such heading in {page.name}")
    return found


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_page_renders_as_written(page: Path) -> None:
    assert problems(page) == []


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_and_anchor_resolves(page: Path) -> None:
    assert broken_links(page) == []


def test_the_checks_find_what_the_probe_found(tmp_path: Path) -> None:
    """The api.md fault (text after a closing fence), a table indented into a code block,
    a link to a missing file and to a missing heading: each is found."""
    page = tmp_path / "page.md"
    page.write_text(
        "# Title\n\n```bash\ncurl x\n``` and then text\n\n| a | b |\n|---|---|\n| 1 | 2 |\n"
    )
    assert any("never closes" in p for p in problems(page))
    page.write_text("# Title\n\n    | a | b |\n    |---|---|\n\n| c |\n")
    assert problems(page) == ["line 6: a table row that does not render as a table"]
    page.write_text("# Title\n\n[x](missing.md) [y](#title) [z](#nowhere)\n")
    assert broken_links(page) == [
        "missing.md: no such file",
        "#nowhere: no such heading in page.md",
    ]
