"""Reduced precision is an accuracy decision, made without looking at the test labels.

Choosing which precision to serve is model selection, so it must not use the test split.
At export every reduced precision the serving CPU could use is compared with ONNX Runtime
fp32 (the reference, itself checked against Keras):

* **bf16**: the bundle's ONNX files run by OpenVINO with the bf16 inference hint (AMX /
  AVX-512 BF16 on this class of CPU);
* **int8**: OpenVINO IR files made by NNCF post-training quantisation
  (:mod:`training.quantize`, calibrated on training images), run with fp32 for the layers
  left unquantised.

The criteria, fixed before anything is measured:

1. **Flips, label-free, on a large pool** (the training and validation images, up to
   :data:`POOL_LIMIT` sampled by study). Two-stage, the way the service answers: the
   router's choice, then the chosen part's model at its threshold; the content gate's
   accept/refuse counts too. At image decisions and at study decisions (routed once,
   mean over views, study threshold). The exact one-sided 95% Clopper-Pearson upper bound
   of each flip rate must be <= :data:`FLIP_BOUND` (1%): "0 flips in 286" is not enough
   evidence on its own, "0 in 4000" is.
2. **Non-inferiority on validation**: per part, the study AUROC's paired-bootstrap 95%
   interval of (reduced - fp32) must lie above ``-`` :data:`NONINFERIORITY_MARGIN`.

Only then is a precision allowed. Afterwards, and only for the record, each precision is
scored once on the test split beside fp32 (``measured["test"]``): the headline figure of
the model card and ``/model``. The service checks at load that the precision stays within
the export's own measurement plus :data:`LOAD_MARGIN` of fp32 on the fixed reference
inputs (:func:`load_tolerance`).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from bonexr.bundle import PrecisionSpec
from bonexr.contract import reference_inputs
from bonexr.imaging import model_input
from bonexr.labels import ROUTER, display_name, model_key
from bonexr.runtime import (
    CPU_PROVIDERS,
    REDUCED,
    OnnxRuntimeSession,
    OpenVinoSession,
    openvino_capabilities,
)
from training.bootstrap import clopper_pearson_upper, fast_auroc, paired_difference
from training.formatting import format_metric

#: The upper 95% Clopper-Pearson bound a two-stage flip rate may reach (image and study).
FLIP_BOUND = 0.01
#: Largest tolerated drop of a study AUROC on validation (paired-bootstrap lower bound).
NONINFERIORITY_MARGIN = 0.01
#: Most images in the label-free pool (sampled by study, seeded); validation is kept whole.
POOL_LIMIT = 4000
#: Added to the export's own reference measurement for the load-time check: another CPU's
#: reduced-precision kernels may round differently, by much less than this.
LOAD_MARGIN = 0.01

Model = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class PrecisionTestSet:
    """Prepared images with what the gate (the label-free pool, the test record) or the
    quantiser (training images) needs: true part, label, study and split of each."""

    pixels: np.ndarray  # (N, S, S) uint8
    parts: list[str]  # true body part, canonical
    labels: np.ndarray  # 0/1
    studies: list[str]
    splits: list[str] = field(default_factory=list)  # train / validation / test per image

    def of_part(self, part: str) -> np.ndarray:
        """Row indices of one body part's images."""
        return np.flatnonzero(np.asarray(self.parts, dtype=object) == part)

    def in_split(self, split: str) -> np.ndarray:
        """Row indices of one split's images (all rows when splits were not recorded)."""
        if not self.splits:
            return np.arange(len(self.parts))
        return np.flatnonzero(np.asarray(self.splits, dtype=object) == split)


def _run(session: Model, x: np.ndarray, batch: int = 32) -> np.ndarray:
    """``session`` over ``x`` in batches; a progress bar on a terminal (thousands of pool
    images per model and precision at MURA scale), none in logs."""
    starts = range(0, len(x), batch)
    shown = tqdm(starts, desc="precision gate", unit="batch", leave=False,
                 disable=not sys.stderr.isatty() or len(starts) < 20)  # fmt: skip
    outs = [session(x[i : i + batch]) for i in shown]
    return np.concatenate(outs) if outs else np.zeros((0, 1))


