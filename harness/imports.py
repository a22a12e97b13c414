"""Every import a project file makes, read with :mod:`ast` (module level, inside
functions, and by string), for the import contract (``tests/test_imports.py``) and the
architecture page (:mod:`harness.architecture`): both read the same real graph."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


#: Calls that import a module named by a string: ``importlib.import_module("x")``,
#: ``import_module("x")`` and ``__import__("x")``.
STRING_IMPORTERS = ("import_module", "__import__")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def string_import(node: ast.Call) -> str | None:
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
    module = module_name(path)
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
        elif isinstance(node, ast.Call) and (named := string_import(node)):
            targets.add(named)
    return targets
