"""Every published quality figure, regenerated from a named run and commit.

``make figures`` trains the demo bundle if there is none, scores it on fresh synthetic
data (:mod:`bench.fresh_data`), retrains its part models at five seeds on the same split
(:mod:`bench.seed_spread`) and then runs this module, which reads those results and the
run's ``report.json`` and writes:

* ``docs/figures.md``: every table, with the date, commit, machine and commands;
* its summary block at the top (between the ``figures:begin`` / ``figures:end`` markers),
  the table the README links to.

Nothing here measures anything: it only renders what the committed scripts measured, so
a published number is always the output of a command somebody can run again.

    python -m bench.figures --run runs/demo --bundle models/demo
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import subprocess
from pathlib import Path
from typing import Any

from bench.fresh_data import markdown as fresh_markdown
from bonexr.bundle import read_manifest
from bonexr.labels import display_name
from training.answers_markdown import answer_sections
from training.formatting import format_metric, format_with_ci
from training.precision import precision_markdown
from training.report import localisation_markdown
from training.stratify import stratification_markdown

FRESH = Path("bench/results/fresh_data.json")
SEEDS = Path("bench/results/seed_spread.json")
FIGURES = Path("docs/figures.md")
BEGIN, END = "<!-- figures:begin -->", "<!-- figures:end -->"
COMMANDS = (
    "bonexr demo   # only when models/demo has no bundle",
    "python -m bench.fresh_data --bundle models/demo --patients 80 --seed 2027",
    "python -m bench.seed_spread --run runs/demo --seeds 0,1,2,3,4",
    "python -m bench.figures --run runs/demo --bundle models/demo",
)


def provenance() -> dict[str, str]:
    """Date, commit (``+dirty`` with uncommitted changes), machine."""

    def git(*args: str) -> str:
        try:
            return subprocess.run(
                ["git", *args], capture_output=True, text=True, check=True
            ).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return "unknown"

    commit = git("rev-parse", "--short", "HEAD")
    dirty = git("status", "--porcelain", "--untracked-files=no")
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = re.findall(r"model name\s*:\s*(.+)", cpuinfo.read_text())
        cpu = names[0] if names else cpu
    return {
        "date": dt.date.today().isoformat(),
        "commit": commit + ("+dirty" if dirty and dirty != "unknown" else ""),
        "machine": f"{cpu}, {os.cpu_count()} logical CPUs, {platform.system()}",
    }


def test_split_table(report: dict[str, Any]) -> list[str]:
    """Per-part AUROC, kappa, sensitivity and specificity with intervals, both levels."""
    router = report["router"]["image"]
    lines = [
        f"Router accuracy (test images): {format_with_ci(router, 'accuracy')} (n={router['n']}).",
        "",
        "| body part | level | n | AUROC | kappa | sensitivity | specificity |",
        "|---|---|---|---|---|---|---|",
    ]
    for part, levels in report["parts"].items():
        for level in ("image", "study"):
            m = levels[level]
            lines.append(
                f"| {display_name(part) if level == 'image' else ''} | {level} | {m['n']} | "
                + " | ".join(
                    format_with_ci(m, k) for k in ("auroc", "kappa", "sensitivity", "specificity")
                )
                + " |"
            )
    return [*lines, ""]


def seed_table(seeds: dict[str, Any], report: dict[str, Any]) -> list[str]:
    """Training-seed spread (mean [min, max]) beside the base run's test bootstrap interval."""
    summary = seeds["summary"]
    n = len(seeds["seeds"])
    lines = [
        f"{n} training seeds ({', '.join(seeds['seeds'])}) on one fixed split (the test set "
        "does not change; the router is the base run's). Spread: mean [min, max] over seeds. "
        "Beside it, the base run's 95% study-bootstrap interval: the test-set sampling "
        "variance, the other half of the uncertainty.",
        "",
        "| body part | study AUROC over seeds | base run's AUROC [95% CI] | study kappa over seeds "
        "| study sensitivity over seeds |",
        "|---|---|---|---|---|",
    ]

    def spread(s: dict[str, float]) -> str:
        return f"{s['mean']:.3f} [{s['min']:.3f}, {s['max']:.3f}]"

    for part, figures in summary["parts"].items():
        base = report["parts"][part.upper()]["study"]
        lines.append(
            f"| {part} | {spread(figures['study_auroc'])} | {format_with_ci(base, 'auroc')} | "
            f"{spread(figures['study_kappa'])} | {spread(figures['study_sensitivity'])} |"
        )
    if "pointing_game" in summary:
        game = summary["pointing_game"]
        lines += [
            "",
            f"Pointing game on the test split over seeds: heat map {spread(game['heatmap'])}, "
            f"brightness baseline {spread(game['brightest'])}.",
        ]
    return [*lines, ""]