def _ort(path: Path, output: int = 0) -> Model:
    """The fp32 reference, opened as the service opens it (:mod:`bonexr.runtime`), on the
    GPU when ONNX Runtime has CUDA (a GPU training host: the gate's fp32 pass is its
    largest cost), else on the CPU."""
    session = OnnxRuntimeSession(path, providers=reference_providers())
    return lambda x: session.run(x)[output]


def reference_providers() -> tuple[str, ...]:
    """ONNX Runtime providers of the fp32 reference: CUDA first where available."""
    import onnxruntime as ort

    cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    return ("CUDAExecutionProvider", *CPU_PROVIDERS) if cuda else CPU_PROVIDERS


def _openvino(path: Path, precision: str, output: int = 0) -> Model:
    """``precision`` in OpenVINO, opened as the service opens it (hint, latency mode)."""
    session = OpenVinoSession(path, precision=precision)
    return lambda x: session.run(x)[output]


def unavailable(precision: str) -> str | None:
    """Why ``precision`` cannot be measured on this machine, or None."""
    capabilities = openvino_capabilities()
    if capabilities is None:
        return "OpenVINO is not installed where the bundle was exported"
    if dict(REDUCED)[precision] not in capabilities:
        return f"the exporting CPU has no {precision} support"
    return None


@dataclass(frozen=True)
class Outputs:
    """Every model's outputs on a set of images at one precision."""

    router: np.ndarray  # (N, classes) probabilities
    parts: dict[str, np.ndarray]  # model name -> (N,) P(abnormal)
    content: np.ndarray | None  # (N,) content score, when the router has a gate


def _outputs(
    staging: Path,
    onnx_files: dict[str, str],
    files: dict[str, str],
    precision: str,
    x: np.ndarray,
    with_content: bool,
) -> Outputs:
    def session(name: str, output: int = 0) -> Model:
        onnx = onnx_files[name]
        if precision == "fp32":
            return _ort(staging / onnx, output)
        return _openvino(staging / files.get(name, onnx), precision, output)

    return Outputs(
        router=_run(session(ROUTER), x),
        parts={n: _run(session(n), x)[:, 0] for n in onnx_files if n != ROUTER},
        content=_run(session(ROUTER, 1), x)[:, 0] if with_content else None,
    )


def two_stage_decisions(
    out: Outputs,
    router_classes: list[str],
    thresholds: dict[str, dict[str, float]],
    studies: np.ndarray,
    content_limit: float | None,
) -> dict[str, np.ndarray]:
    """Each image and each study answered as the service answers them.

    Images: routed part (argmax), then that part's model at its image threshold; refused
    (-1) by the content gate. Studies: routed once (summed router probabilities, ties to
    the first class as :func:`bonexr.study.route_study`), mean of that part's model over
    the views at the study threshold. A part without a model answers 422: decision -2.
    """
    classes = np.asarray(router_classes, dtype=object)
    routed = classes[out.router.argmax(axis=1)]
    image = np.full(len(routed), -2, dtype=int)
    for part, cut in thresholds.items():
        rows = routed == part
        image[rows] = out.parts[model_key(part)][rows] >= cut["image"]
    if content_limit is not None and out.content is not None:
        image[out.content > content_limit] = -1
    unique, inverse = np.unique(studies, return_inverse=True)
    totals = np.zeros((len(unique), out.router.shape[1]))
    np.add.at(totals, inverse, out.router)
    study_part = classes[totals.argmax(axis=1)]
    study = np.full(len(unique), -2, dtype=int)
    counts = np.bincount(inverse, minlength=len(unique))
    for part, cut in thresholds.items():
        sums = np.bincount(inverse, weights=out.parts[model_key(part)], minlength=len(unique))
        rows = study_part == part
        study[rows] = (sums / counts)[rows] >= cut["study"]
    return {
        "image_part": routed,
        "image": image,
        "study_part": study_part,
        "study": study,
    }


