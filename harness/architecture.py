"""The generated part of ``docs/architecture.md``: the layers, the arrows between them as
the code's imports draw them, and every module with the first line of its docstring.

Why generated: an architecture page drawn by hand goes stale the first time someone adds
an import; this one is redrawn from the same AST import graph the import contract checks
(:mod:`harness.imports`), and ``tests/test_architecture.py`` fails when the committed page
differs. ``python -m harness.architecture`` rewrites it.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

from bonexr.markdown import page_command, replace_between
from harness.imports import ROOT, imported_modules, module_name

PAGE = ROOT / "docs" / "architecture.md"
START = "<!-- generated:start (python -m harness.architecture) -->"
END = "<!-- generated:end -->"

#: The groups drawn, top first: (module prefix, node id, what it is). A module belongs to
#: the first group whose prefix it starts with.
GROUPS: tuple[tuple[str, str, str], ...] = (
    ("service.doors.http", "http", "HTTP door: FastAPI app, routes, page"),
    ("service.doors.dicom", "dicom", "DICOM door: STOW-RS, C-STORE, SR back to the PACS"),
    ("service.doors", "cli", "batch door and CLI: bonexr predict, serve, run, db"),
    ("service.triage", "triage", "use cases: ingest, predictor, recording"),
    ("service.adapters", "adapters", "infrastructure: engine, stores, records, metrics"),
    ("service.domain", "domain", "domain: answers, refusals, errors, rules, policy"),
    ("service.settings", "settings", "configuration: BONEXR_* settings"),
    ("training", "training", "training: data, models, calibration, evaluation, export"),
    ("bonexr", "core", "shared core: labels, imaging, DICOM, bundle, study rule, heat maps"),
)


def _group(module: str) -> str | None:
    for prefix, node, _ in GROUPS:
        if module == prefix or module.startswith(prefix + "."):
            return node
    return None


def _modules() -> list[tuple[str, Path]]:
    files = [
        p for folder in ("bonexr", "training", "service") for p in (ROOT / folder).rglob("*.py")
    ]
    found = [(module_name(p), p) for p in files if "migrations" not in p.parts]
    return sorted((m, p) for m, p in found if m != "service")  # the bare namespace


def _summary(path: Path) -> str:
    doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
    first = doc.strip().split("\n\n")[0].replace("\n", " ")
    return first.replace("|", "\\|")


def _edges(modules: list[tuple[str, Path]]) -> list[tuple[str, str]]:
    found = set()
    for module, path in modules:
        source = _group(module)
        for target in imported_modules(path):
            end = _group(target)
            if source and end and end != source:
                found.add((source, end))
    order = [node for _, node, _ in GROUPS]
    return sorted(found, key=lambda e: (order.index(e[0]), order.index(e[1])))


def diagram(modules: list[tuple[str, Path]]) -> str:
    lines = ["```mermaid", "flowchart TD"]
    for prefix, node, title in GROUPS:
        count = sum(_group(m) == node for m, _ in modules)
        lines.append(f'    {node}["{prefix}<br/>{title}<br/>{count} modules"]')
    lines += [f"    {a} --> {b}" for a, b in _edges(modules)]
    lines.append("```")
    return "\n".join(lines)


def inventory(modules: list[tuple[str, Path]]) -> str:
    out = []
    for prefix, node, title in GROUPS:
        out += [f"### `{prefix}`: {title}", "", "| module | what it is for |", "|---|---|"]
        out += [f"| `{m}` | {_summary(p)} |" for m, p in modules if _group(m) == node]
        out.append("")
    return "\n".join(out)


def generated() -> str:
    modules = _modules()
    return f"{diagram(modules)}\n\n## Every module\n\n{inventory(modules)}"


def render(page: str) -> str:
    return replace_between(page, START, END, generated())


def main(argv: list[str] | None = None) -> int:
    return page_command(PAGE, render, __doc__.splitlines()[0], argv)


if __name__ == "__main__":
    sys.exit(main())
