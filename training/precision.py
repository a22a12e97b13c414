"""Reduced precision is an accuracy decision: measure it on the bundle's own test split.

At export, each part model's ONNX file is run on the test images twice: ONNX Runtime fp32
(the reference, itself checked against Keras) and OpenVINO with the bf16 inference hint
(AMX / AVX-512 BF16 on this class of CPU). Per part: study-level AUROC (true-part model,
mean over each study's views), and the share of image decisions that flip at the image
threshold; the router's top-part agreement. bf16 is *allowed* only when no part's study
AUROC drops by more than the tolerance (default 0.005) and no more than 1% of decisions
flip (at least one image allowed on small test sets). The result goes into the manifest
(``precisions.bf16``); the service never serves a precision the bundle does not allow, and
checks at load that it stays within the recorded tolerance of fp32.

int8 (post-training quantisation) is not produced yet; it is recorded as not measured.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from bonexr.bundle import PrecisionSpec
from bonexr.contract import reference_inputs
from bonexr.imaging import model_input
from bonexr.labels import display_name, model_key

#: Largest tolerated drop of a part's study AUROC under a reduced precision.
AUROC_TOLERANCE = 0.005
#: Largest tolerated share of flipped decisions (at least one image on small test sets).
FLIP_SHARE = 0.01


@dataclass(frozen=True)
class PrecisionTestSet:
    """Prepared test images with what the gate needs to score them."""

    pixels: np.ndarray  # (N, S, S) uint8
    parts: list[str]  # true body part, canonical
    labels: np.ndarray  # 0/1
    studies: list[str]


def _run(session: Any, x: np.ndarray, batch: int = 32) -> np.ndarray:
    outs = [session(x[i : i + batch])[:, 0] for i in range(0, len(x), batch)]
    return np.concatenate(outs) if outs else np.zeros(0)


def _ort(path: Path) -> Any:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: np.asarray(session.run(None, {name: x})[0], np.float64)


def _openvino(path: Path, precision: str) -> Any:
    import openvino as ov

    hint = "bf16" if precision == "bf16" else "f32"
    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": hint})
    request = compiled.create_infer_request()
    first = compiled.outputs[0]
    return lambda x: np.asarray(request.infer({0: x})[first], np.float64)


def bf16_unavailable() -> str | None:
    """Why bf16 cannot be measured here, or None."""
    try:
        import openvino as ov
    except ImportError:
        return "OpenVINO is not installed where the bundle was exported"
    if "BF16" not in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        return "the exporting CPU has no bf16 support"
    return None


def _auroc(labels: np.ndarray, probs: np.ndarray) -> float | None:
    return float(roc_auc_score(labels, probs)) if len(np.unique(labels)) == 2 else None


def measure_bf16(
    staging: Path,
    onnx_files: dict[str, str],
    test: PrecisionTestSet,
    image_thresholds: dict[str, float],
    *,
    auroc_tolerance: float = AUROC_TOLERANCE,
) -> PrecisionSpec:
    """The bf16 gate for the ONNX models in ``staging`` (``onnx_files``: model -> file)."""
    why_not = bf16_unavailable()
    if why_not:
        return PrecisionSpec(allowed=False, runtime="openvino", reason=why_not, tolerance=0.0)
    x = model_input(test.pixels)
    parts = np.asarray(test.parts, dtype=object)
    measured: dict[str, Any] = {"parts": {}}
    worst_drop, flips, decisions, max_diff = 0.0, 0, 0, 0.0
    reference_diff = 0.0
    ref = reference_inputs(test.pixels.shape[1])
    for name, file in onnx_files.items():
        fp32, bf16 = _ort(staging / file), _openvino(staging / file, "bf16")
        reference_diff = max(reference_diff, float(np.max(np.abs(fp32(ref) - bf16(ref)))))
        if name == "router":
            continue
        part = name.upper()
        rows = np.flatnonzero(parts == part)
        if rows.size == 0:
            continue
        p32, p16 = _run(fp32, x[rows]), _run(bf16, x[rows])
        max_diff = max(max_diff, float(np.max(np.abs(p32 - p16))))
        threshold = image_thresholds[part]
        flipped = int(np.sum((p32 >= threshold) != (p16 >= threshold)))
        flips, decisions = flips + flipped, decisions + rows.size
        frame = pd.DataFrame(
            {
                "study": np.asarray(test.studies)[rows],
                "label": test.labels[rows],
                "a": p32,
                "b": p16,
            }
        )
        studies = frame.groupby("study").agg({"label": "first", "a": "mean", "b": "mean"})
        auc32 = _auroc(studies["label"].to_numpy(), studies["a"].to_numpy())
        auc16 = _auroc(studies["label"].to_numpy(), studies["b"].to_numpy())
        drop = (auc32 - auc16) if auc32 is not None and auc16 is not None else 0.0
        worst_drop = max(worst_drop, drop)
        measured["parts"][display_name(part)] = {
            "study_auroc_fp32": auc32,
            "study_auroc_bf16": auc16,
            "images": int(rows.size),
            "flipped": flipped,
        }
    allowed_flips = max(1, math.floor(FLIP_SHARE * decisions))
    allowed = worst_drop <= auroc_tolerance and flips <= allowed_flips
    measured.update(
        worst_study_auroc_drop=worst_drop,
        flipped=flips,
        decisions=decisions,
        max_abs_probability_change=max_diff,
        reference_max_abs_diff=reference_diff,
    )
    reason = (
        f"test split: worst study AUROC drop {worst_drop:.4f} (limit {auroc_tolerance}), "
        f"{flips} of {decisions} image decisions flipped (limit {allowed_flips}), "
        f"max |dP| {max_diff:.4f}"
    )
    return PrecisionSpec(
        allowed=allowed,
        runtime="openvino",
        reason=("allowed: " if allowed else "not allowed: ") + reason,
        tolerance=round(2 * reference_diff + 0.005, 6),
        measured=measured,
    )


def not_produced(name: str) -> PrecisionSpec:
    return PrecisionSpec(
        allowed=False,
        runtime="openvino",
        reason=f"{name} variants are not produced by this version's export",
        tolerance=0.0,
    )


__all__ = ["PrecisionTestSet", "measure_bf16", "model_key", "not_produced"]
