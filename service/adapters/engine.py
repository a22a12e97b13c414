"""The inference engine: a verified bundle in ONNX Runtime behind a micro-batching queue.

Why ONNX Runtime: measured on this class of machine it gives ~2x TensorFlow's CPU
throughput at a third of the memory (design.md section 6), and it needs no TensorFlow.

Why micro-batching: a ResNet50 call costs nearly the same for 1 image as for a few, so
concurrent requests are gathered by one worker thread (up to ``max_batch_size`` images, or
until the oldest has waited ``max_batch_wait_ms``), the router runs once on the batch, and
each body part's model runs once on the images routed to it. Inference never runs on the
event loop; results come back through ``loop.call_soon_threadsafe``.

Lifecycle: :meth:`InferenceEngine.start` launches the worker thread, which first loads,
verifies and warms the bundle (so the HTTP server is live at once and ``/ready`` reports
"loading"), then serves the queue. A bundle that fails to load leaves the engine in state
``failed`` with the reason; the process keeps running so ``/health`` and ``/ready`` answer.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Sequence
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from bonexr.bundle import Manifest, check_version, find_bundle, verify_files
from bonexr.calibration import calibrate
from bonexr.contract import check_model_io, reference_inputs
from bonexr.errors import BundleError
from bonexr.imaging import model_input
from bonexr.labels import ROUTER
from bonexr.runtime import ModelSession, OnnxRuntimeSession
from service.adapters.batcher import Admission, MicroBatcher
from service.adapters.runtimes import RuntimeChoice, choose_runtime, open_session
from service.domain.answers import Prediction
from service.domain.errors import NotReadyError

if TYPE_CHECKING:
    from service.adapters.metrics import ServiceMetrics
    from service.settings import Settings

log = logging.getLogger("bonexr.engine")

#: Cap of the measured queue limit: a queued request holds its prepared pixels in memory.
MAX_AUTO_QUEUE = 1024


class EngineState(StrEnum):
    NOT_STARTED = "not_started"
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"
    STOPPED = "stopped"


def choose_providers(device: str, available: Sequence[str]) -> list[str]:
    """CUDA first when allowed and present, CPU always as the fallback."""
    if device in ("auto", "gpu") and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if device == "gpu":
        log.warning("device=gpu but ONNX Runtime has no CUDA provider; running on CPU")
    return ["CPUExecutionProvider"]


class InferenceEngine:
    """Loads a bundle into ONNX Runtime sessions and answers predictions in micro-batches."""

    def __init__(self, settings: Settings, metrics: ServiceMetrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics
        self.state = EngineState.NOT_STARTED
        self.error: str | None = None
        self.manifest: Manifest | None = None
        self.bundle_dir: Path | None = None
        self.providers: list[str] = []
        self._sessions: dict[str, ModelSession] = {}
        self.runtime = RuntimeChoice("onnxruntime", "fp32", "not loaded yet")
        self._thread: threading.Thread | None = None
        self._settled = threading.Event()
        self._stop_requested = threading.Event()
        self._lock = threading.Lock()  # orders state changes
        self.batcher = self._new_batcher(max_queue=1)  # closed until a bundle is ready

    def _new_batcher(self, max_queue: int) -> MicroBatcher:
        return MicroBatcher(
            self.predict_batch,
            max_batch_size=self.settings.max_batch_size,
            max_batch_wait_ms=self.settings.max_batch_wait_ms,
            max_queue=max_queue,
            timeout_s=self.settings.predict_timeout_s,
            metrics=self.metrics,
        )

    # ------------------------------------------------------------------ lifecycle

    @property
    def ready(self) -> bool:
        return self.state is EngineState.READY

    @property
    def model_name(self) -> str:
        return self.manifest.name if self.manifest else ""

    @property
    def model_version(self) -> str:
        return self.manifest.version if self.manifest else ""

    @property
    def known_parts(self) -> list[str] | None:
        """The loaded bundle's router classes, what the eligibility gate checks a header's
        body part against (None while no bundle is loaded)."""
        return list(self.manifest.router.classes) if self.manifest is not None else None

    @property
    def input_size(self) -> int:
        if self.manifest is None:
            raise NotReadyError(self.not_ready_reason())
        return self.manifest.input.size

    def not_ready_reason(self) -> str:
        """Why predictions are refused right now (the 503 detail)."""
        if self.state is EngineState.FAILED:
            return f"model bundle could not be loaded: {self.error}"
        if self.state is EngineState.LOADING:
            return "model bundle is loading; retry shortly"
        if self.state is EngineState.STOPPED:
            return "service is shutting down"
        return "model bundle is not loaded yet"

    def start(self) -> None:
        """Launch the worker thread: load + verify + warm, then serve the queue."""
        with self._lock:
            if self._thread is not None:
                return
            self._stop_requested.clear()
            self._settled.clear()
            self.state = EngineState.LOADING
            self._thread = threading.Thread(target=self._run, name="bonexr-engine", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0, *, retired: bool = False) -> None:
        """Stop: no new requests; the worker answers those already queued (within
        ``timeout``), anything left gets a 503, never silence. ``retired``: another engine
        serves now (a hot swap), so the readiness gauge is not this engine's to clear."""
        self._stop_requested.set()
        with self._lock:
            thread, self._thread = self._thread, None
            self.state = EngineState.STOPPED
        self.batcher.close()
        if thread is not None:
            thread.join(timeout)
        self.batcher.fail_pending(NotReadyError(self.not_ready_reason()))
        if self.metrics is not None and not retired:
            self.metrics.model_ready.set(0)
        self._settled.set()

    def wait_until_settled(self, timeout: float | None = None) -> bool:
        """Block until loading finished (ready or failed); False on timeout."""
        return self._settled.wait(timeout)

    def load(self) -> None:
        """Synchronously find, verify, open and warm the bundle (raises :class:`BundleError`)."""
        self.state = EngineState.LOADING
        try:
            folder = find_bundle(self.settings.models_dir, self.settings.bundle)
            manifest = verify_files(folder)
            self._open_sessions(folder, manifest)
            check_model_io(manifest, {n: s.io() for n, s in self._sessions.items()})
            check_version(manifest)
            self.manifest, self.bundle_dir = manifest, folder
            self._warm()
            batcher = self._sized_batcher()
        except Exception as exc:
            self.state = EngineState.FAILED
            self.error = _describe_load_error(exc, self.settings.models_dir)
            self._settled.set()
            raise
        with self._lock:
            if self._stop_requested.is_set():
                self._settled.set()
                return
            self.state = EngineState.READY
            self.error = None
            self.batcher = batcher
            batcher.open()
        if self.metrics is not None:
            self.metrics.model_ready.set(1)
            self.metrics.model_info.labels(manifest.name, manifest.version).set(1)
        self._settled.set()
        log.info(
            "model bundle %s %s ready (input %dpx, providers %s; %.0f images/s at batch %d, "
            "queue limit %d, deadline %gs)",
            manifest.name,
            manifest.version,
            manifest.input.size,
            ",".join(self.providers),
            batcher.images_per_second,
            self.settings.max_batch_size,
            batcher.max_queue,
            self.settings.predict_timeout_s,
        )

    def _sized_batcher(self) -> MicroBatcher:
        """A batcher whose queue limit comes from the configuration, or from the measured
        throughput: what the engine can answer within half the deadline (at least two
        full batches), so an accepted request is not one that will time out."""
        size, batch = self.input_size, self.settings.max_batch_size
        start = time.perf_counter()
        self.predict_batch(np.zeros((batch, size, size), np.uint8))
        rate = batch / max(time.perf_counter() - start, 1e-6)
        limit = self.settings.max_queue or min(
            MAX_AUTO_QUEUE, max(2 * batch, int(rate * self.settings.predict_timeout_s / 2))
        )
        batcher = self._new_batcher(max_queue=limit)
        batcher.images_per_second = rate
        return batcher

    def _open_sessions(self, folder: Path, manifest: Manifest) -> None:
        """Choose the runtime and precision, open every model, and check a reduced
        precision against ONNX Runtime fp32 on the same inputs before trusting it."""
        import onnxruntime as ort

        specs = {ROUTER: manifest.router, **manifest.parts}
        unroutable = [p for p in manifest.parts if p not in manifest.router.classes]
        if unroutable:  # router parts without a model are fine: they are answered 422
            raise BundleError(f"body-part models the router cannot choose: {unroutable}")
        missing_onnx = [name for name, spec in specs.items() if not spec.onnx]
        if missing_onnx:
            raise BundleError(
                f"no ONNX export for {', '.join(missing_onnx)} (the service runs ONNX)"
            )
        providers = choose_providers(self.settings.device, ort.get_available_providers())
        cuda = providers if "CUDAExecutionProvider" in providers else []
        self.runtime = choose_runtime(self.settings, manifest, cuda)
        precision = self.runtime.precision
        sessions = {
            name: open_session(
                self.runtime, folder / manifest.served_file(name, precision), self.settings
            )
            for name in specs
        }
        if precision != "fp32":
            tolerance = manifest.precisions[precision].tolerance
            reference = RuntimeChoice("onnxruntime", "fp32", "reference")
            for name, spec in specs.items():
                fp32 = open_session(reference, folder / str(spec.onnx), self.settings)
                check_reference(name, sessions[name], fp32, manifest.input.size, tolerance)
        self._sessions = sessions
        router = sessions[ROUTER]
        self.providers = (
            list(router.providers) if isinstance(router, OnnxRuntimeSession) else ["OpenVINO CPU"]
        )
        log.info("runtime %s", self.runtime.describe())

    def _warm(self) -> None:
        """Run each model once at batch 1 and at the largest batch: first calls are slow."""
        assert self.manifest is not None
        size = self.manifest.input.size
        for batch in sorted({1, min(self.settings.max_batch_size, 8)}):
            dummy = np.zeros((batch, size, size, 1), np.float32)
            for name in self._sessions:
                self._run_model(name, dummy, record=False)

    # ------------------------------------------------------------------ inference

    def _run_model(self, name: str, x: np.ndarray, *, record: bool = True) -> np.ndarray:
        return self._run_outputs(name, x, record=record)[0]

    def _run_outputs(self, name: str, x: np.ndarray, *, record: bool = True) -> list[np.ndarray]:
        """Every output of a model (a part model's second is its heat map: same pass)."""
        start = time.perf_counter()
        outs = self._sessions[name].run(x)
        if record and self.metrics is not None:
            self.metrics.inference.labels(name).observe(time.perf_counter() - start)
        return outs

    @property
    def bundle_warnings(self) -> list[str]:
        """What every answer of this bundle must say: safeguards an older bundle lacks."""
        manifest = self.manifest
        if manifest is None:
            return []
        found = []
        legacy = [p for p, spec in manifest.parts.items() if spec.image_threshold is None]
        if legacy:
            found.append(
                f"bundle '{manifest.name}' has no image operating point for "
                f"{', '.join(legacy)} (written before it existed): single images are decided "
                "at the study threshold"
            )
        if manifest.router.ood is None:
            found.append(
                f"bundle '{manifest.name}' has no content gate (exported before it existed): "
                "an image that is not a radiograph of its body parts "
                f"({', '.join(manifest.router.classes)}) is not recognised as such"
            )
        if not manifest.calibrated:
            found.append(
                f"bundle '{manifest.name}' has uncalibrated probabilities (exported before "
                "calibration existed): P(abnormal) is the model's raw score"
            )
        unguaranteed = [
            p
            for p, spec in manifest.parts.items()
            if any(
                point.target_sensitivity is not None and point.guarantee is None
                for levels in spec.points().values()
                for point in levels.values()
            )
        ]
        if unguaranteed:
            found.append(
                f"bundle '{manifest.name}' was exported before operating points carried a "
                f"guarantee: the triage point of {', '.join(unguaranteed)} has no guarantee "
                "that it reaches its target sensitivity"
            )
        return found

    def predict_batch(
        self,
        pixels_batch: np.ndarray | Sequence[np.ndarray],
        parts: Sequence[str | None] | None = None,
    ) -> list[Prediction]:
        """Classify prepared uint8 pixels ``(N, S, S)`` (or a list of ``(S, S)``) synchronously.

        The two-stage path the queue uses, callable directly (benchmarks, tests): the router
        runs once on the batch, then each body part's model once on the images routed to it
        (or, where ``parts`` names a part for an image, to that part).
        """
        if self.manifest is None or not self._sessions:
            raise NotReadyError(self.not_ready_reason())
        size = self.manifest.input.size
        pixels = np.asarray(
            np.stack(list(pixels_batch))
            if not isinstance(pixels_batch, np.ndarray)
            else pixels_batch
        )
        if pixels.ndim == 2:
            pixels = pixels[None]
        if pixels.ndim != 3 or pixels.shape[1:] != (size, size):
            raise ValueError(f"expected prepared pixels (N, {size}, {size}), got {pixels.shape}")
        if len(pixels) == 0:
            return []
        x = model_input(pixels)
        classes = self.manifest.router.classes
        gate = self.manifest.router.ood
        router_outs = self._run_outputs(ROUTER, x)
        router = router_outs[0]
        scores: list[float | None] = (
            [float(v) for v in np.asarray(router_outs[gate.output]).reshape(len(pixels))]
            if gate is not None
            else [None] * len(pixels)
        )
        chosen = np.argmax(router, axis=1)
        routed = [classes[int(i)] for i in chosen]
        models = self.manifest.parts
        scored_by = [
            scorer if scorer in models else ""
            for scorer in (
                forced or part
                for forced, part in zip(parts or [None] * len(pixels), routed, strict=True)
            )
        ]
        abnormal = np.zeros(len(pixels), dtype=np.float64)
        cams: list[np.ndarray | None] = [None] * len(pixels)
        for part in dict.fromkeys(p for p in scored_by if p):
            members = np.flatnonzero(np.asarray(scored_by) == part)
            outs = self._run_outputs(part, x[members])
            abnormal[members] = outs[0][:, 0]
            heatmap = models[part].heatmap
            if heatmap is not None:
                for member, cam in zip(members, outs[heatmap.output], strict=True):
                    cams[int(member)] = cam
        point = self.manifest.default_point
        results = []
        for row, part, scorer, raw, cam, score in zip(
            router, routed, scored_by, abnormal, cams, scores, strict=True
        ):
            spec = models[scorer] if scorer else None
            prob = calibrate(float(raw), spec.calibration.get("image")) if spec else float(raw)
            threshold = float(spec.points()[point]["image"].threshold) if spec else 1.0
            results.append(
                Prediction(
                    bone_type=part,
                    bone_type_probabilities={
                        c: float(p) for c, p in zip(classes, row, strict=True)
                    },
                    abnormality_probability=prob,
                    threshold=threshold,
                    abnormal=bool(prob >= threshold),
                    scored_by=scorer,
                    raw_probability=float(raw),
                    operating_point=point,
                    content_score=score,
                    cam=cam,
                )
            )
        return results

    def admit(self, count: int = 1) -> contextlib.AbstractContextManager[Admission]:
        """Reserve queue places before decoding (429 when full; see
        :meth:`MicroBatcher.admit`)."""
        return self.batcher.admit(count, self.not_ready_reason)

    async def predict(
        self, pixels: np.ndarray, part: str | None = None, admission: Admission | None = None
    ) -> Prediction:
        """Queue one prepared ``(S, S)`` uint8 image for the batching worker and await it;
        with ``part``, that part's model scores it whatever the router says.

        Raises :class:`~service.domain.errors.OverloadedError` (429) when the queue is full and
        :class:`~service.domain.errors.NotReadyError` (503) when not ready or past the deadline.
        """
        size = self.input_size
        if pixels.shape != (size, size):
            raise ValueError(f"expected prepared pixels ({size}, {size}), got {pixels.shape}")
        if part is not None and self.manifest is not None and part not in self.manifest.parts:
            raise ValueError(f"no abnormality model for {part}")
        result: Prediction = await self.batcher.submit(
            pixels, part, self.not_ready_reason, admission
        )
        if self.metrics is not None:
            self.metrics.views_scored.inc()
            self.metrics.drift.observe("content_score", "all", result.content_score)
            if result.has_verdict:
                drift_part = result.scored_by or result.bone_type
                self.metrics.drift.observe(
                    "probability", drift_part, result.abnormality_probability
                )
        return result

    # ------------------------------------------------------------------ worker

    def _run(self) -> None:
        try:
            self.load()
        except Exception:
            log.error("model bundle not loaded: %s", self.error)
            return
        if not self._stop_requested.is_set():
            self.batcher.serve()


def check_reference(
    name: str, candidate: ModelSession, fp32: ModelSession, size: int, tolerance: float
) -> None:
    """Refuse a runtime/precision whose probabilities differ from ONNX Runtime fp32 by more
    than the tolerance the export recorded (``BundleError`` -> ``/ready`` 503)."""
    x = reference_inputs(size)
    diff = float(np.max(np.abs(candidate.run(x)[0] - fp32.run(x)[0])))
    if diff > tolerance:
        raise BundleError(
            f"{name}: the chosen precision differs from fp32 by {diff:.4f} on the reference "
            f"inputs (recorded tolerance {tolerance:.4f}); refusing it"
        )


def _describe_load_error(exc: Exception, models_dir: Path) -> str:
    """A reason fit for ``/ready``: names the problem, not the server's absolute paths."""
    text = str(exc) if isinstance(exc, BundleError) else f"{type(exc).__name__}: {exc}"
    for prefix in {str(Path(models_dir).resolve()), str(models_dir)}:
        if prefix and prefix != ".":
            text = text.replace(prefix.rstrip("/") + "/", "").replace(prefix, "<models_dir>")
    return text
