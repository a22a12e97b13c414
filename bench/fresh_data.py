"""Does a bundle's answer mean what it says on data it never saw? Fresh in-distribution data.

Generates the project's synthetic MURA data at a seed no demo run uses, scores every image
and study with ``bonexr predict`` (the service's own engine and answer rules, in process) at
both operating points, and reports per part, with study-bootstrap 95% intervals:

* image and study expected calibration error of the served (calibrated) P;
* AUROC, and sensitivity / specificity at the served thresholds;
* the share of views the content gate refused (in distribution: should be ~1%);
* the pointing game of the bundle's ONNX heat maps (what ``/heatmap`` serves) on every
  abnormal view with a drawn box, beside the centre, random-point, training-mean and
  brightness baselines, overall, per part and per defect type, and the verdict against
  :data:`training.localisation.TARGET`.

Usage (the README's figures)::

    python -m bench.fresh_data --bundle models/demo --patients 80 --seed 2027

Results: ``bench/results/fresh_data.json`` and a Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import csv
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score

from bench.common import write_result
from bonexr.bundle import read_manifest
from bonexr.cli import main as bonexr_main
from bonexr.heatmap import to_image_grid
from bonexr.imaging import decode_image, model_input, prepare_pixels
from bonexr.labels import display_name
from bonexr.runtime import OnnxRuntimeSession
from training.bootstrap import bootstrap_ci
from training.calibrate import expected_calibration_error, rates
from training.config import DEMO_DATA
from training.dataset import index_dataset, read_boxes
from training.formatting import format_with_ci
from training.localisation import (
    Pointed,
    judge,
    localisation_report,
    mean_box_centres,
)
from training.report import localisation_markdown
from training.split import read_split
from training.synthetic import generate_synthetic_mura

PARTS = ("ELBOW", "HAND", "SHOULDER")
STUDY_RE = re.compile(
    r"XR_(?P<part>[A-Z]+)/(?P<patient>patient\d+)/(?P<study>study\d+)_(?P<label>positive|negative)"
)


def _rows(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _study_of(path: str) -> tuple[str, str, int] | None:
    """(part, study key, label) from a MURA path."""
    found = STUDY_RE.search(path.replace("\\", "/"))
    if found is None:
        return None
    key = f"{found['part']}/{found['patient']}/{found['study']}"
    return found["part"], key, int(found["label"] == "positive")


def _labelled(
    rows: list[dict[str, str]], column: str, part: str
) -> list[tuple[dict[str, str], tuple[str, str, int]]]:
    """The rows of ``part`` with their (part, study, label) from ``column``'s path."""
    found = [(r, _study_of(r[column] + "/")) for r in rows]
    return [(r, s) for r, s in found if s is not None and s[0] == part]


def _part_of(path: str) -> str | None:
    found = _study_of(path + "/")
    return None if found is None else found[0]


def _auroc(y: np.ndarray, p: np.ndarray, rows: np.ndarray | None = None) -> float | None:
    y, p = (y, p) if rows is None else (y[rows], p[rows])
    return float(roc_auc_score(y, p)) if len(np.unique(y)) == 2 else None


def level_metrics(
    y: np.ndarray, p: np.ndarray, t: np.ndarray, groups: np.ndarray, raw: np.ndarray
) -> dict:
    """ECE (of the served P, and of the raw model output behind it: the same-run
    comparison), AUROC, sensitivity and specificity at each row's served threshold, with
    intervals (resampling ``groups``)."""
    decided = (p >= t).astype(float)
    sens, spec = rates(y, decided, 0.5)
    return {
        "n": len(y),
        "n_abnormal": int(y.sum()),
        "prevalence": float(y.mean()),
        "mean_p": float(p.mean()),
        "ece": expected_calibration_error(y, p),
        "ece_ci": bootstrap_ci(groups, lambda r: expected_calibration_error(y[r], p[r])),
        "ece_raw": expected_calibration_error(y, raw),
        "ece_raw_ci": bootstrap_ci(groups, lambda r: expected_calibration_error(y[r], raw[r])),
        "auroc": _auroc(y, p),
        "auroc_ci": bootstrap_ci(groups, lambda r: _auroc(y, p, r)),
        "sensitivity": sens,
        "sensitivity_ci": bootstrap_ci(groups, lambda r: rates(y[r], decided[r], 0.5)[0]),
        "specificity": spec,
        "specificity_ci": bootstrap_ci(groups, lambda r: rates(y[r], decided[r], 0.5)[1]),
    }


