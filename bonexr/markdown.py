"""Generated blocks in Markdown pages: the part between two markers is rewritten from the
code, the rest of the page is left as written.

Why here: the error table of ``docs/api.md`` (:mod:`service.doors.api_docs`), the diagram of
``docs/architecture.md`` (:mod:`harness.architecture`) and the README's measured figures
(:mod:`bench.real_data`) are each regenerated this way, and a stale page is found by the
same ``--check``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path

from bonexr.errors import ConfigError


def replace_between(text: str, start: str, end: str, body: str) -> str:
    """``text`` with what lies between the ``start`` and ``end`` markers replaced by
    ``body`` (the markers stay); a page without both markers is an error naming them."""
    if start not in text or end not in text:
        raise ConfigError(f"the page has no generated block ({start} ... {end})")
    head, _, rest = text.partition(start)
    _, _, tail = rest.partition(end)
    return f"{head}{start}\n{body}{end}{tail}"


def regenerate(page: Path, render: Callable[[str], str], *, check: bool) -> int:
    """Rewrite ``page`` as ``render`` makes it, or with ``check`` only say whether it is
    current: the exit status of a ``python -m ... [--check]`` command."""
    current = page.read_text(encoding="utf-8")
    wanted = render(current)
    if check:
        return 0 if current == wanted else 1
    page.write_text(wanted, encoding="utf-8")
    return 0


def page_command(
    page: Path, render: Callable[[str], str], description: str, argv: Sequence[str] | None
) -> int:
    """The ``python -m <generator> [--check]`` command of a generated page section."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--check", action="store_true", help="exit 1 when the page is stale")
    args = parser.parse_args(argv)
    return regenerate(page, render, check=args.check)
