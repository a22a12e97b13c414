"""Runtimes behind one small interface: ONNX Runtime (CPU, CUDA) and OpenVINO (CPU).

Both run the bundle's ONNX files, so nothing is converted at deploy time. The engine asks
:func:`choose_runtime` once, opens one :class:`ModelSession` per model, and never needs to
know which runtime answers.

Precision is an accuracy decision, not a speed knob: OpenVINO's int8 (the bundle's NNCF
IR files, VNNI/AMX kernels) and bf16 (the ONNX files with the bf16 hint, AMX on this class
of CPU) are used only when the bundle's manifest says they were measured on the bundle's
own test split and allowed (``precisions.<name>.allowed``, written by the export), and the
engine checks at load that they reproduce ONNX Runtime's fp32 outputs within the recorded
tolerance.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from bonexr.contract import ModelIO, session_io
from bonexr.errors import BundleError

if TYPE_CHECKING:
    from bonexr.bundle import Manifest
    from service.settings import Settings

#: Reduced precisions, fastest first (what ``auto`` tries), with the CPU capability each needs.
REDUCED = (("int8", "INT8"), ("bf16", "BF16"))
#: OpenVINO's inference-precision hint per precision (an int8 IR runs its unquantised
#: layers in fp32: the export's gate measured it so).
OPENVINO_HINT = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}


class ModelSession(Protocol):
    """One loaded model: every output for a float32 ``(N, S, S, 1)`` batch."""

    def run(self, x: np.ndarray) -> list[np.ndarray]: ...

    def io(self) -> ModelIO: ...


@dataclass(frozen=True)
class RuntimeChoice:
    runtime: str  # "onnxruntime" | "openvino"
    precision: str  # "fp32" | "bf16" | "int8"
    reason: str  # why, for the log, /ready and /model
    providers: tuple[str, ...] = ()  # ONNX Runtime execution providers

    def describe(self) -> str:
        where = f" ({', '.join(self.providers)})" if self.providers else ""
        return f"{self.runtime} {self.precision}{where}: {self.reason}"


# -------------------------------------------------------------------- ONNX Runtime


class OnnxRuntimeSession:
    def __init__(self, path: Path, settings: Settings, providers: Sequence[str]) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = settings.intra_op_threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        # One thread pool per session: with spinning on, the pools of the router and the part
        # models spin against each other (and the HTTP threads) on a small CPU -- measured 2x
        # slower two-stage inference on 2 cores. Idle threads should sleep instead.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(
                str(path), sess_options=options, providers=list(providers)
            )
        except Exception as exc:
            raise BundleError(f"ONNX Runtime cannot open {path.name}: {exc}") from exc
        self.input_name = self.session.get_inputs()[0].name
        self.providers = list(self.session.get_providers())

    def run(self, x: np.ndarray) -> list[np.ndarray]:
        return [np.asarray(o, np.float64) for o in self.session.run(None, {self.input_name: x})]

    def io(self) -> ModelIO:
        return session_io(self.session)


# ------------------------------------------------------------------------ OpenVINO


class OpenVinoSession:
    def __init__(self, path: Path, settings: Settings, precision: str) -> None:
        import openvino as ov

        config: dict[str, Any] = {
            "INFERENCE_PRECISION_HINT": OPENVINO_HINT[precision],
            "PERFORMANCE_HINT": "LATENCY",
        }
        if settings.intra_op_threads:
            config["INFERENCE_NUM_THREADS"] = settings.intra_op_threads
        try:
            self.compiled = ov.Core().compile_model(str(path), "CPU", config)
        except Exception as exc:
            raise BundleError(f"OpenVINO cannot compile {path.name}: {exc}") from exc
        self._lock = threading.Lock()  # one infer request, used from one thread at a time
        self._request = self.compiled.create_infer_request()

    def run(self, x: np.ndarray) -> list[np.ndarray]:
        with self._lock:
            results = self._request.infer({0: x})
            return [np.asarray(results[o], np.float64) for o in self.compiled.outputs]

    def io(self) -> ModelIO:
        def dims(port: Any) -> tuple[int | None, ...]:
            shape = port.get_partial_shape()
            return tuple(d.get_length() if d.is_static else None for d in shape)

        outputs = [dims(o) for o in self.compiled.outputs]
        return ModelIO(dims(self.compiled.inputs[0]), outputs[0], tuple(outputs[1:]))


def openvino_capabilities() -> set[str] | None:
    """OpenVINO's CPU capabilities (``BF16``, ``INT8`` ...), or None when not installed."""
    try:
        import openvino as ov
    except ImportError:
        return None
    try:
        return set(ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
    except Exception:
        return set()


# ------------------------------------------------------------------------ choosing


def choose_runtime(
    settings: Settings, manifest: Manifest, cuda_providers: Sequence[str]
) -> RuntimeChoice:
    """The runtime and precision to serve ``manifest`` with, and why.

    Explicit choices that cannot be honoured raise :class:`BundleError` (``/ready`` 503
    with the reason); ``auto`` falls back and says so, never silently changing numbers.
    ``cuda_providers`` are the ONNX Runtime providers to use when a GPU is wanted and there.
    """
    runtime, precision = settings.runtime, settings.precision
    allowed = manifest.precision_allowed
    if precision in ("bf16", "int8"):
        if runtime == "onnxruntime":
            raise BundleError(
                f"precision {precision} needs runtime openvino (ONNX Runtime serves fp32)"
            )
        if not allowed(precision):
            raise BundleError(
                f"bundle '{manifest.name}' does not allow {precision}: "
                f"{manifest.precision_note(precision)}"
            )
    capabilities = openvino_capabilities()
    if runtime == "openvino" and capabilities is None:
        raise BundleError("runtime openvino is not installed (pip install openvino)")
    if runtime == "onnxruntime" or (
        runtime == "auto" and "CUDAExecutionProvider" in cuda_providers
    ):
        reason = "requested" if runtime == "onnxruntime" else "a CUDA GPU is present"
        return RuntimeChoice("onnxruntime", "fp32", reason, tuple(cuda_providers))
    if runtime == "auto" and capabilities is None:
        return RuntimeChoice(
            "onnxruntime", "fp32", "OpenVINO is not installed", tuple(cuda_providers)
        )
    # OpenVINO on the CPU: the fastest reduced precision the bundle allows and the CPU has
    cpu = capabilities or set()
    needs = dict(REDUCED)
    if precision in needs:
        if needs[precision] not in cpu:
            raise BundleError(
                f"precision {precision} requested but this CPU has no {precision} support"
            )
        return RuntimeChoice("openvino", precision, "requested; allowed by the bundle")
    skipped: list[str] = []
    for name, capability in REDUCED:
        if precision != "auto":
            break
        if capability in cpu and allowed(name):
            why = f"CPU has {name} and the bundle allows it"
            return RuntimeChoice("openvino", name, "; ".join([why, *skipped]))
        skipped.append(
            f"{name} not used: "
            + (manifest.precision_note(name) if capability in cpu else f"CPU has no {name}")
        )
    why = "requested" if runtime == "openvino" else "fastest fp32 on this CPU"
    return RuntimeChoice("openvino", "fp32", "; ".join([why, *skipped]))


def open_session(choice: RuntimeChoice, path: Path, settings: Settings) -> ModelSession:
    if choice.runtime == "openvino":
        return OpenVinoSession(path, settings, choice.precision)
    return OnnxRuntimeSession(path, settings, choice.providers or ("CPUExecutionProvider",))
