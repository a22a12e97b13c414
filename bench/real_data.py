"""The shipped bundle on real radiographs, through the service's own code (``bonexr
predict``): the issue's targets measured where a user meets them.

FracAtlas (Abedeen et al., Scientific Data 10, 521, 2023; CC BY 4.0). The bundle's test
split is recomputed from the data set and the seed its manifest records (the split is
deterministic), and checked against the counts the bundle's report gives. Then:

* single-part test radiographs: the share passing both gates and the router's accuracy
  on them (targets: >= 95% each);
* fracture AUROC, ECE, and sensitivity / specificity at the served (triage) point per
  modelled part, from the calibrated P the service answers, with 95% intervals (by image:
  FracAtlas has no patient ids);
* what must be refused (target >= 90% each): FracAtlas's images of several parts, the
  generated out-of-distribution set, and synthetic drawings of parts the bundle never
  learned (stand-ins: no real elbow, forearm or knee radiograph is at hand).

    python -m bench.real_data --bundle models/fracatlas --data ../shared/datasets/fracatlas

writes ``bench/results/real_data.json`` and prints the table the README quotes.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.figures import provenance
from bonexr.bundle import verify_bundle
from bonexr.labels import ALL_BODY_PARTS, display_name
from bonexr.markdown import replace_between
from service.doors.batch import predict_files
from service.settings import Settings
from training.bootstrap import auroc_interval, proportion_interval
from training.calibrate import expected_calibration_error
from training.dataset import index_dataset
from training.ood_set import ood_evaluation_set
from training.split import split_by_patient
from training.synthetic import generate_synthetic_mura

#: Parts the FracAtlas bundle never learned that the synthetic generator draws.
NEVER_LEARNED = ("ELBOW", "FOREARM", "WRIST", "HUMERUS", "FINGER")


def score(files: list[Path], bundle: Path, out: Path) -> pd.DataFrame:
    """``bonexr predict`` rows for ``files`` (refusals included, as the service gives them)."""
    settings = Settings(models_dir=bundle.parent, bundle=bundle.name, upload_dir=out / "up")
    predict_files(files, out / "scored", settings, study_by="none", progress=False)
    rows = pd.read_csv(out / "scored" / "images.csv", keep_default_na=False)
    errors = pd.read_csv(out / "scored" / "errors.csv", keep_default_na=False)
    return pd.concat([rows, errors.assign(refusal="unreadable")], ignore_index=True)


def _rate(events: int, trials: int) -> dict[str, Any]:
    return {
        "rate": events / trials if trials else None,
        "ci": proportion_interval(events, trials),
        "n": trials,
    }


def test_split(data: Path, manifest_data: dict[str, Any], classes: list[str]) -> pd.DataFrame:
    # as training made it: every part indexed and split, then the router's parts kept
    parts = [p.upper() for p in classes]
    index, _ = index_dataset(data, body_parts=ALL_BODY_PARTS)
    split = split_by_patient(index, seed=int(manifest_data.get("split_seed", 0)))
    expected = manifest_data.get("counts", {}).get("test", {}).get("images")
    test = split[(split["split"] == "test") & split["body_part"].isin(parts)]
    if expected is not None and expected != len(test):
        raise SystemExit(f"recomputed test split has {len(test)} images, the bundle {expected}")
    return test


def evaluate(bundle: Path, data: Path, work: Path) -> dict[str, Any]:
    manifest = verify_bundle(bundle)
    test = test_split(data, manifest.data, list(manifest.router.classes))
    scored = score([Path(p) for p in test["path"]], bundle, work / "test")
    scored = scored.assign(name=scored["path"].map(lambda p: Path(p).name))
    test = test.assign(name=test["path"].map(lambda p: Path(p).name)).merge(
        scored.drop(columns=["path"]), on="name", how="left", validate="one_to_one"
    )
    readable = test[test["refusal"] != "unreadable"]
    passed = readable[~readable["refusal"].astype(str).str.startswith("not_eligible")]
    right = passed[passed["bone_type"].str.upper() == passed["body_part"]]
    out: dict[str, Any] = {
        "bundle": {"name": manifest.name, "version": manifest.version},
        "test_images": len(test),
        "unreadable": int((test["refusal"] == "unreadable").sum()),
        "gates_passed": _rate(len(passed), len(readable)),
        "router_right": _rate(len(right), len(passed)),
        "per_part": {},
    }
    for part in sorted(set(readable["body_part"])):
        rows = readable[readable["body_part"] == part]
        ok = rows[~rows["refusal"].astype(str).str.startswith("not_eligible")]
        entry: dict[str, Any] = {
            "gates_passed": _rate(len(ok), len(rows)),
            "router_right": _rate(int((ok["bone_type"].str.upper() == part).sum()), len(ok)),
        }
        answered = ok[ok["abnormality_probability"].astype(str) != ""]
        answered = answered[answered["bone_type"].str.upper() == part]
        if display_name(part) in manifest.parts and answered["label"].nunique() == 2:
            y = answered["label"].to_numpy().astype(int)
            p = answered["abnormality_probability"].astype(float).to_numpy()
            decided = answered["result"].to_numpy() == "fractured"
            entry.update(
                answered=len(answered),
                fracture=auroc_interval(y, p, answered["patient_id"].to_numpy()),
                ece=expected_calibration_error(y, p),
                sensitivity=_rate(int(decided[y == 1].sum()), int((y == 1).sum())),
                specificity=_rate(int((~decided[y == 0]).sum()), int((y == 0).sum())),
            )
        out["per_part"][display_name(part)] = entry
    out["refused"] = refusals(bundle, data, work)
    return out


def refusals(bundle: Path, data: Path, work: Path) -> dict[str, Any]:
    """The share refused (content gate, metadata, or no model) of what must not be judged."""
    table = pd.read_csv(data / "dataset.csv")
    mixed = [data / "images" / i for i in table.loc[table["body_part"] == "mixed", "image_id"]]
    mixed = [p for p in mixed if p.is_file()]
    ood_dir = work / "ood"
    ood_dir.mkdir(parents=True, exist_ok=True)
    ood_files = []
    for i, item in enumerate(ood_evaluation_set()):
        path = ood_dir / f"{i:03d}_{item.kind}.png"
        item.image.convert("L").save(path)
        ood_files.append(path)
    synthetic = work / "synthetic"
    generate_synthetic_mura(
        synthetic, patients_per_part=8, body_parts=NEVER_LEARNED, seed=2027, progress=False
    )
    drawn = sorted(synthetic.rglob("*.png"))
    out = {}
    for name, files in (
        ("fracatlas_mixed", mixed),
        ("ood_set", ood_files),
        ("drawn_unlearned_parts", drawn),
    ):
        if not files:  # e.g. a FracAtlas copy without images of several parts
            continue
        rows = score(files, bundle, work / name)
        refused = rows["refusal"].astype(str).str.len() > 0
        out[name] = _rate(int(refused.sum()), len(rows))
        out[name]["by_reason"] = rows.loc[refused, "refusal"].value_counts().to_dict()
    return out


def markdown(result: dict[str, Any]) -> str:
    def pct(entry: dict[str, Any]) -> str:
        if entry.get("rate") is None:
            return "n/a"
        low, high = entry["ci"]
        return f"{entry['rate']:.1%} [{low:.1%}, {high:.1%}] (n={entry['n']})"

    lines = [
        f"Bundle `{result['bundle']['name']}` version `{result['bundle']['version']}` on its "
        f"FracAtlas test split ({result['test_images']} images, {result['unreadable']} "
        "unreadable at the source), through `bonexr predict`:",
        "",
        f"- passed both gates: {pct(result['gates_passed'])}; router right on those: "
        f"{pct(result['router_right'])}",
        "",
        "| part | passed gates | router right | fracture AUROC | ECE | sensitivity (triage) "
        "| specificity |",
        "|---|---|---|---|---|---|---|",
    ]
    for part, e in result["per_part"].items():
        fracture = e.get("fracture")
        auroc = "no model"
        if fracture:
            low, high = fracture["auroc_ci"]
            auroc = f"{fracture['auroc']:.3f} [{low:.2f}, {high:.2f}]"
        ece = f"{e['ece']:.3f}" if "ece" in e else "–"
        sens = pct(e["sensitivity"]) if "sensitivity" in e else "–"
        spec = pct(e["specificity"]) if "specificity" in e else "–"
        cells = [pct(e["gates_passed"]), pct(e["router_right"]), auroc, ece, sens, spec]
        lines.append(f"| {part} | " + " | ".join(cells) + " |")
    lines += ["", "| must be refused | refused | by reason |", "|---|---|---|"]
    for name, e in result["refused"].items():
        lines.append(f"| {name} | {pct(e)} | {e['by_reason']} |")
    return "\n".join(lines)


COMMAND = "python -m bench.real_data --bundle models/fracatlas --data ../shared/datasets/fracatlas"
BEGIN, END = "<!-- real-figures:begin -->", "<!-- real-figures:end -->"
CITATION = (
    "FracAtlas: Abedeen, Rahman, Prottyasha et al., *Scientific Data* 10, 521 (2023), CC BY 4.0"
)


def report_table(bundle: Path) -> list[str]:
    """The bundle's own test-split figures (its training report) with the baselines."""
    report = json.loads((bundle / "report.json").read_text())
    lines = [
        "| part | test images (fractured) | image AUROC | strongest no-fracture baseline | "
        "AUROC without hardware images |",
        "|---|---|---|---|---|",
    ]
    for part, entry in report.get("baselines", {}).get("parts", {}).items():
        if "model" not in entry:
            continue
        model, strongest = entry["model"], entry["baselines"][entry["strongest"]]
        clean = entry.get("model_without_hardware") or {}

        def auroc(e: dict[str, Any]) -> str:
            ci = e.get("auroc_ci")
            return (
                "n/a" if e.get("auroc") is None else f"{e['auroc']:.3f} [{ci[0]:.2f}, {ci[1]:.2f}]"
            )

        lines.append(
            f"| {part} | {entry['n']} ({entry['n_abnormal']}) | {auroc(model)} | "
            f"{entry['strongest']}: {auroc(strongest)} | {auroc(clean) if clean else 'n/a'} |"
        )
    return lines


