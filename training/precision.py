"""Reduced precision is an accuracy decision: measure it on the bundle's own test split.

At export every reduced precision the serving CPU could use is scored on the test images
against ONNX Runtime fp32 (the reference, itself checked against Keras):

* **bf16**: the bundle's ONNX files run by OpenVINO with the bf16 inference hint (AMX /
  AVX-512 BF16 on this class of CPU);
* **int8**: OpenVINO IR files made by NNCF post-training quantisation
  (:mod:`training.quantize`, calibrated on validation images), run with fp32 for the
  layers left unquantised.

Per part: study-level AUROC (true-part model, mean over each study's views) and the image
decisions that flip at the image threshold. Two-stage, the way the service answers: the
router's choice under the precision, then the chosen part's model; its decision (part and
abnormal/normal) flips if either changes, and its pooled study AUROC is compared too. A
precision is *allowed* only when no study AUROC (per part or two-stage) drops by more than
the tolerance (default 0.005) and at most 1% of two-stage decisions flip (at least one image
on small test sets). The result goes into the manifest (``precisions``); the service never
serves a precision the bundle does not allow, and checks at load that it stays within the
recorded tolerance of fp32 on the reference inputs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from bonexr.bundle import PrecisionSpec
from bonexr.contract import reference_inputs
from bonexr.imaging import model_input
from bonexr.labels import ROUTER, display_name, model_key
from bonexr.runtime import (
    REDUCED,
    OnnxRuntimeSession,
    OpenVinoSession,
    openvino_capabilities,
)

#: Largest tolerated drop of a study AUROC (per part or two-stage) under a reduced precision.
AUROC_TOLERANCE = 0.005
#: Largest tolerated share of flipped two-stage decisions (at least one on small test sets).
FLIP_SHARE = 0.01

Model = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class PrecisionTestSet:
    """Prepared images with what the gate (test split) or the quantiser (validation split)
    needs: true part, label and study of each."""

    pixels: np.ndarray  # (N, S, S) uint8
    parts: list[str]  # true body part, canonical
    labels: np.ndarray  # 0/1
    studies: list[str]

    def of_part(self, part: str) -> np.ndarray:
        """Row indices of one body part's images."""
        return np.flatnonzero(np.asarray(self.parts, dtype=object) == part)


def _run(session: Model, x: np.ndarray, batch: int = 32) -> np.ndarray:
    outs = [session(x[i : i + batch]) for i in range(0, len(x), batch)]
    return np.concatenate(outs) if outs else np.zeros((0, 1))


def _ort(path: Path, output: int = 0) -> Model:
    """The fp32 reference, opened as the service opens it (:mod:`bonexr.runtime`)."""
    session = OnnxRuntimeSession(path)
    return lambda x: session.run(x)[output]


def _openvino(path: Path, precision: str, output: int = 0) -> Model:
    """``precision`` in OpenVINO, opened as the service opens it (hint, latency mode)."""
    session = OpenVinoSession(path, precision=precision)
    return lambda x: session.run(x)[output]


def _content_gate(
    staging: Path, router: str, variant: str, precision: str, x: np.ndarray, limit: float
) -> dict[str, Any]:
    """The content gate's accept/refuse decisions on the test views at fp32 and at
    ``precision``: the score is computed by the router's graph, so it changes with it."""
    fp32 = _run(_ort(staging / router, 1), x)[:, 0]
    reduced = _run(_openvino(staging / variant, precision, 1), x)[:, 0]
    return {
        "limit": limit,
        "flipped": int(np.sum((fp32 <= limit) != (reduced <= limit))),
        "accepted_fp32": int(np.sum(fp32 <= limit)),
        f"accepted_{precision}": int(np.sum(reduced <= limit)),
        "max_abs_score_change": float(np.max(np.abs(fp32 - reduced))) if len(x) else 0.0,
    }


