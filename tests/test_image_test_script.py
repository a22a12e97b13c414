"""scripts/image-test (``make image-test``) checks its prerequisites before doing anything.

The script itself builds and runs the CPU image with podman, which takes minutes and root;
it is not part of ``make test``. These tests only run it with a PATH that lacks podman,
runc or debootstrap: it must exit 2, name what is missing and how to install it, and
build nothing (a stand-in ``podman``/``runc`` that records its calls is never called).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "image-test"
TOOLS = ("podman", "runc", "debootstrap")


def _fake_tool(folder: Path, name: str, calls: Path) -> None:
    tool = folder / name
    tool.write_text(f'#!/bin/sh\necho "{name} $*" >> "{calls}"\nexit 0\n')
    tool.chmod(0o755)


def _run(tmp_path: Path, present: tuple[str, ...]) -> tuple[subprocess.CompletedProcess, Path]:
    bin_dir = tmp_path / "bin"  # PATH: only the stand-ins named in ``present``
    bin_dir.mkdir()
    calls = tmp_path / "calls.log"
    for name in present:
        _fake_tool(bin_dir, name, calls)
    results = tmp_path / "image_test.json"
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"PATH", "BONEXR_IMAGE_TEST_MIRROR", "BONEXR_BUILD_CA"}
    }
    env["PATH"] = str(bin_dir)
    run = subprocess.run(
        [sys.executable, str(SCRIPT), "--results", str(results)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert not results.exists(), "figures written although nothing ran"
    return run, calls


@pytest.mark.parametrize("absent", TOOLS)
def test_exits_2_naming_the_one_missing_tool(absent: str, tmp_path: Path) -> None:
    present = tuple(t for t in TOOLS if t != absent)
    run, calls = _run(tmp_path, present)
    assert run.returncode == 2, run.stdout + run.stderr
    assert f"{absent} not found" in run.stderr
    for other in present:
        assert f"{other} not found" not in run.stderr
    assert "apt-get install podman runc debootstrap" in run.stderr
    assert not calls.exists(), f"a tool was called: {calls.read_text()}"  # nothing built


def test_exits_2_naming_every_missing_tool(tmp_path: Path) -> None:
    run, calls = _run(tmp_path, ())
    assert run.returncode == 2, run.stdout + run.stderr
    for tool in TOOLS:
        assert f"{tool} not found" in run.stderr
    assert "apt-get install podman runc debootstrap" in run.stderr
    assert "[image-test]" not in run.stdout  # no step started
    assert not calls.exists()


def _target(makefile: str, name: str) -> str:
    """``name``'s prerequisites line and recipe."""
    found = re.search(rf"^{re.escape(name)}:(.*)\n((?:\t.*\n)+)", makefile, re.M)
    assert found, f"no {name} target in the Makefile"
    return found.group(0)


def test_make_image_test_runs_the_script_and_is_not_part_of_make_test() -> None:
    makefile = (REPO / "Makefile").read_text()
    assert "scripts/image-test" in _target(makefile, "image-test")
    assert "image-test" not in _target(makefile, "test")
    assert os.access(SCRIPT, os.X_OK)