def readme_block(result: dict[str, Any], bundle: Path) -> list[str]:
    stamp = provenance()
    return [
        f"Measured {stamp['date']} at commit `{stamp['commit']}` on {stamp['machine']} by "
        f"`{COMMAND} --readme`; {CITATION}. 95% intervals: exact Clopper-Pearson for rates, "
        "bootstrap for AUROC, **by image** (FracAtlas has no patient ids, so two images of "
        "one patient may sit on both sides of the split).",
        "",
        markdown(result),
        "",
        "From the bundle's own evaluation report (`models/fracatlas/report.md`, the same "
        "test split):",
        "",
        *report_table(bundle),
        "",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=Path("models/fracatlas"))
    parser.add_argument("--data", type=Path, default=Path("../shared/datasets/fracatlas"))
    parser.add_argument("--readme", action="store_true", help="also write the README block")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        result = evaluate(args.bundle, args.data, Path(work))
    result["parts_known"] = [p for p in ALL_BODY_PARTS]
    results = Path("bench/results")
    results.mkdir(parents=True, exist_ok=True)
    (results / "real_data.json").write_text(json.dumps(result, indent=2, default=_plain))
    print(markdown(result))
    if args.readme:
        readme = Path("README.md")
        block = readme_block(result, args.bundle)
        body = "\n".join(block)
        readme.write_text(replace_between(readme.read_text(), BEGIN, END, body))
        print("wrote the README's real-figures block")


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    return list(value)


if __name__ == "__main__":
    main()
