"""Bundle export: Keras models -> ONNX (checked for parity) -> an atomically published bundle.

The service runs ONNX Runtime (measured here ~1.8x the throughput of TensorFlow on CPU at a
fraction of the memory), so every model is exported and its ONNX output compared with
Keras on random and real images before the bundle is allowed to exist.
"""

from __future__ import annotations

import contextlib
import io
import logging
import platform
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np

from bonexr.bundle import (
    SYNTHETIC_USE,
    HeatmapSpec,
    InputSpec,
    Manifest,
    ModelFiles,
    PartSpec,
    PrecisionSpec,
    RouterSpec,
    publish_bundle,
    staging_dir,
)
from bonexr.errors import BundleError
from bonexr.labels import display_name, model_key
from bonexr.manifest import TRIAGE
from bonexr.runtime import onnx_session
from training.eligibility import FittedGate
from training.models import with_cam
from training.ood import with_content_score
from training.operating_points import PartAnswers
from training.precision import (
    PrecisionTestSet,
    measure_precision,
    not_measured,
    precision_markdown,
    unavailable,
)
from training.quantize import nncf_missing, produce_int8

log = logging.getLogger(__name__)

#: Largest tolerated |Keras - ONNX| difference in output probabilities.
PARITY_TOLERANCE = 1e-4


def export_onnx(model: keras.Model, path: Path) -> None:
    """Write ``model`` as ONNX with a dynamic batch dimension (input name ``image``)."""
    size = int(model.input_shape[1])
    model(np.zeros((1, size, size, 1), np.float32), training=False)  # export needs a built call
    with contextlib.redirect_stdout(io.StringIO()):  # tf2onnx prints progress to stdout
        model.export(str(path), format="onnx", verbose=False)


#: ONNX Runtime providers the service may run a bundle on (see service.adapters.engine).
SERVING_PROVIDERS: tuple[str, ...] = ("CPUExecutionProvider", "CUDAExecutionProvider")


def parity_providers() -> list[str]:
    """The serving providers present in this ONNX Runtime (CPU always)."""
    import onnxruntime as ort

    available = set(ort.get_available_providers())
    return [p for p in SERVING_PROVIDERS if p in available]


def onnx_parity(
    model: keras.Model, onnx_path: Path, samples: np.ndarray, provider: str = SERVING_PROVIDERS[0]
) -> float:
    """Max |Keras - ONNX Runtime| over ``samples`` (float32 ``(N, H, W, 1)``) on
    ``provider``, relative where an output exceeds 1 (the content score is a distance in
    the tens: float32 rounding alone moves it by more than the tolerance)."""
    session = onnx_session(onnx_path, providers=[provider])
    input_name = session.get_inputs()[0].name
    keras_out = model(samples, training=False)
    keras_outs = keras_out if isinstance(keras_out, list | tuple) else [keras_out]
    onnx_outs = session.run(None, {input_name: samples})
    if len(onnx_outs) != len(keras_outs):
        raise BundleError(f"ONNX model has {len(onnx_outs)} outputs, Keras {len(keras_outs)}")
    return max(
        float(np.max(np.abs(np.asarray(k) - np.asarray(o)) / np.maximum(1.0, np.abs(k))))
        for k, o in zip(keras_outs, onnx_outs, strict=True)
    )


def parity_samples(size: int, real: np.ndarray | None = None, seed: int = 0) -> np.ndarray:
    """Random-noise images plus, when given, real prepared images (float32 NHWC)."""
    rng = np.random.default_rng(seed)
    noise = rng.uniform(0, 255, size=(4, size, size, 1)).astype(np.float32)
    if real is None or len(real) == 0:
        return noise
    return np.concatenate([noise, np.asarray(real, np.float32)], axis=0)


def library_versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import sklearn
    import tensorflow as tf

    import bonexr

    return {
        "bonexr": bonexr.__version__,
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "scikit-learn": sklearn.__version__,
        "numpy": np.__version__,
    }