def score(data: Path, bundle: Path, point: str, out: Path) -> dict[str, Any]:
    """``bonexr predict`` over ``data`` at ``point``; per-part metrics of its CSVs."""
    code = bonexr_main(["predict", str(data), "--out", str(out), "--models-dir",
                        str(bundle.parent), "--bundle", str(bundle), "--operating-point",
                        point, "--quiet"])  # fmt: skip
    if code != 0:
        raise SystemExit(f"bonexr predict failed ({code})")
    images, studies = _rows(out / "images.csv"), _rows(out / "studies.csv")
    calibrations = {name: spec.calibration for name, spec in read_manifest(bundle).parts.items()}
    result: dict[str, Any] = {}
    for part in PARTS:
        views = _labelled(images, "path", part)
        refused = [r for r, _ in views if r["refusal"].startswith("not_eligible:content")]
        entry: dict[str, Any] = {
            "views": len(views),
            "content_refused": len(refused),
            "content_refused_rate": len(refused) / max(len(views), 1),
        }
        for level, rows in (("image", views), ("study", _labelled(studies, "study", part))):
            answered = [(r, s) for r, s in rows if r["result"]]
            if answered:
                served = np.array([float(r["abnormality_probability"]) for r, _ in answered])
                entry[level] = level_metrics(
                    np.array([s[2] for _, s in answered]),
                    served,
                    np.array([float(r["threshold"]) for r, _ in answered]),
                    np.array([s[1] for _, s in answered]),
                    np.array(
                        [
                            calibrations[r["bone_type"]][level].raw_for(v)
                            for (r, _), v in zip(answered, served, strict=True)
                        ]
                    ),
                )
        entry["studies_refused"] = sum(
            1 for r in studies if r["refusal"] and _part_of(r["study"]) == part
        )
        result[part] = entry
    return result


def localise(data: Path, bundle: Path, train_root: Path | None) -> dict[str, Any]:
    """The pointing game of the bundle's served (ONNX) maps on the fresh data."""
    manifest = read_manifest(bundle)
    boxes = read_boxes(data)
    if boxes is None:
        return {}
    index, _ = index_dataset(data, body_parts=list(PARTS))
    split_csv = bundle / "split.csv"
    means: dict[str, Any] = {}
    if train_root is not None and train_root.is_dir() and split_csv.is_file():
        train = read_split(split_csv, train_root)
        means = mean_box_centres(
            train[train["split"] == "train"], read_boxes(train_root), train_root
        )
    size = manifest.input.size
    results: list[Pointed] = []
    located = index[index["label"] == 1].merge(boxes, on="rel_path", how="inner")
    for part in PARTS:
        spec = manifest.parts[display_name(part)]
        if spec.heatmap is None:
            continue
        session = OnnxRuntimeSession(bundle / str(spec.onnx))
        for row in located[located["body_part"] == part].to_dict("records"):
            image = decode_image((data / str(row["rel_path"])).read_bytes())
            cam = session.run(model_input(prepare_pixels(image, size)))[spec.heatmap.output][0]
            heat = to_image_grid(cam, image.width, image.height, size)
            box = (float(row["x0"]), float(row["y0"]), float(row["x1"]), float(row["y1"]))
            guess, hit, baselines = judge(heat, image, box, means.get(part))
            results.append(
                Pointed(str(row["rel_path"]), part, str(row["study_id"]), str(row["defect"]),
                        np.zeros((1, 1)), guess, box, hit, baselines)
            )  # fmt: skip
    return localisation_report(results, with_training_mean=bool(means))


def markdown(results: dict[str, Any]) -> str:
    lines = [
        "| point | body part | level | n (abnormal) | ECE raw | ECE served | AUROC | sensitivity "
        "| specificity | content-refused views |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for point, parts in results["points"].items():
        for part, entry in parts.items():
            for level in ("image", "study"):
                m = entry.get(level)
                if m is None:
                    continue
                refused = (
                    f"{entry['content_refused']} / {entry['views']}" if level == "image" else ""
                )
                lines.append(
                    f"| {point} | {display_name(part)} | {level} | {m['n']} ({m['n_abnormal']}) | "
                    f"{format_with_ci(m, 'ece_raw')} | "
                    f"{format_with_ci(m, 'ece')} | {format_with_ci(m, 'auroc')} | "
                    f"{format_with_ci(m, 'sensitivity')} | "
                    f"{format_with_ci(m, 'specificity')} | {refused} |"
                )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", type=Path, default=Path("models/demo"))
    parser.add_argument("--patients", type=int, default=80, help="patients per part")
    parser.add_argument("--seed", type=int, default=2027, help="an unused data seed")
    parser.add_argument("--points", default="triage,balanced")
    parser.add_argument(
        "--train-data", type=Path, default=DEMO_DATA, help="the bundle's data (training mean)"
    )
    parser.add_argument("--result", type=Path, default=Path("bench/results/fresh_data.json"))
    args = parser.parse_args(argv)
    bundle = args.bundle.resolve()
    with tempfile.TemporaryDirectory(prefix="bonexr-fresh-") as work:
        data = Path(work) / "MURA-v1.1"
        print(f"generating fresh synthetic data: {args.patients} patients/part, seed {args.seed}")
        generate_synthetic_mura(
            data, patients_per_part=args.patients, seed=args.seed, body_parts=PARTS
        )
        points = {
            point: score(data, bundle, point, Path(work) / f"out-{point}")
            for point in args.points.split(",")
        }
        localisation = localise(data, bundle, args.train_data)
    results = {
        "bundle": str(args.bundle),
        "patients_per_part": args.patients,
        "seed": args.seed,
        "points": points,
        "localisation": localisation,
    }
    write_result(args.result, results)
    print(markdown(results))
    if localisation:
        print("\n".join(localisation_markdown(localisation)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