def flip_rates(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> dict[str, Any]:
    """Flipped image and study answers between two precisions, with the Clopper-Pearson
    upper bound of each rate."""
    out: dict[str, Any] = {}
    for level in ("image", "study"):
        flipped = (a[f"{level}_part"] != b[f"{level}_part"]) | (a[level] != b[level])
        n, k = len(flipped), int(flipped.sum())
        out[level] = {
            "decisions": n,
            "flipped": k,
            "rate": k / n if n else None,
            "upper_95": clopper_pearson_upper(k, n),
        }
    return out


def study_auroc_difference(
    labels: np.ndarray, studies: np.ndarray, reference: np.ndarray, reduced: np.ndarray
) -> dict[str, Any]:
    """Study AUROC at fp32 and reduced, and the paired-bootstrap interval of the change
    (the same resampled studies for both)."""
    frame = pd.DataFrame({"study": studies, "label": labels, "a": reference, "b": reduced})
    grouped = frame.groupby("study").agg({"label": "first", "a": "mean", "b": "mean"})
    y, a, b = (grouped[c].to_numpy() for c in ("label", "a", "b"))
    keys = grouped.index.to_numpy()
    change = paired_difference(
        keys, lambda r: fast_auroc(y[r], b[r]), lambda r: fast_auroc(y[r], a[r])
    )
    return {
        "studies": len(y),
        "study_auroc_fp32": fast_auroc(y, a),
        "study_auroc_reduced": fast_auroc(y, b),
        "change": change["value"],
        "change_ci": change["ci"],
    }


def test_figures(
    test: PrecisionTestSet, fp32: Outputs, reduced: Outputs, parts: list[str]
) -> dict[str, Any]:
    """The study AUROC per part at fp32 and at the precision on the test split (true part),
    with the paired interval of the change: recorded after the verdict, never used by it."""
    studies, labels = np.asarray(test.studies), np.asarray(test.labels)
    out: dict[str, Any] = {}
    for part in parts:
        rows, key = test.of_part(part), model_key(part)
        if rows.size:
            out[display_name(part)] = study_auroc_difference(
                labels[rows], studies[rows], fp32.parts[key][rows], reduced.parts[key][rows]
            )
    return out


def measure_precision(
    precision: str,
    staging: Path,
    onnx_files: dict[str, str],
    pool: PrecisionTestSet,
    thresholds: dict[str, dict[str, float]],
    router_classes: list[str],
    *,
    variant_files: dict[str, str] | None = None,
    content_limit: float | None = None,
    test: PrecisionTestSet | None = None,
) -> PrecisionSpec:
    """The gate for ``precision`` (``bf16`` or ``int8``) of the models in ``staging``.

    ``onnx_files`` maps model name (``router``, ``elbow`` ...) to its ONNX file, the fp32
    reference; ``variant_files`` to the file served at ``precision`` (default: the ONNX
    file itself, as for bf16). ``pool``: training and validation images (labels read on
    the validation rows only); ``thresholds``: raw image and study thresholds per part;
    ``router_classes``: the router's outputs, canonical; ``content_limit``: the router's
    content gate. ``test`` is scored after the verdict, for the record.
    """
    files = variant_files or {}
    why_not = unavailable(precision)
    if why_not:
        return PrecisionSpec(
            allowed=False, runtime="openvino", reason=why_not, tolerance=0.0, files=files
        )
    gated = content_limit is not None
    started = time.perf_counter()
    x = model_input(pool.pixels)
    fp32 = _outputs(staging, onnx_files, files, "fp32", x, gated)
    reduced = _outputs(staging, onnx_files, files, precision, x, gated)
    studies = np.asarray(pool.studies)
    flips = flip_rates(
        two_stage_decisions(fp32, router_classes, thresholds, studies, content_limit),
        two_stage_decisions(reduced, router_classes, thresholds, studies, content_limit),
    )
    non_inferiority = _validation_noninferiority(pool, list(thresholds), fp32, reduced)
    max_diff = _max_probability_change(fp32, reduced, len(x))
    ref_diff = reference_diff(staging, onnx_files, precision, pool.pixels.shape[1], files)
    flips_ok = all(flips[level]["upper_95"] <= FLIP_BOUND for level in ("image", "study"))
    auroc_ok = bool(non_inferiority) and all(
        m["change_ci"] is not None and m["change_ci"][0] >= -NONINFERIORITY_MARGIN
        for m in non_inferiority.values()
    )
    allowed = flips_ok and auroc_ok
    measured: dict[str, Any] = {
        "criteria": _criteria(),
        "pool_images": len(x),
        "flips": flips,
        "validation_noninferiority": non_inferiority,
        "max_abs_probability_change": max_diff,
        "reference_max_abs_diff": ref_diff,
    }
    if gated and fp32.content is not None and reduced.content is not None:
        assert content_limit is not None
        measured["content_gate"] = _content_gate_change(
            fp32.content, reduced.content, content_limit
        )
    if test is not None and len(test.parts):
        xt = model_input(test.pixels)
        measured["test"] = test_figures(
            test,
            _outputs(staging, onnx_files, files, "fp32", xt, False),
            _outputs(staging, onnx_files, files, precision, xt, False),
            list(thresholds),
        )
    measured["seconds"] = round(time.perf_counter() - started, 1)
    reason = _verdict_reason(len(x), flips, non_inferiority, max_diff)
    return PrecisionSpec(
        allowed=allowed,
        runtime="openvino",
        reason=("allowed: " if allowed else "not allowed: ") + reason,
        tolerance=load_tolerance(ref_diff),
        measured=measured,
        files=files,
    )


def _criteria() -> dict[str, Any]:
    """The verdict's criteria, recorded with every measurement (``measured["criteria"]``)."""
    return {
        "flip_bound": FLIP_BOUND,
        "noninferiority_margin": NONINFERIORITY_MARGIN,
        "pool": "training and validation images, labels unused",
        "interval": "Clopper-Pearson one-sided 95% upper bound; paired study bootstrap",
    }


def _max_probability_change(fp32: Outputs, reduced: Outputs, images: int) -> float:
    """The largest change of any part model's P(abnormal) over the pool (0 if empty)."""
    return max(
        (float(np.max(np.abs(fp32.parts[k] - reduced.parts[k]))) for k in fp32.parts if images),
        default=0.0,
    )


def _validation_noninferiority(
    pool: PrecisionTestSet, parts: list[str], fp32: Outputs, reduced: Outputs
) -> dict[str, Any]:
    """Per part with both labels among its validation images: the study AUROC at fp32
    and at the reduced precision, with the paired interval of the change."""
    validation = pool.in_split("validation")
    labels, studies = np.asarray(pool.labels), np.asarray(pool.studies)
    out: dict[str, Any] = {}
    for part in parts:
        rows = np.intersect1d(validation, pool.of_part(part))
        key = model_key(part)
        if rows.size and len(np.unique(labels[rows])) == 2:
            out[display_name(part)] = study_auroc_difference(
                labels[rows], studies[rows], fp32.parts[key][rows], reduced.parts[key][rows]
            )
    return out


def _content_gate_change(fp32: np.ndarray, reduced: np.ndarray, limit: float) -> dict[str, Any]:
    """How the content gate's answers and scores move between fp32 and a precision."""
    return {
        "limit": limit,
        "flipped": int(np.sum((fp32 <= limit) != (reduced <= limit))),
        "max_abs_score_change": float(np.max(np.abs(fp32 - reduced))) if len(fp32) else 0.0,
    }


def _verdict_reason(
    images: int, flips: dict[str, Any], non_inferiority: dict[str, Any], max_diff: float
) -> str:
    """The verdict's figures in one sentence: flips and their upper bounds, the worst
    validation AUROC change, the largest probability change."""
    worst = min(
        (m["change_ci"][0] for m in non_inferiority.values() if m["change_ci"]), default=None
    )
    image, study = flips["image"], flips["study"]
    return (
        f"label-free pool of {images} images: {image['flipped']} of {image['decisions']} "
        f"image answers flipped (95% upper bound {image['upper_95']:.2%}), "
        f"{study['flipped']} of {study['decisions']} study answers (upper bound "
        f"{study['upper_95']:.2%}; limit {FLIP_BOUND:.0%}); validation study AUROC change "
        f"lower bound {'n/a' if worst is None else f'{worst:+.4f}'} "
        f"(margin -{NONINFERIORITY_MARGIN}); max |dP| {max_diff:.4f}"
    )


def _max_diff(a: Model, b: Model, x: np.ndarray) -> float:
    return float(np.max(np.abs(a(x) - b(x))))


def load_tolerance(reference_diff: float) -> float:
    """The service's load-time bound for a precision on the fixed reference inputs: what the
    export measured there, plus :data:`LOAD_MARGIN` for a different CPU's kernels."""
    return round(reference_diff + LOAD_MARGIN, 6)


def reference_diff(
    folder: Path,
    onnx_files: dict[str, str],
    precision: str,
    size: int,
    variant_files: dict[str, str] | None = None,
) -> float:
    """Largest |P - P(fp32)| of ``precision`` over every model on the reference inputs."""
    files, x = variant_files or {}, reference_inputs(size)
    return max(
        _max_diff(_ort(folder / onnx), _openvino(folder / files.get(name, onnx), precision), x)
        for name, onnx in onnx_files.items()
    )


def precision_markdown(precisions: dict[str, PrecisionSpec]) -> list[str]:
    """The model card's reduced-precision section: the verdict (label-free pool and
    validation) and, for the record, each precision's test study AUROC beside fp32."""
    lines = [
        "## Reduced precision (what `auto` may serve)",
        "",
        f"Decided without the test labels: two-stage flips on a label-free pool of training "
        f"and validation images (95% Clopper-Pearson upper bound <= {FLIP_BOUND:.0%}, image and "
        f"study answers) and validation study AUROC non-inferior by a paired bootstrap "
        f"(margin {NONINFERIORITY_MARGIN}). The test figures were computed after the verdict.",
        "",
    ]
    for name, spec in precisions.items():
        lines.append(f"- **{name}**: {spec.reason}")
    rows = [
        (name, part, m)
        for name, spec in precisions.items()
        for part, m in spec.measured.get("test", {}).items()
    ]
    if rows:
        lines += [
            "",
            "| precision | body part | test study AUROC fp32 | at the precision "
            "| change [95% CI] |",
            "|---|---|---|---|---|",
        ]
        for name, part, m in rows:
            ci = m["change_ci"]
            change = "n/a" if m["change"] is None else f"{m['change']:+.4f}"
            interval = f" [{ci[0]:+.4f}, {ci[1]:+.4f}]" if ci else ""
            lines.append(
                f"| {name} | {part} | {format_metric(m['study_auroc_fp32'])} | "
                f"{format_metric(m['study_auroc_reduced'])} | {change}{interval} |"
            )
    return [*lines, ""]


def not_measured(precision: str, reason: str, files: dict[str, str] | None = None) -> PrecisionSpec:
    """A precision that may not serve, with why (not produced, or produced but not scored)."""
    return PrecisionSpec(
        allowed=False, runtime="openvino", reason=reason, tolerance=0.0, files=files or {}
    )


__all__ = [
    "FLIP_BOUND",
    "NONINFERIORITY_MARGIN",
    "POOL_LIMIT",
    "PrecisionTestSet",
    "flip_rates",
    "load_tolerance",
    "measure_precision",
    "not_measured",
    "precision_markdown",
    "reference_diff",
    "two_stage_decisions",
    "unavailable",
]
