"""The import contract: the layering the folders show is the layering the code has.

Walks every import statement (module level and inside functions, and imports by string)
of the project's packages with :mod:`ast`, so a lazy import counts as much as a top-level
one. The contract:

* ``bonexr`` (the shared core) imports nothing above it; ``training`` and ``service``
  never import each other.
* Inside ``service``, top to bottom: ``doors`` (HTTP, DICOM, batch, CLI) -> ``triage``
  (the use cases) -> ``adapters`` (engine, stores, records, metrics) -> ``domain`` (what an
  answer is) -> ``settings``. A module imports its own layer and those below, never above.
* ``domain`` and ``triage`` know no web framework.
* ``bench`` and ``harness`` never import ``tests``; no shipped package imports ``bench``,
  ``harness`` or ``tests``.
* No project module is imported by a string (``importlib.import_module``, ``__import__``):
  the one plugin registry is the ``bonexr.commands`` entry-point group in pyproject.toml,
  which may name only the packages' command modules.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from harness.imports import ROOT, imported_modules, module_name, string_import

PACKAGES = ("bonexr", "training", "service")
#: Everything first-party that the contract covers (shipped packages and dev tooling).
FIRST_PARTY = (*PACKAGES, "bench", "harness", "tests")
#: Service layers, top first.
SERVICE_LAYERS = (
    "service.doors",
    "service.triage",
    "service.adapters",
    "service.domain",
    "service.settings",
)
WEB = ("fastapi", "starlette", "uvicorn")
#: The plugin registry: entry-point group -> the modules it may name.
REGISTRY = {"bonexr.commands": {"service.doors.cli", "training.cli"}}


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
    modules = {module_name(path) for path in files}
    graph: dict[str, set[str]] = {}
    for path in files:
        source = module_name(path)
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
        if isinstance(node, ast.Call) and (named := string_import(node))
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


def _layer(module: str) -> int | None:
    for index, layer in enumerate(SERVICE_LAYERS):
        if module == layer or module.startswith(layer + "."):
            return index
    return None


def _files(*folders: str) -> list[Path]:
    return [path for folder in folders for path in sorted((ROOT / folder).rglob("*.py"))]


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """Every import in ``graph`` that runs from a lower service layer to a higher one."""
    found = []
    for source, targets in sorted(graph.items()):
        own = _layer(source)
        for target in sorted(targets):
            layer = _layer(target)
            if own is not None and layer is not None and layer < own:
                found.append(f"{source} -> {target}")
    return found


def test_no_service_import_runs_up_a_layer() -> None:
    graph = {module_name(path): imported_modules(path) for path in _files("service")}
    assert upward_imports(graph) == []


def test_every_service_module_sits_in_a_layer() -> None:
    """The folders are the design: nothing left beside them but the package itself."""
    loose = [
        module_name(p)
        for p in _files("service")
        if _layer(module_name(p)) is None and module_name(p) != "service"
    ]
    assert loose == []


def test_the_triage_core_knows_no_web_framework() -> None:
    found = {
        module_name(path): sorted(t for t in imported_modules(path) if t.split(".")[0] in WEB)
        for path in _files("service/domain", "service/triage", "service/adapters")
    }
    assert {module: web for module, web in found.items() if web} == {}


def test_tooling_never_reaches_into_the_tests_and_shipped_code_never_into_tooling() -> None:
    offenders = []
    for folder, banned in (
        ("bench", {"tests"}),
        ("harness", {"tests"}),
        ("bonexr", {"bench", "harness", "tests"}),
        ("training", {"bench", "harness", "tests"}),
        ("service", {"bench", "harness", "tests"}),
    ):
        for path in _files(folder):
            hits = {t.split(".")[0] for t in imported_modules(path)} & banned
            offenders += [f"{path.relative_to(ROOT)} -> {hit}" for hit in sorted(hits)]
    assert offenders == []


def test_no_project_module_is_imported_by_a_string() -> None:
    found = []
    for path in _files(*FIRST_PARTY):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            named = string_import(node) if isinstance(node, ast.Call) else None
            if named and named.split(".")[0] in FIRST_PARTY:
                found.append(f"{path.relative_to(ROOT)}: {named}")
    assert found == []


def test_the_plugin_registry_names_only_command_modules() -> None:
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    groups = project.get("entry-points", {})
    assert set(groups) == set(REGISTRY)
    for group, allowed in REGISTRY.items():
        named = {value.partition(":")[0] for value in groups[group].values()}
        assert named == allowed


def test_the_layer_check_can_fail() -> None:
    """An adapter importing a door, or the domain a use case, is caught; a door importing
    anything below it is not."""
    graph = {
        "service.adapters.engine": {"service.doors.http.app", "service.domain.answers"},
        "service.domain.rules": {"service.triage.predictor", "service.settings"},
        "service.doors.batch": {"service.triage.ingest", "service.adapters.engine"},
    }
    assert upward_imports(graph) == [
        "service.adapters.engine -> service.doors.http.app",
        "service.domain.rules -> service.triage.predictor",
    ]
