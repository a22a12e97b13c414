"""Every command the documentation shows is one the tools accept: each ``bonexr ...`` line
of a shell block parses with the real command line (``bonexr.cli.build_parser``: the
subcommand and every option exist, required ones are there), and each ``make <target>``
names a target of the Makefile (``make -n``). The probe found a documented example that
no longer worked; running them all for real needs data and hours (``bench/first_hour.py``
runs the quick start itself), parsing them catches a renamed command or flag at once.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest
from markdown_it import MarkdownIt

from bonexr.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "models" / "README.md"]
SHELL = {"", "bash", "sh", "shell", "console"}


def shell_lines(page: Path) -> list[str]:
    """The commands of the page's shell blocks: continuations joined, comments dropped."""
    commands = []
    for token in MarkdownIt("commonmark").parse(page.read_text(encoding="utf-8")):
        if token.type != "fence" or token.info.strip() not in SHELL:
            continue
        text = re.sub(r"\\\n\s*", " ", token.content)
        for line in text.splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if line and not line.startswith("#"):
                commands.append(line)
    return commands


def documented(prefix: str) -> list[tuple[str, str]]:
    found = []
    for page in PAGES:
        for line in shell_lines(page):
            for part in re.split(r"\s*(?:&&|;|\|\|)\s*", line):
                words = [w for w in part.split() if w != "&"]  # run in the background
                while words and "=" in words[0] and not words[0].startswith("-"):
                    words = words[1:]  # VAR=value before the command
                if words and re.fullmatch(prefix, words[0]):
                    found.append((str(page.relative_to(ROOT)), " ".join(words)))
    return found


BONEXR = documented(r"(?:\.venv/bin/)?bonexr")
MAKE = documented(r"make")


def test_the_documentation_shows_commands_and_a_wrong_one_is_caught() -> None:
    assert len(BONEXR) >= 10 and len(MAKE) >= 3
    with pytest.raises(SystemExit):  # what a renamed option would do
        build_parser().parse_args(["predict", "scans/", "--out", "r/", "--no-such-option"])


@pytest.mark.parametrize(("page", "command"), BONEXR, ids=[c for _, c in BONEXR])
def test_every_documented_bonexr_command_parses(page: str, command: str) -> None:
    args = shlex.split(command)[1:]
    try:
        build_parser().parse_args(args)
    except SystemExit as exc:
        pytest.fail(f"{page}: `{command}` is refused by bonexr's parser (exit {exc.code})")


@pytest.mark.parametrize(("page", "command"), MAKE, ids=[c for _, c in MAKE])
def test_every_documented_make_target_exists(page: str, command: str) -> None:
    targets = [w for w in shlex.split(command)[1:] if not w.startswith("-") and "=" not in w]
    run = subprocess.run(
        ["make", "-n", *targets], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert "No rule to make target" not in run.stderr, f"{page}: `{command}`: {run.stderr}"