def export_bundle(
    destination: Path,
    *,
    models: dict[str, keras.Model],
    name: str,
    body_parts: list[str],
    input_size: int,
    backbones: dict[str, str],
    thresholds: dict[str, dict[str, dict[str, Any]]],
    router_parts: list[str] | None = None,
    metrics: dict,
    data: dict,
    training: dict,
    synthetic: bool,
    extra_files: dict[str, Path] | None = None,
    parity_images: np.ndarray | None = None,
    precision_pool: PrecisionTestSet | None = None,
    precision_test: PrecisionTestSet | None = None,
    calibration: PrecisionTestSet | None = None,
    answers: dict[str, PartAnswers] | None = None,
    content_gate: FittedGate | None = None,
    force: bool = False,
    intended_use: str | None = None,
) -> Manifest:
    """Write a complete bundle to ``destination`` atomically and return its manifest.

    ``models`` maps ``router`` and lower-case part names to Keras models. ``extra_files``
    maps bundle-relative paths (``report.md``, ``plots/roc.png``, ``split.csv``) to files
    to copy in. ``calibration`` (training images) makes int8 variants; ``precision_pool``
    (training and validation images) decides bf16 and int8 against fp32 without test
    labels, and ``precision_test`` scores them once on test for the record
    (:mod:`training.precision`).
    ``answers`` (fitted on validation, :mod:`training.operating_points`) gives each part its
    calibration and operating points, served at ``triage`` by default (``thresholds`` then
    holds the served values, with the raw ones under ``"raw"``); ``content_gate`` is built
    into the router's graph as its second output and its limit written to the manifest.
    Without them (random-init bundles) the thresholds are served as they are. Raises
    :class:`BundleError` if ONNX parity fails or the destination exists (without ``force``).
    """
    destination = Path(destination)
    if destination.exists() and not force:
        raise BundleError(f"{destination} already exists; pass --force to replace it")
    staging = staging_dir(destination)
    try:
        samples = parity_samples(input_size, parity_images)
        exported = _export_models(staging, models, backbones, samples, content_gate)
        precisions = reduced_precisions(
            staging,
            {n: str(s.onnx) for n, s in exported.specs.items()},
            pool=precision_pool,
            test=precision_test,
            calibration=calibration,
            # the gate scores raw outputs, so it decides at the raw thresholds
            thresholds=_raw_thresholds(thresholds, body_parts),
            router_classes=list(router_parts or body_parts),
            content_limit=None if content_gate is None else content_gate.spec.limit,
        )
        _copy_extra_files(staging, extra_files or {}, precisions)
        manifest = Manifest(
            name=name,
            synthetic=synthetic,
            body_parts=[display_name(p) for p in body_parts],
            input=InputSpec(size=input_size),
            router=_router_spec(exported, router_parts or body_parts, content_gate),
            parts=_part_specs(body_parts, exported, thresholds, answers),
            default_operating_point=None if answers is None else TRIAGE,
            metrics=metrics,
            precisions=precisions,
            data=data,
            training=training | exported.parity_record(len(samples)),
            libraries=library_versions(),
        )
        if synthetic:
            manifest.intended_use = SYNTHETIC_USE
        elif intended_use:
            manifest.intended_use = intended_use
        return publish_bundle(staging, manifest, destination, force=force)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


@dataclass
class _Exported:
    """What exporting the models to the staging folder produced, per model name."""

    specs: dict[str, ModelFiles] = field(default_factory=dict)
    #: A part model's heat-map grid (its class activation map's height and width).
    grids: dict[str, tuple[int, ...]] = field(default_factory=dict)
    #: The largest Keras-vs-ONNX difference over the providers checked.
    parity: dict[str, float] = field(default_factory=dict)
    #: Provider -> model name -> Keras-vs-ONNX difference.
    per_provider: dict[str, dict[str, float]] = field(default_factory=dict)

    def parity_record(self, images: int) -> dict[str, Any]:
        """The parity figures the manifest's ``training`` records (checked on ``images``)."""
        return {
            "onnx_parity_max_abs_diff": self.parity,
            "onnx_parity_by_provider": self.per_provider,
            "onnx_parity_images": images,
        }


