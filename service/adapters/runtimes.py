"""Runtimes behind one small interface: ONNX Runtime (CPU, CUDA) and OpenVINO (CPU).

Both run the bundle's ONNX files, so nothing is converted at deploy time. The engine asks
:func:`choose_runtime` once, opens one :class:`bonexr.runtime.ModelSession` per model with
:func:`open_session`, and never needs to know which runtime answers. The sessions are
:mod:`bonexr.runtime`'s, the same the export's precision gate measures.

Precision is an accuracy decision, not a speed knob: OpenVINO's int8 (the bundle's NNCF
IR files, VNNI/AMX kernels) and bf16 (the ONNX files with the bf16 hint, AMX on this class
of CPU) are used only when the bundle's manifest says the export's label-free gate allowed
them (``precisions.<name>.allowed``, written by the export), and the
engine checks at load that they reproduce ONNX Runtime's fp32 outputs within the recorded
tolerance.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from bonexr.errors import BundleError
from bonexr.runtime import (
    CPU_PROVIDERS,
    REDUCED,
    ModelSession,
    OnnxRuntimeSession,
    OpenVinoSession,
    openvino_capabilities,
)

if TYPE_CHECKING:
    from bonexr.bundle import Manifest
    from service.settings import Settings


@dataclass(frozen=True)
class RuntimeChoice:
    runtime: str  # "onnxruntime" | "openvino"
    precision: str  # "fp32" | "bf16" | "int8"
    reason: str  # why, for the log, /ready and /model
    providers: tuple[str, ...] = ()  # ONNX Runtime execution providers

    def describe(self) -> str:
        where = f" ({', '.join(self.providers)})" if self.providers else ""
        return f"{self.runtime} {self.precision}{where}: {self.reason}"


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
    """Open one model as ``choice`` says, with the serving settings (threads); the
    sessions themselves are :mod:`bonexr.runtime`'s, shared with the export's gate."""
    threads = settings.intra_op_threads
    if choice.runtime == "openvino":
        return OpenVinoSession(path, precision=choice.precision, threads=threads)
    return OnnxRuntimeSession(path, threads=threads, providers=choice.providers or CPU_PROVIDERS)
