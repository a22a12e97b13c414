"""Opening models in ONNX Runtime and OpenVINO: one place for export, the precision gate,
the benchmarks and serving.

The export's precision gate decides whether bf16 / int8 may be served; it must measure the
sessions the service runs, with the same threads, spinning and precision hint, or it
measures something else. So every session is opened here, with its settings passed as
plain arguments (the core never reads the service's settings). Import-light: ONNX Runtime
and OpenVINO are imported only when a session is opened or a capability asked for.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from bonexr.errors import BundleError

#: Reduced precisions, fastest first (what ``auto`` tries), with the CPU capability each
#: needs in OpenVINO's ``OPTIMIZATION_CAPABILITIES``.
REDUCED: tuple[tuple[str, str], ...] = (("int8", "INT8"), ("bf16", "BF16"))
#: OpenVINO's inference-precision hint per precision (an int8 IR runs its unquantised
#: layers in fp32: the export's gate measured it so).
OPENVINO_HINT = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}
CPU_PROVIDERS: tuple[str, ...] = ("CPUExecutionProvider",)


@dataclass(frozen=True)
class ModelIO:
    """A model's first input and first output shape; ``None`` for a dynamic dimension.
    ``extra_outputs`` are the shapes of its further outputs (a part model's heat map)."""

    input_shape: tuple[int | None, ...]
    output_shape: tuple[int | None, ...]
    extra_outputs: tuple[tuple[int | None, ...], ...] = ()


def _dims(shape: Sequence[Any]) -> tuple[int | None, ...]:
    return tuple(d if isinstance(d, int) else None for d in shape)


def session_io(session: Any) -> ModelIO:
    """The :class:`ModelIO` of an open ``onnxruntime.InferenceSession``."""
    outputs = [_dims(o.shape) for o in session.get_outputs()]
    return ModelIO(_dims(session.get_inputs()[0].shape), outputs[0], tuple(outputs[1:]))


class ModelSession(Protocol):
    """One loaded model: every output for a float32 ``(N, S, S, 1)`` batch."""

    def run(self, x: np.ndarray) -> list[np.ndarray]: ...

    def io(self) -> ModelIO: ...


def onnx_session(path: Path, *, threads: int = 0, providers: Sequence[str] = CPU_PROVIDERS) -> Any:
    """An ``onnxruntime.InferenceSession`` as the service runs it; the only place one is
    built. ``threads`` 0 means ONNX Runtime's default (all cores)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    # One thread pool per session: with spinning on, the pools of the router and the part
    # models spin against each other (and the HTTP threads) on a small CPU -- measured 2x
    # slower two-stage inference on 2 cores. Idle threads should sleep instead.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=list(providers))
    except Exception as exc:
        raise BundleError(f"ONNX Runtime cannot open {Path(path).name}: {exc}") from exc


class OnnxRuntimeSession:
    """A model in ONNX Runtime (CPU or CUDA), outputs as float64."""

    def __init__(
        self, path: Path, *, threads: int = 0, providers: Sequence[str] = CPU_PROVIDERS
    ) -> None:
        self.session = onnx_session(path, threads=threads, providers=providers)
        self.input_name = self.session.get_inputs()[0].name
        self.providers = list(self.session.get_providers())

    def run(self, x: np.ndarray) -> list[np.ndarray]:
        return [np.asarray(o, np.float64) for o in self.session.run(None, {self.input_name: x})]

    def io(self) -> ModelIO:
        return session_io(self.session)


class OpenVinoSession:
    """A model compiled by OpenVINO for the CPU at ``precision`` (its hint), latency mode."""

    def __init__(self, path: Path, *, precision: str, threads: int = 0) -> None:
        import openvino as ov

        config: dict[str, Any] = {
            "INFERENCE_PRECISION_HINT": OPENVINO_HINT[precision],
            "PERFORMANCE_HINT": "LATENCY",
        }
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
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