def _export_models(
    staging: Path,
    models: dict[str, keras.Model],
    backbones: dict[str, str],
    samples: np.ndarray,
    content_gate: FittedGate | None,
) -> _Exported:
    """Save every model as Keras and, as served, as ONNX in ``staging``; refuse (raise
    :class:`BundleError`) if an ONNX file differs from Keras on any serving provider."""
    providers = parity_providers()
    exported = _Exported(per_provider={p: {} for p in providers})
    for model_name, model in models.items():
        keras_file, onnx_file = f"{model_name}.keras", f"{model_name}.onnx"
        model.save(staging / keras_file)
        # part models are served with their class activation map as a second output
        if model_name == "router":
            served = model if content_gate is None else with_content_score(model, content_gate.fit)
        else:
            served = with_cam(model)
        export_onnx(served, staging / onnx_file)
        for provider in providers:
            diff = onnx_parity(served, staging / onnx_file, samples, provider)
            exported.per_provider[provider][model_name] = diff
            if diff > PARITY_TOLERANCE:
                raise BundleError(
                    f"ONNX export of {model_name} differs from Keras by {diff:.2e} on "
                    f"{provider} (tolerance {PARITY_TOLERANCE:g}); refusing to publish"
                )
        exported.parity[model_name] = max(exported.per_provider[p][model_name] for p in providers)
        exported.specs[model_name] = ModelFiles(
            keras=keras_file, onnx=onnx_file, backbone=backbones[model_name]
        )
        if model_name != "router":
            exported.grids[model_name] = tuple(int(d) for d in served.outputs[1].shape[1:3])
        log.info("exported %s (ONNX parity %.2e)", model_name, exported.parity[model_name])
    return exported


def _raw_thresholds(
    thresholds: dict[str, dict[str, dict[str, Any]]], body_parts: list[str]
) -> dict[str, dict[str, float]]:
    """Each part's image and study thresholds on the raw (uncalibrated) scale."""
    return {
        p: {
            level: float(thresholds[p][level].get("raw", thresholds[p][level]["value"]))
            for level in ("image", "study")
        }
        for p in body_parts
    }


def _copy_extra_files(
    staging: Path, extra_files: dict[str, Path], precisions: dict[str, PrecisionSpec]
) -> None:
    """Copy ``extra_files`` into ``staging``; a copied model card gets the reduced-precision
    section when a precision was measured."""
    for rel, source in extra_files.items():
        target = staging / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
    card = staging / "MODEL_CARD.md"
    if card.is_file() and any(spec.measured for spec in precisions.values()):
        text = card.read_text().rstrip("\n") + "\n\n"
        card.write_text(text + "\n".join(precision_markdown(precisions)))


def _router_spec(
    exported: _Exported, classes: list[str], content_gate: FittedGate | None
) -> RouterSpec:
    """The manifest's ``router``: its files, classes and the content gate built into it."""
    return RouterSpec(
        **exported.specs["router"].model_dump(),
        classes=[display_name(p) for p in classes],
        ood=None if content_gate is None else content_gate.spec,
    )


def _part_specs(
    body_parts: list[str],
    exported: _Exported,
    thresholds: dict[str, dict[str, dict[str, Any]]],
    answers: dict[str, PartAnswers] | None,
) -> dict[str, PartSpec]:
    """The manifest's ``parts``: files, thresholds, heat-map grid and, when fitted, the
    calibration and operating points of each part's model."""
    return {
        display_name(p): PartSpec(
            **exported.specs[model_key(p)].model_dump(),
            threshold=thresholds[p]["study"]["value"],
            threshold_rule=thresholds[p]["study"]["rule"],
            image_threshold=thresholds[p]["image"]["value"],
            image_threshold_rule=thresholds[p]["image"]["rule"],
            heatmap=HeatmapSpec(grid=exported.grids[model_key(p)]),
            **({} if answers is None else _answer_fields(answers[p])),
        )
        for p in body_parts
    }


def _answer_fields(answers: PartAnswers) -> dict[str, Any]:
    return {
        "calibration": answers.calibration,
        "operating_points": answers.operating_points,
    }


