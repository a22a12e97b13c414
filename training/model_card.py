"""The per-bundle model card (``MODEL_CARD.md``), generated from the evaluation report.

It says what the bundle is for, what it was trained on and how well it did, with the
intervals that say how sure that is (and, for real MURA data only, the published MURA
figures for context), so nobody has to dig through JSON to decide whether to trust it.
"""

from __future__ import annotations

from typing import Any

from bonexr.bundle import INTENDED_USE, SYNTHETIC_USE
from bonexr.labels import display_name
from training.answers_markdown import answer_sections
from training.baselines import baselines_markdown
from training.config import TrainConfig
from training.evaluate import MURA_V11_PUBLIC
from training.formatting import format_metric as _f
from training.formatting import format_with_ci
from training.report import localisation_markdown, published_comparison
from training.stratify import stratification_markdown

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


FRACATLAS_CITATION = (
    "Abedeen, I., Rahman, M.A., Prottyasha, F.Z. et al. *FracAtlas: A Dataset for Fracture "
    "Classification, Localization and Segmentation of Musculoskeletal Radiographs.* "
    "Scientific Data 10, 521 (2023); data: figshare, doi:10.6084/m9.figshare.22363012; "
    "licence CC BY 4.0"
)

FRACATLAS_FAILURE_MODES = [
    "One source: FracAtlas comes from three hospitals in Bangladesh; other scanners, "
    "exposure and positioning degrade it. Re-validate on your own radiographs.",
    "No patient ids: the split is by image, so two radiographs of one patient may sit on "
    "both sides of it and the test figures may be optimistic.",
    "Orthopaedic hardware is a shortcut in FracAtlas (almost only fractured legs have it): "
    "the figures without hardware images are given beside the others.",
    "It labels fractures only (FracAtlas), not MURA's wider 'abnormal'.",
    "Images showing several parts, and parts it never saw (elbow, forearm, knee, ...), "
    "are meant to be refused by the content gate; the gate was only tried on the "
    "generated out-of-distribution set and on FracAtlas itself.",
]


#: How the thresholds were chosen and how a site re-chooses them (the same for every bundle).
THRESHOLDS_SECTION = [
    "## Thresholds and how to re-choose them per site",
    "",
    "Each part has two operating points, each with an image threshold (`/predict`) "
    "and a study threshold (`/predict/study`), chosen on the validation split: "
    "`triage` (served by default; the highest threshold whose sensitivity's 95% lower "
    "bound reaches the target, or marked insufficient data) and `balanced` (Youden's "
    "J). A request picks one with "
    "`operating_point`. A site that needs another point should score its own labelled "
    "studies and export a bundle with thresholds chosen on them. Thresholds, "
    "calibration and the content gate's limit are part of the bundle version "
    "(`field_hashes`): a `manifest.json` edited by hand is refused by `bonexr verify` "
    "and the service, naming the changed fields.",
    "",
]


def intended_use(config: TrainConfig, data: dict[str, Any]) -> str:
    """What the bundle is for, from what it was trained on and which parts have a model."""
    if config.synthetic:
        return SYNTHETIC_USE
    if data.get("layout") != "fracatlas":
        return INTENDED_USE
    modelled = ", ".join(p.lower() for p in config.body_parts)
    known = [p.lower() for p in config.router_parts if p not in config.body_parts]
    return (
        f"Research and triage aid for fractures on adult {modelled} radiographs like "
        "FracAtlas's (three hospitals in Bangladesh): it flags images that may show a "
        "fracture for earlier review. "
        + (
            f"It recognises {', '.join(known)} radiographs but has no fracture model for "
            "them (answered 'recognised, no model for it'); "
            if known
            else ""
        )
        + "elbows and every other part it never saw are refused. It is not a diagnosis and "
        "not a medical device; every result must be reviewed by a qualified reader."
    )


def _data_lines(config: TrainConfig, data: dict[str, Any]) -> list[str]:
    if data.get("layout") == "fracatlas":
        return [
            f"- Source: FracAtlas ({FRACATLAS_CITATION}); single-part images only (images "
            "of several parts are not indexed).",
            f"- Split: {data.get('split_mode', 'n/a')} mode, seed {data.get('split_seed')}, "
            "**by image**: FracAtlas has no patient ids, so two images of one patient may fall "
            "on both sides of the split; `split.csv` lists the images of each side.",
        ]
    return [
        f"- Source: `{data.get('source', 'n/a')}`"
        + (" (**synthetic**, procedurally drawn; not radiographs)" if config.synthetic else ""),
        f"- Split: {data.get('split_mode', 'n/a')} mode, seed {data.get('split_seed', 'n/a')}, "
        "by patient (no patient in two splits); `split.csv` is in the bundle.",
    ]