def summary_block(
    report: dict[str, Any], fresh: dict[str, Any], seeds: dict[str, Any] | None, stamp: str
) -> list[str]:
    """The short table at the top of docs/figures.md: one row per part, the figures a
    reader looks for."""
    triage = fresh["points"]["triage"]
    located = fresh.get("localisation", {})
    lines = [
        BEGIN,
        f"Demo bundle, synthetic data; {stamp}; generated by `make figures` "
        "(every table and the commands are below). "
        "95% study-bootstrap intervals; fresh data: 80 new patients per part, seed 2027.",
        "",
        "| body part | test study AUROC | fresh: study ECE (calibrated) | fresh: study "
        "sensitivity at triage | fresh: heat map hits the defect | seed spread of study "
        "AUROC |",
        "|---|---|---|---|---|---|",
    ]
    for part, levels in report["parts"].items():
        name = display_name(part)
        study = triage[part].get("study", {})
        hit = located.get("parts", {}).get(part, {})
        spread = (seeds or {}).get("summary", {}).get("parts", {}).get(name, {}).get("study_auroc")
        lines.append(
            f"| {name} | {format_with_ci(levels['study'], 'auroc')} | "
            f"{format_with_ci(study, 'ece')} | {format_with_ci(study, 'sensitivity')} | "
            f"{format_with_ci(hit, 'heatmap')} "
            f"(brightest pixel {format_metric(hit.get('brightest'))}) | "
            + (f"{spread['min']:.3f}-{spread['max']:.3f}" if spread else "not run")
            + " |"
        )
    if located.get("target"):
        overall = located["overall"]
        met = "met" if located["target"]["met"] else "NOT met (the maps are unvalidated)"
        lines += [
            "",
            f"Heat maps on fresh data: the served map's hottest point falls in the drawn "
            f"defect box {format_with_ci(overall, 'heatmap')} of {overall['n']} abnormal views, "
            f"the brightest pixel of the blurred image {format_with_ci(overall, 'brightest')}, "
            f"the image centre {format_with_ci(overall, 'centre')}; target {met}.",
        ]
    return [*lines, END]


def figures_markdown(
    report: dict[str, Any],
    fresh: dict[str, Any],
    seeds: dict[str, Any] | None,
    precisions: dict[str, Any],
    stamp: dict[str, str],
) -> str:
    lines = [
        "# Quality figures (generated)",
        "",
        f"Generated {stamp['date']} at commit `{stamp['commit']}` on {stamp['machine']} by "
        "`make figures`, which runs:",
        "",
        "```",
        *COMMANDS,
        "```",
        "",
        "Synthetic data: these figures say the pipeline and its evidence work; they say "
        "nothing about radiographs. Intervals: 95%, 1000 study-bootstrap resamples, seed 0.",
        "",
        "## Test split of the demo run",
        "",
        *test_split_table(report),
        *answer_sections(report),
        *stratification_markdown(report["stratification"]),
        *(localisation_markdown(report["localisation"]) if report.get("localisation") else []),
        "## Fresh data (80 patients per part, seed 2027, scored by `bonexr predict`)",
        "",
        fresh_markdown(fresh),
        "",
        *(localisation_markdown(fresh["localisation"]) if fresh.get("localisation") else []),
        "## Seed spread",
        "",
        *(seed_table(seeds, report) if seeds else ["Not run.", ""]),
        *precision_markdown(precisions),
    ]
    return "\n".join(lines).replace("(heat maps, test split)", "(heat maps)") + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", type=Path, default=Path("runs/demo"))
    parser.add_argument("--bundle", type=Path, default=Path("models/demo"))
    args = parser.parse_args(argv)
    report = json.loads((args.run / "report" / "report.json").read_text())
    fresh = json.loads(FRESH.read_text())
    seeds = json.loads(SEEDS.read_text()) if SEEDS.is_file() else None
    precisions = read_manifest(args.bundle).precisions
    stamp = provenance()
    page = figures_markdown(report, fresh, seeds, precisions, stamp)
    block = summary_block(report, fresh, seeds, f"commit `{stamp['commit']}`, {stamp['date']}")
    head, _, rest = page.partition("\n## ")
    FIGURES.write_text(f"{head}\n## Summary\n\n" + "\n".join(block) + f"\n\n## {rest}")
    print(f"wrote {FIGURES} with its summary block")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
