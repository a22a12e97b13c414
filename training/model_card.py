"""The per-bundle model card (``MODEL_CARD.md``), generated from the evaluation report.

It says what the bundle is for, what it was trained on and how well it did, next to the
published MURA figures, so nobody has to dig through JSON to decide whether to trust it.
"""

from __future__ import annotations

from typing import Any

from bonexr.bundle import INTENDED_USE, SYNTHETIC_USE
from bonexr.labels import display_name
from training.config import TrainConfig
from training.formatting import format_metric as _f

KNOWN_FAILURE_MODES = [
    "Body parts the router never learned (e.g. knee, chest) are still routed to one of its "
    "parts; watch the router-confidence warning. Parts it knows without an abnormality model "
    "(e.g. wrist in the demo) are answered 422 with the part named, never another part's "
    "verdict.",
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
        "Each part's two thresholds maximise Youden's J (sensitivity + specificity - 1) on "
        "the validation split, one over images (`parts.<Part>.image_threshold`, used by "
        "`/predict`), one over study means (`parts.<Part>.threshold`, used by "
        "`/predict/study`). A site that wants a different operating point (e.g. high "
        "sensitivity for triage) should score its own labelled studies and pick the "
        "thresholds from their ROC curves. The thresholds are part of the bundle version "
        "(`field_hashes`): a `manifest.json` edited by hand is refused by `bonexr verify` "
        "and the service, naming the changed fields, so a site's operating point must come "
        "from a new export, never a silent edit under the old version.",
        "",
        '## What "not eligible" means',
        "",
        "The models were trained on projection radiographs of the upper limb only. An image "
        "whose DICOM header says it is something else (Modality other than CR or DX, such "
        "as CT, MR, US or MG; BodyPartExamined naming a non-upper-limb part such as CHEST, "
        'KNEE or SKULL) is refused with `422` and `code: "not_eligible"`, the reason '
        "and the value that decided: no verdict on it would mean anything. "
        "`BONEXR_ELIGIBILITY=warn` answers such images with the reason as a warning "
        "instead. PNG, JPEG and WebP files carry no such tags and pass this gate: the "
        "model cannot yet tell from the pixels that an image is outside what it learned "
        "(a content gate is planned), so a photograph or a chest film sent as PNG still "
        "gets a verdict that means nothing.",
        "",
        "## Known failure modes",
        "",
        *[f"- {item}" for item in KNOWN_FAILURE_MODES],
        "",
    ]
    return "\n".join(lines)