def reduced_precisions(
    staging: Path,
    onnx_files: dict[str, str],
    *,
    pool: PrecisionTestSet | None,
    test: PrecisionTestSet | None,
    calibration: PrecisionTestSet | None,
    thresholds: dict[str, dict[str, float]],
    router_classes: list[str],
    content_limit: float | None = None,
) -> dict[str, PrecisionSpec]:
    """bf16 and int8, each produced where possible, decided on the label-free ``pool`` and
    validation, then scored on ``test`` for the record."""
    int8_files: dict[str, str] = {}
    coverage: dict[str, dict[str, int]] = {}
    why_no_int8 = nncf_missing() or unavailable("int8")
    if calibration is None:
        why_no_int8 = why_no_int8 or "no validation images to calibrate int8 with"
    if why_no_int8 is None and calibration is not None:
        int8_files, coverage = produce_int8(staging, onnx_files, calibration)
    precisions: dict[str, PrecisionSpec] = {}
    for precision, files in (("bf16", {}), ("int8", int8_files)):
        if precision == "int8" and why_no_int8:
            precisions[precision] = not_measured(precision, f"not produced: {why_no_int8}")
        elif pool is None:
            precisions[precision] = not_measured(
                precision, f"not allowed: {precision} was not scored (no image pool)", files
            )
        else:
            precisions[precision] = measure_precision(
                precision,
                staging,
                onnx_files,
                pool,
                thresholds,
                router_classes,
                variant_files=files,
                content_limit=content_limit,
                test=test,
            )
        if precision == "int8" and coverage:
            precisions[precision].measured["quantisation"] = coverage
        log.info("%s: %s", precision, precisions[precision].reason)
    return precisions


def export_random_init_bundle(
    destination: Path,
    *,
    input_size: int = 224,
    backbone: str = "resnet50",
    body_parts: tuple[str, ...] = ("ELBOW", "HAND", "SHOULDER"),
    router_parts: tuple[str, ...] | None = None,
    seed: int = 0,
    int8_calibration: int = 0,
    fit_gate: Callable[[keras.Model], FittedGate] | None = None,
    force: bool = False,
) -> Manifest:
    """An untrained bundle with the real architecture, for benchmarks and contract tests.

    Throughput and memory do not depend on the weights, so benchmarks need no training run.
    The manifest says plainly that the models are untrained. ``int8_calibration`` > 0 makes
    int8 variants calibrated on that many random images (for speed only: never allowed to
    serve, since there is no test split to score them on). ``fit_gate``, given the built
    router, returns a content gate to build into it (tests of the gate's plumbing).
    """
    from training.models import build_model

    keras.utils.set_random_seed(seed)
    classes = list(router_parts or body_parts)
    models = {
        "router": build_model("router", classes=classes, backbone=backbone, input_size=input_size)
    }
    for part in body_parts:
        models[model_key(part)] = build_model(
            "abnormality", backbone=backbone, input_size=input_size
        )
    return export_bundle(
        destination,
        models=models,
        name=Path(destination).name,
        body_parts=list(body_parts),
        router_parts=classes,
        input_size=input_size,
        backbones=dict.fromkeys(models, backbone),
        thresholds={
            p: {key: {"value": 0.5, "rule": "fixed-0.5-untrained"} for key in ("image", "study")}
            for p in body_parts
        },
        metrics={},
        data={"source": "none: random-init weights (benchmark/contract bundle)"},
        training={"untrained": True, "seed": seed},
        synthetic=True,
        calibration=_random_calibration(int8_calibration, input_size, list(body_parts), seed),
        content_gate=None if fit_gate is None else fit_gate(models["router"]),
        force=force,
    )


def _random_calibration(
    count: int, size: int, parts: list[str], seed: int
) -> PrecisionTestSet | None:
    if count <= 0:
        return None
    rng = np.random.default_rng(seed)
    return PrecisionTestSet(
        rng.integers(0, 256, (count, size, size), dtype=np.uint8),
        [parts[i % len(parts)] for i in range(count)],
        np.zeros(count, dtype=int),
        [f"random{i}" for i in range(count)],
    )