def render_model_card(report: dict[str, Any], config: TrainConfig, data: dict[str, Any]) -> str:
    """``MODEL_CARD.md``: ``report`` is the evaluation, ``config`` the run's, ``data`` the
    split's provenance (its layout decides between the FracAtlas and the MURA wording)."""
    parts = list(report["parts"])
    fracatlas = data.get("layout") == "fracatlas"
    lines = [
        *_use_lines(config, data, fracatlas=fracatlas),
        "## Training data",
        "",
        *_data_lines(config, data),
        *_count_lines(config, data, fracatlas=fracatlas),
        "",
        "## Models",
        "",
        _models_line(config),
        "",
        *_results_lines(report, parts, fracatlas=fracatlas),
        *([] if fracatlas else published_comparison(report, parts, config.synthetic)),
        *baselines_markdown(report.get("baselines")),
        *(
            stratification_markdown(report["stratification"])
            if report.get("stratification")
            else []
        ),
        *(localisation_markdown(report["localisation"]) if report.get("localisation") else []),
        *THRESHOLDS_SECTION,
        *answer_sections(report),
        "## Known failure modes",
        "",
        *[f"- {item}" for item in (FRACATLAS_FAILURE_MODES if fracatlas else KNOWN_FAILURE_MODES)],
        "",
    ]
    return "\n".join(lines)


def _use_lines(config: TrainConfig, data: dict[str, Any], *, fracatlas: bool) -> list[str]:
    """The title and the intended-use section: what the answers mean and what is refused."""
    refused = [display_name(p) for p in config.router_parts if p not in config.body_parts]
    return [
        f"# Model card: {config.name}",
        "",
        "## Intended use",
        "",
        intended_use(config, data),
        "",
        "Output: the body part (router) and, for that part, P(abnormal) with a decision "
        "threshold; `fractured` in the API means "
        + ("a fracture (FracAtlas's label)" if fracatlas else "MURA 'abnormal' (any finding)")
        + ", `normal` means none detected. Heat maps show where the evidence lies; whether "
        "they localise is measured below where the data has boxes.",
        "",
        "What it refuses: images the content gate finds unlike its training radiographs "
        "(other parts, photographs, other modalities), with the reason"
        + (
            f"; {', '.join(refused)}: recognised by the router, answered 'no model for it'"
            if refused
            else ""
        )
        + ".",
        "",
    ]


def _count_lines(config: TrainConfig, data: dict[str, Any], *, fracatlas: bool) -> list[str]:
    """Images, studies and patients per split; for real MURA data, MURA's public size too."""
    lines = [
        f"- {split}: {counts['images']} images, {counts['studies']} studies "
        f"({counts['abnormal_studies']} abnormal), {counts['patients']} patients"
        for split, counts in data.get("counts", {}).items()
    ]
    if not config.synthetic and not fracatlas:
        public = MURA_V11_PUBLIC
        lines.append(
            f"- For reference, MURA v1.1's public release: train {public['train']['images']:,} "
            f"images / {public['train']['studies']:,} studies, valid "
            f"{public['valid']['images']:,} / {public['valid']['studies']:,}."
        )
    return lines


def _models_line(config: TrainConfig) -> str:
    """The recipe, backbones, input and training options in one sentence."""
    return (
        f"- Recipe: `{config.recipe}`. Router: {config.router_backbone}; abnormality "
        f"models: {config.part_backbone}"
        + (f", each an ensemble of {config.ensemble} checkpoints" if config.ensemble > 1 else "")
        + f"; input {config.input_size}x{config.input_size} grayscale, "
        f"weights start: {config.weights}; learning-rate schedule {config.lr_schedule}"
        + (", mixed precision" if config.mixed_precision else "")
        + "."
    )


def _results_lines(report: dict[str, Any], parts: list[str], *, fracatlas: bool) -> list[str]:
    """The test-split results: each part at both operating points, the router and the
    two-stage answer pooled over parts."""
    lines = [
        "## Results on the test split",
        "",
        "Two operating points per part: `POST /predict` decides a single image at the "
        "**image** threshold; `POST /predict/study` decides the mean over a study's views "
        "at the **study** threshold. 95% intervals: 1000 patient-bootstrap resamples, seed "
        "0 (exact Clopper-Pearson where every resample agrees); "
        + ("FracAtlas figures by image (no patient ids). " if fracatlas else "")
        + "Every figure is on the test split, which chose nothing.",
        "",
        "| body part | level | AUROC | kappa | sensitivity | specificity | threshold |",
        "|---|---|---|---|---|---|---|",
    ]
    for part in parts:
        for level in ("image", "study"):
            m = report["parts"][part][level]
            cells = " | ".join(
                format_with_ci(m, k) for k in ("auroc", "kappa", "sensitivity", "specificity")
            )
            lines.append(
                f"| {display_name(part) if level == 'image' else ''} | {level} | {cells} | "
                f"{_f(m['threshold'])} |"
            )
    router = report["router"]["image"]
    two_stage = report["two_stage"]["overall"]["pooled"]["study"]
    return [
        *lines,
        "",
        f"Router accuracy (images): {format_with_ci(router, 'accuracy')}. Two-stage as the "
        f"service answers (study routed once, that part's model on every view), all parts "
        f"pooled: study kappa {format_with_ci(two_stage, 'kappa')}, AUROC "
        f"{format_with_ci(two_stage, 'auroc')}.",
        "",
    ]
