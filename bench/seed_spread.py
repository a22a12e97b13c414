"""Training variance alone: the demo's part models retrained at several seeds on one split.

The split (and so the test set) is held fixed, copied from a finished run; only the
training seed (initial weights, input order, augmentation) changes. The router is copied
from that run too: it is not what the spread is about, and the study answers of every
seed are then routed the same way. Each seed is evaluated exactly as ``bonexr train``
evaluates (thresholds and calibration on validation, the pointing game with baselines).

Test-set sampling variance is the other half of the uncertainty; the evaluation's study
bootstrap intervals measure it (the ``ci`` columns of the base run), so the two are
reported side by side, never mixed.

    python -m bench.seed_spread --run runs/demo --seeds 0,1,2,3,4

Writes ``bench/results/seed_spread.json``; ``bonexr-figures`` (``make figures``) renders it.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import write_result
from bonexr.labels import display_name
from training.config import DEMO_DATA, load_config
from training.pipeline import BadImageLog
from training.run import RunPaths, evaluate_run, prepare_run, train_all, with_router_parts
from training.split import read_split, write_split

RESULT = Path("bench/results/seed_spread.json")
#: The figures collected per seed (study level, true part; localisation overall).
FIGURES = ("study_auroc", "study_kappa", "study_sensitivity", "study_specificity")


def _figures(report: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"parts": {}}
    for part, levels in report["parts"].items():
        study = levels["study"]
        out["parts"][display_name(part)] = {
            f"study_{key}": study[key] for key in ("auroc", "kappa", "sensitivity", "specificity")
        }
    out["router_accuracy"] = report["router"]["image"]["accuracy"]
    located = report.get("localisation") or {}
    if located.get("overall"):
        out["pointing_game"] = {
            "heatmap": located["overall"]["heatmap"],
            "brightest": located["overall"].get("brightest"),
        }
    return out


def summarise(per_seed: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Mean and range over seeds of every figure."""

    def stats(values: list[float]) -> dict[str, float]:
        v = np.asarray([x for x in values if x is not None], dtype=float)
        return {"mean": float(v.mean()), "min": float(v.min()), "max": float(v.max()), "n": len(v)}

    seeds = list(per_seed.values())
    parts = seeds[0]["parts"]
    summary: dict[str, Any] = {
        "parts": {
            part: {key: stats([s["parts"][part][key] for s in seeds]) for key in FIGURES}
            for part in parts
        }
    }
    if all("pointing_game" in s for s in seeds):
        summary["pointing_game"] = {
            key: stats([s["pointing_game"][key] for s in seeds]) for key in ("heatmap", "brightest")
        }
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", type=Path, default=Path("runs/demo"), help="finished base run")
    parser.add_argument("--data", type=Path, default=DEMO_DATA)
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--work", type=Path, default=Path("runs/seed-spread"))
    args = parser.parse_args(argv)
    base = RunPaths(args.run)
    split = read_split(base.split, args.data)
    config = with_router_parts(load_config(base.config), split)
    per_seed: dict[int, dict[str, Any]] = {}
    started = time.time()
    for seed in (int(s) for s in args.seeds.split(",")):
        seeded = type(config).from_dict({**config.to_dict(), "seed": seed, "progress": False})
        paths = prepare_run(args.work / f"seed{seed}", seeded, resume=True)
        if not paths.split.is_file():
            write_split(split, paths.split)
        if not (paths.root / "router").is_dir():
            shutil.copytree(base.root / "router", paths.root / "router")
        bad_images = BadImageLog()
        parts = [n for n in seeded.model_names() if n != "router"]
        train_all(split, seeded, paths, only=parts, bad_images=bad_images)
        report = evaluate_run(split, seeded, paths, bad_images, args.data).report
        per_seed[seed] = _figures(report)
        print(f"seed {seed}: {per_seed[seed]}", flush=True)
        write_result(RESULT.with_suffix(".partial.json"), {"seeds": per_seed})
    result = {
        "base_run": str(args.run),
        "split": "fixed (the base run's split.csv); only the training seed varies",
        "router": "copied from the base run",
        "seeds": per_seed,
        "summary": summarise(per_seed),
        "seconds": round(time.time() - started, 1),
    }
    write_result(RESULT, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
