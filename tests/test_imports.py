"""The package layering holds: the core stands alone and there is no cycle between packages.

Walks every import statement (module level and inside functions) of the three packages
with :mod:`ast`, so a lazy import counts as much as a top-level one.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("bonexr", "training", "service")


def imported_packages(package: str) -> dict[str, set[str]]:
    """``{module file: {first-party packages it imports}}`` for one package."""
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets.add(node.module.split(".")[0])
        found[path.relative_to(ROOT).as_posix()] = {t for t in targets if t in PACKAGES}
    return found


def package_graph() -> dict[str, set[str]]:
    return {
        package: set().union(*imported_packages(package).values()) - {package}
        for package in PACKAGES
    }


def test_the_core_imports_neither_training_nor_service() -> None:
    offenders = {
        module: sorted(targets - {"bonexr"})
        for module, targets in imported_packages("bonexr").items()
        if targets - {"bonexr"}
    }
    assert offenders == {}


def test_no_import_cycle_between_packages() -> None:
    graph = package_graph()
    for package, targets in graph.items():
        for target in targets:
            assert package not in graph[target], f"{package} <-> {target}"


def test_training_and_service_stay_apart() -> None:
    """The serving image has no TensorFlow: service never imports training, nor vice versa."""
    graph = package_graph()
    assert "training" not in graph["service"]
    assert "service" not in graph["training"]


@pytest.mark.parametrize(
    "code",
    [
        "import bonexr.cli",
        "import bonexr.cli as c; c.build_parser()",
        "import service.app",
        "import training.cli, training.config",
    ],
)
def test_entry_points_import_no_tensorflow(code: str) -> None:
    check = f"{code}; import sys; assert 'tensorflow' not in sys.modules, sorted(sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", check], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr[-2000:]