def unavailable(precision: str) -> str | None:
    """Why ``precision`` cannot be measured on this machine, or None."""
    capabilities = openvino_capabilities()
    if capabilities is None:
        return "OpenVINO is not installed where the bundle was exported"
    if dict(REDUCED)[precision] not in capabilities:
        return f"the exporting CPU has no {precision} support"
    return None


def _auroc(labels: np.ndarray, probs: np.ndarray) -> float | None:
    return float(roc_auc_score(labels, probs)) if len(np.unique(labels)) == 2 else None


def _study_aurocs(
    studies: np.ndarray, labels: np.ndarray, reference: np.ndarray, reduced: np.ndarray
) -> tuple[float | None, float | None]:
    frame = pd.DataFrame({"study": studies, "label": labels, "a": reference, "b": reduced})
    grouped = frame.groupby("study").agg({"label": "first", "a": "mean", "b": "mean"})
    y = grouped["label"].to_numpy()
    return _auroc(y, grouped["a"].to_numpy()), _auroc(y, grouped["b"].to_numpy())


def _drop(before: float | None, after: float | None) -> float:
    return before - after if before is not None and after is not None else 0.0


def measure_precision(
    precision: str,
    staging: Path,
    onnx_files: dict[str, str],
    test: PrecisionTestSet,
    image_thresholds: dict[str, float],
    router_classes: list[str],
    *,
    variant_files: dict[str, str] | None = None,
    auroc_tolerance: float = AUROC_TOLERANCE,
    content_limit: float | None = None,
) -> PrecisionSpec:
    """The gate for ``precision`` (``bf16`` or ``int8``) of the models in ``staging``.

    ``onnx_files`` maps model name (``router``, ``elbow`` ...) to its ONNX file, the fp32
    reference; ``variant_files`` to the file served at ``precision`` (default: the ONNX
    file itself, as for bf16). ``router_classes`` are the router's outputs, canonical.
    ``content_limit``: the router's content gate; its flipped accept/refuse decisions
    count with the two-stage flips.
    """
    files = variant_files or {}
    why_not = unavailable(precision)
    if why_not:
        return PrecisionSpec(
            allowed=False, runtime="openvino", reason=why_not, tolerance=0.0, files=files
        )
    x = model_input(test.pixels)
    reference_x = reference_inputs(test.pixels.shape[1])
    fp32: dict[str, np.ndarray] = {}  # model name -> (N,) probabilities on every test image
    reduced: dict[str, np.ndarray] = {}
    ref_diff = 0.0
    for name, onnx in onnx_files.items():
        a, b = _ort(staging / onnx), _openvino(staging / files.get(name, onnx), precision)
        ref_diff = max(ref_diff, _max_diff(a, b, reference_x))
        outputs_a, outputs_b = _run(a, x), _run(b, x)
        if name == ROUTER:
            fp32[name], reduced[name] = outputs_a.argmax(axis=1), outputs_b.argmax(axis=1)
        else:
            fp32[name], reduced[name] = outputs_a[:, 0], outputs_b[:, 0]
    measured: dict[str, Any] = {"parts": {}}
    worst_drop, max_diff = 0.0, 0.0
    studies, labels = np.asarray(test.studies), np.asarray(test.labels)
    for part in image_thresholds:
        rows, key = test.of_part(part), model_key(part)
        if rows.size == 0:
            continue
        p32, p_low = fp32[key][rows], reduced[key][rows]
        max_diff = max(max_diff, float(np.max(np.abs(p32 - p_low))))
        threshold = image_thresholds[part]
        auc32, auc_low = _study_aurocs(studies[rows], labels[rows], p32, p_low)
        worst_drop = max(worst_drop, _drop(auc32, auc_low))
        measured["parts"][display_name(part)] = {
            "study_auroc_fp32": auc32,
            f"study_auroc_{precision}": auc_low,
            "images": int(rows.size),
            "flipped": int(np.sum((p32 >= threshold) != (p_low >= threshold))),
        }
    two_stage = _two_stage(fp32, reduced, router_classes, image_thresholds)
    # two-stage AUROC over the studies of parts with a model (a router-only part has no
    # abnormality answer to rank); routing changes of every image count as flips
    scored = np.isin(np.asarray(test.parts, dtype=object), list(image_thresholds))
    auc32, auc_low = _study_aurocs(
        studies[scored],
        labels[scored],
        two_stage["p_fp32"][scored],
        two_stage["p_reduced"][scored],
    )
    worst_drop = max(worst_drop, _drop(auc32, auc_low))
    flips, decisions = int(two_stage["flipped"].sum()), len(x)
    gate_flips = 0
    if content_limit is not None:
        router = onnx_files[ROUTER]
        measured["content_gate"] = _content_gate(
            staging, router, files.get(ROUTER, router), precision, x, content_limit
        )
        gate_flips = measured["content_gate"]["flipped"]
        flips += gate_flips
    allowed_flips = max(1, math.floor(FLIP_SHARE * decisions))
    allowed = worst_drop <= auroc_tolerance and flips <= allowed_flips
    measured.update(
        two_stage={
            "study_auroc_fp32": auc32,
            f"study_auroc_{precision}": auc_low,
            "routing_changed": int(np.sum(fp32[ROUTER] != reduced[ROUTER])),
        },
        worst_study_auroc_drop=worst_drop,
        flipped=flips,
        decisions=decisions,
        max_abs_probability_change=max_diff,
        reference_max_abs_diff=ref_diff,
    )
    reason = (
        f"test split: worst study AUROC drop {worst_drop:.4f} (limit {auroc_tolerance}), "
        f"{flips} of {decisions} two-stage decisions flipped (limit {allowed_flips}"
        + (f"; {gate_flips} of them the content gate's" if content_limit is not None else "")
        + "), "
        f"max |dP| {max_diff:.4f}"
    )
    return PrecisionSpec(
        allowed=allowed,
        runtime="openvino",
        reason=("allowed: " if allowed else "not allowed: ") + reason,
        tolerance=load_tolerance(ref_diff),
        measured=measured,
        files=files,
    )


