"""int8 variants of a bundle's models: NNCF post-training quantisation into OpenVINO IR.

Why NNCF rather than ONNX Runtime's quantiser: the int8 variant is served by OpenVINO (the
fastest runtime on this class of CPU: AMX/VNNI int8 kernels), and NNCF is OpenVINO's own
quantiser, which places quantisers where OpenVINO fuses them and keeps per-channel weight
scales. Measured on one ResNet50 224 px here, batch 8: 33.8 ms int8 vs 48.5 ms bf16 vs
237 ms fp32 (OpenVINO).

Calibration uses **training** images of the bundle's own split (at most 300 per part),
never validation or test images (validation judges the precision in
:mod:`training.precision`, test only records it afterwards): the router on
every part's images, each part model on its own part's images, which are the only images it
sees when served (calibrating a part model on other parts' images measurably widened its
activation ranges and flipped more decisions). The ``MIXED`` preset quantises weights
symmetrically and activations asymmetrically, the usual choice for ReLU/BN backbones.
Whether the result may serve is not decided here: the gate measures it.
"""

from __future__ import annotations

import contextlib
import io
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np

from bonexr.imaging import model_input
from bonexr.labels import model_key
from training.precision import PrecisionTestSet

log = logging.getLogger(__name__)

#: Calibration images per model (NNCF's default subset size).
CALIBRATION_IMAGES = 300
#: Below this many images of its own part, a part model is calibrated on every part's.
MIN_PART_IMAGES = 16
#: Folder inside a bundle that holds the int8 OpenVINO IR files.
INT8_DIR = "int8"


def nncf_missing() -> str | None:
    """Why int8 variants cannot be produced here, or None."""
    try:
        import nncf  # noqa: F401
        import openvino  # noqa: F401
    except ImportError as exc:
        return f"int8 needs NNCF and OpenVINO where the bundle is exported ({exc.name} missing)"
    return None


def calibration_rows(calibration: PrecisionTestSet, model_name: str) -> np.ndarray:
    """Which calibration images a model is quantised with (see the module docstring)."""
    everything = np.arange(len(calibration.parts))
    if model_name == "router":
        rows = everything
    else:
        own = np.flatnonzero(
            np.asarray([model_key(p) for p in calibration.parts], dtype=object) == model_name
        )
        rows = own if own.size >= MIN_PART_IMAGES else everything
    if rows.size > CALIBRATION_IMAGES:  # an even spread, reproducible
        rows = rows[np.linspace(0, rows.size - 1, CALIBRATION_IMAGES).round().astype(int)]
    return rows


def quantize_int8(onnx: Path, images: np.ndarray, destination: Path) -> Path:
    """Quantise one ONNX model with NNCF on ``images`` (prepared ``(N, S, S)`` uint8) and
    write it as OpenVINO IR (``destination`` ``.xml`` beside its ``.bin``)."""
    import nncf
    import openvino as ov

    if len(images) == 0:
        raise ValueError(f"no calibration images for {onnx.name}")
    x = model_input(images)
    dataset = nncf.Dataset([x[i : i + 1] for i in range(len(x))])
    # NNCF draws a rich progress bar on stdout: live in a terminal, but in a log file it
    # would leave one bar per model, so it is kept out of non-terminal output.
    quiet = not sys.stdout.isatty()
    with contextlib.redirect_stdout(io.StringIO()) if quiet else contextlib.nullcontext():
        quantized = nncf.quantize(
            ov.convert_model(str(onnx)),
            dataset,
            preset=nncf.QuantizationPreset.MIXED,
            subset_size=len(x),
        )
    destination.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(quantized, str(destination), compress_to_fp16=False)
    return destination


def quantized_share(xml: Path) -> tuple[int, int]:
    """(int8, all) convolution and matmul layers of an IR: how much int8 really covers.

    A layer counts as int8 when its weights are stored as an 8-bit constant (NNCF then
    also quantises its input; OpenVINO runs the pair as one int8 kernel).
    """
    import openvino as ov

    def int8_weights(node: Any) -> bool:
        for _ in range(4):  # Multiply <- (Subtract <-) Convert <- Constant(i8/u8)
            if node.get_type_name() == "Constant":
                return node.get_element_type().get_type_name() in ("i8", "u8")
            if node.get_input_size() == 0:
                return False
            node = node.input_value(0).get_node()
        return False

    model = ov.Core().read_model(str(xml))
    layers = [
        op
        for op in model.get_ordered_ops()
        if op.get_type_name() in ("Convolution", "GroupConvolution", "MatMul")
    ]
    quantized = [op for op in layers if int8_weights(op.input_value(1).get_node())]
    return len(quantized), len(layers)


def produce_int8(
    staging: Path, onnx_files: dict[str, str], calibration: PrecisionTestSet
) -> tuple[dict[str, str], dict[str, dict[str, int]]]:
    """int8 IR for every model in ``onnx_files`` (name -> ONNX file in ``staging``).

    Returns name -> the bundle-relative ``.xml`` (its ``.bin`` lies beside it), and name ->
    how many layers are int8 and how many images calibrated it (for the manifest).
    """
    files, coverage = {}, {}
    for name, onnx in onnx_files.items():
        rows = calibration_rows(calibration, name)
        xml = quantize_int8(
            staging / onnx, calibration.pixels[rows], staging / INT8_DIR / f"{name}.xml"
        )
        done, total = quantized_share(xml)
        log.info(
            "int8 %s: %d of %d layers quantised, %d calibration images",
            name,
            done,
            total,
            len(rows),
        )
        files[name] = xml.relative_to(staging).as_posix()
        coverage[name] = {"int8_layers": done, "layers": total, "calibration_images": len(rows)}
    return files, coverage
