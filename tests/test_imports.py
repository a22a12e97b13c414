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


#: Calls that import a module named by a string: ``importlib.import_module("x")``,
#: ``import_module("x")`` and ``__import__("x")``.
STRING_IMPORTERS = ("import_module", "__import__")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _string_import(node: ast.Call) -> str | None:
    """The module a call like ``importlib.import_module("service.x")`` names, if any."""
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
    if name not in STRING_IMPORTERS or not node.args:
        return None
    first = node.args[0]
    if isinstance(first, ast.Constant) and isinstance(first.value, str):
        return first.value
    return None


def imported_modules(path: Path) -> set[str]:
    """Every module one file imports, anywhere in it (module level, in functions, by string).

    ``from a.b import c`` yields both ``a.b`` and ``a.b.c`` (``c`` may be a module); a
    relative import is resolved against the file's package.
    """
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            targets.add(base)
            targets.update(f"{base}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Call) and (named := _string_import(node)):
            targets.add(named)
    return targets


def project_files() -> list[Path]:
    return [path for package in PACKAGES for path in sorted((ROOT / package).rglob("*.py"))]


def imported_packages(package: str) -> dict[str, set[str]]:
    """``{module file: {first-party packages it imports}}`` for one package."""
    return {
        path.relative_to(ROOT).as_posix(): {
            target.split(".")[0]
            for target in imported_modules(path)
            if target.split(".")[0] in PACKAGES
        }
        for path in sorted((ROOT / package).rglob("*.py"))
    }


def module_graph() -> dict[str, set[str]]:
    """``{project module: {project modules it imports}}``; a package's own ``__init__``
    counts as the package, and an import of a name inside a module counts as the module."""
    files = project_files()
    modules = {_module_name(path) for path in files}
    graph: dict[str, set[str]] = {}
    for path in files:
        source = _module_name(path)
        graph[source] = {
            target for target in imported_modules(path) if target in modules and target != source
        }
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (first == last), or None (iterative DFS)."""
    state: dict[str, int] = {}
    for start in sorted(graph):
        if state.get(start):
            continue
        stack: list[tuple[str, list[str]]] = [(start, sorted(graph[start]))]
        path = [start]
        state[start] = 1
        while stack:
            node, pending = stack[-1]
            if not pending:
                state[node] = 2
                stack.pop()
                path.pop()
                continue
            nxt = pending.pop()
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append((nxt, sorted(graph.get(nxt, ()))))
    return None


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


def test_no_import_cycle_between_modules() -> None:
    """No module pair (or longer loop) imports each other, not even lazily in a function:
    shared names belong in the module both depend on."""
    graph = module_graph()
    # Package __init__ files re-export their submodules by design; a submodule importing
    # its own package's __init__ (``from service.adapters.stores import x``) is not a loop
    # back into itself unless __init__ imports it, which the graph still shows.
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def test_the_cycle_finder_finds_a_lazy_pair_and_a_string_import(tmp_path: Path) -> None:
    """The checks above can fail: a lazy import in a function and an import by string count."""
    source = ast.parse(
        "def f():\n    from service.a import x\n"
        "def g():\n    import importlib\n    importlib.import_module('service.secret')\n"
        "__import__('training.thing')\n"
    )
    calls = {
        named
        for node in ast.walk(source)
        if isinstance(node, ast.Call) and (named := _string_import(node))
    }
    assert calls == {"service.secret", "training.thing"}
    assert find_cycle({"a": {"b"}, "b": {"a"}}) in (["a", "b", "a"], ["b", "a", "b"])
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


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
        "import service.doors.http.app",
        "import training.cli, training.config",
    ],
)
def test_entry_points_import_no_tensorflow(code: str) -> None:
    check = f"{code}; import sys; assert 'tensorflow' not in sys.modules, sorted(sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", check], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr[-2000:]