def _max_diff(a: Model, b: Model, x: np.ndarray) -> float:
    return float(np.max(np.abs(a(x) - b(x))))


def load_tolerance(reference_diff: float) -> float:
    """The service's load-time bound for a precision: twice what the export measured on the
    reference inputs, plus a margin for a different CPU's kernels."""
    return round(2 * reference_diff + 0.005, 6)


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


def _two_stage(
    fp32: dict[str, np.ndarray],
    reduced: dict[str, np.ndarray],
    router_classes: list[str],
    image_thresholds: dict[str, float],
) -> dict[str, np.ndarray]:
    """Each test image answered as the service would: routed part, then its model's
    probability (0 where the routed part has no model: the service answers 422, not
    abnormal); a decision flips if the part or the abnormal/normal call changes."""

    def answer(run: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        routed = np.asarray(router_classes, dtype=object)[run[ROUTER]]
        probs = np.zeros(len(routed))
        abnormal = np.zeros(len(routed), dtype=bool)
        for part, threshold in image_thresholds.items():
            rows = routed == part
            probs[rows] = run[model_key(part)][rows]
            abnormal[rows] = probs[rows] >= threshold
        return routed, probs, abnormal

    part_a, p_a, abnormal_a = answer(fp32)
    part_b, p_b, abnormal_b = answer(reduced)
    return {
        "p_fp32": p_a,
        "p_reduced": p_b,
        "flipped": (part_a != part_b) | (abnormal_a != abnormal_b),
    }


def not_measured(precision: str, reason: str, files: dict[str, str] | None = None) -> PrecisionSpec:
    """A precision that may not serve, with why (not produced, or produced but not scored)."""
    return PrecisionSpec(
        allowed=False, runtime="openvino", reason=reason, tolerance=0.0, files=files or {}
    )


__all__ = [
    "PrecisionTestSet",
    "load_tolerance",
    "measure_precision",
    "not_measured",
    "reference_diff",
    "unavailable",
]
