"""The per-bundle model card (``MODEL_CARD.md``), generated from the evaluation report.

It says what the bundle is for, what it was trained on and how well it did, next to the
published MURA figures, so nobody has to dig through JSON to decide whether to trust it.
"""

from __future__ import annotations

from typing import Any

from bonexr.bundle import INTENDED_USE, SYNTHETIC_USE
from bonexr.labels import display_name
from training.answers_markdown import answer_sections
from training.config import TrainConfig
from training.formatting import format_metric as _f

KNOWN_FAILURE_MODES = [
    "Images unlike anything in training are refused by the content gate, but it was only "
    "tried on generated stand-ins (photos, drawings, other modalities, blank and noise): a "
    "knee or chest film close enough to the training views can still pass it and be routed "
    "to one of the router's parts; watch the router-confidence warning. Parts it knows "
    "without an abnormality model (e.g. wrist in the demo) are answered 422 with the part "
    "named, never another part's verdict.",
    "Children and adolescents (open growth plates) are rare in MURA and look 'abnormal' to "
    "models trained on adults.",
    "MURA 'abnormal' includes orthopaedic hardware, degenerative change and old injuries, so "
    "a healed fracture with a plate is 'fractured' here.",
    "Images very unlike MURA (DICOM windowing, photographs of films, heavy annotations, "
    "other scanners) degrade accuracy; re-validate on your own data.",
    "MURA labels come from radiology reports and carry label noise; the MURA paper's "
    "radiologists themselves reached only moderate agreement on some parts.",
]


def render_model_card(report: dict[str, Any], config: TrainConfig, data: dict[str, Any]) -> str:
    parts = list(report["parts"])
    refs = report["reference"]["kappa"]
    lines = [
        f"# Model card: {config.name}",
        "",
        "## Intended use",
        "",
        SYNTHETIC_USE if config.synthetic else INTENDED_USE,
        "",
        "Output: the body part (router) and, for that part, P(abnormal) with a decision "
        "threshold; `fractured` in the API means MURA 'abnormal' (any finding), `normal` "
        "means no abnormality detected. It does not localise findings.",
        "",
        "## Training data",
        "",
        f"- Source: `{data.get('source', 'n/a')}`"
        + (" (**synthetic**, procedurally drawn; not radiographs)" if config.synthetic else ""),
        f"- Split: {data.get('split_mode', 'n/a')} mode, seed {data.get('split_seed', 'n/a')}, "
        "by patient (no patient in two splits); `split.csv` is in the bundle.",
    ]
    for split, counts in data.get("counts", {}).items():
        lines.append(
            f"- {split}: {counts['images']} images, {counts['studies']} studies "
            f"({counts['abnormal_studies']} abnormal), {counts['patients']} patients"
        )
    lines += [
        "",
        "## Models",
        "",
        f"- Router: {config.router_backbone}; abnormality models: {config.part_backbone}; "
        f"input {config.input_size}x{config.input_size} grayscale, "
        f"weights start: {config.weights}.",
        "",
        "## Results on the test split",
        "",
        "Two operating points per part: `POST /predict` decides a single image at the "
        "**image** threshold; `POST /predict/study` decides the mean over a study's views "
        "at the **study** threshold. Study-level kappa is the figure comparable with MURA.",
        "",
        "| body part | level | AUROC | kappa | sensitivity | specificity | threshold | "
        + " | ".join(f"kappa, {name}" for name in refs)
        + " |",
        "|---" * (7 + len(refs)) + "|",
    ]
    for part in parts:
        for level in ("image", "study"):
            m = report["parts"][part][level]
            ref_values = " | ".join(
                _f(r.get(part)) if level == "study" else "" for r in refs.values()
            )
            lines.append(
                f"| {display_name(part) if level == 'image' else ''} | {level} | "
                f"{_f(m['auroc'])} | {_f(m['kappa'])} | {_f(m['sensitivity'])} | "
                f"{_f(m['specificity'])} | {_f(m['threshold'])} | {ref_values} |"
            )
    router = report["router"]["image"]["accuracy"]
    two_stage = report["two_stage"]["overall"]["pooled"]["study"]
    lines += [
        "",
        f"Router accuracy (images): {_f(router)}. Two-stage as the service answers "
        f"(study routed once, that part's model on every view), all parts pooled: study "
        f"kappa {_f(two_stage['kappa'])}, AUROC {_f(two_stage['auroc'])}. For context only: "
        "the MURA paper's DenseNet169 ensemble reached overall AUROC 0.929 on MURA's hidden "
        "test set.",
        "",
        "## Thresholds and how to re-choose them per site",
        "",
        "Each part has two operating points, each with an image threshold (`/predict`) "
        "and a study threshold (`/predict/study`), chosen on the validation split: "
        "`triage` (served by default; the highest threshold reaching the target "
        "sensitivity) and `balanced` (Youden's J). A request picks one with "
        "`operating_point`. A site that needs another point should score its own labelled "
        "studies and export a bundle with thresholds chosen on them. Thresholds, "
        "calibration and the content gate's limit are part of the bundle version "
        "(`field_hashes`): a `manifest.json` edited by hand is refused by `bonexr verify` "
        "and the service, naming the changed fields.",
        "",
        *answer_sections(report),
        "## Known failure modes",
        "",
        *[f"- {item}" for item in KNOWN_FAILURE_MODES],
        "",
    ]
    return "\n".join(lines)
