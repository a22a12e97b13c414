"""The bundle contract: what a bundle must promise for this code to feed and read its models.

A bundle's files can be intact (every sha256 matches) and still be wrong for the running
code: made by another preprocessing recipe, for another input size, with a router whose
output does not match its class list. :func:`check_input_contract` compares the manifest's
``input`` block with what :mod:`bonexr.imaging` produces; :func:`check_model_io` compares
the ONNX models' real input and output shapes with the manifest. Every refusal names the
field, what this code expects and what the bundle has.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bonexr.errors import BundleError
from bonexr.imaging import (
    INPUT_CHANNELS,
    INPUT_DTYPE,
    INPUT_NORMALIZATION,
    INPUT_VALUE_RANGE,
    PREPROCESSING_ID,
)
from bonexr.labels import ROUTER
from bonexr.runtime import ModelIO, onnx_session, session_io

if TYPE_CHECKING:
    from bonexr.manifest import Manifest


def onnx_file_io(path: Path) -> ModelIO:
    """Open an ONNX file in ONNX Runtime (CPU) just to read its input and output shapes."""
    return session_io(onnx_session(path))


def check_input_contract(manifest: Manifest) -> None:
    """The manifest's ``input`` block describes the pixels this code prepares."""
    spec = manifest.input
    expected: dict[str, tuple[object, object]] = {
        "input.preprocessing": (PREPROCESSING_ID, spec.preprocessing),
        "input.channels": (INPUT_CHANNELS, spec.channels),
        "input.dtype": (INPUT_DTYPE, spec.dtype),
        "input.value_range": (tuple(INPUT_VALUE_RANGE), tuple(spec.value_range)),
        "input.normalization": (INPUT_NORMALIZATION, spec.normalization),
    }
    for field, (wanted, found) in expected.items():
        if wanted != found:
            raise BundleError(
                f"{field}: this code prepares {wanted!r} but the bundle was made for {found!r}"
            )


def check_model_io(manifest: Manifest, io: Mapping[str, ModelIO]) -> None:
    """Each model takes ``(N, size, size, channels)``; the router gives one score per class,
    each part model one probability."""
    size, channels = manifest.input.size, manifest.input.channels
    for name, model in io.items():
        found = model.input_shape
        if len(found) != 4 or found[1:] != (size, size, channels):
            raise BundleError(
                f"input.size: manifest says {size}x{size}x{channels} but the {name} model "
                f"takes {_shape(found)}"
            )
    router = io.get(ROUTER)
    if router is not None:
        classes = manifest.router.classes
        width = router.output_shape[-1] if router.output_shape else None
        if len(router.output_shape) != 2 or width != len(classes):
            raise BundleError(
                f"router.classes: manifest lists {len(classes)} classes ({', '.join(classes)}) "
                f"but the router model outputs {_shape(router.output_shape)}"
            )
        gate = manifest.router.ood
        if gate is not None:
            extra = router.extra_outputs
            score = extra[gate.output - 1] if len(extra) >= gate.output else None
            if score is None or len(score) != 2 or score[1] != 1:
                raise BundleError(
                    f"router.ood: manifest promises a content score (N, 1) as output "
                    f"{gate.output} but the router has "
                    f"{_shape(score) if score else 'no such output'}"
                )
    for part in manifest.parts:
        part_io = io.get(part)
        if part_io is not None and (len(part_io.output_shape) != 2 or part_io.output_shape[1] != 1):
            raise BundleError(
                f"parts.{part}: a part model must output one probability per image (N, 1) "
                f"but it outputs {_shape(part_io.output_shape)}"
            )
        heatmap = manifest.parts[part].heatmap
        if part_io is not None and heatmap is not None:
            extra = part_io.extra_outputs
            cam = extra[heatmap.output - 1] if len(extra) >= heatmap.output else None
            if cam is None or cam[1:] != tuple(heatmap.grid):
                rows, cols = heatmap.grid
                raise BundleError(
                    f"parts.{part}.heatmap: manifest promises a (N, {rows}, {cols}) map as "
                    f"output {heatmap.output} but the model has "
                    f"{_shape(cam) if cam else 'no such output'}"
                )


def _shape(shape: tuple[int | None, ...]) -> str:
    return "(" + ", ".join("N" if d is None else str(d) for d in shape) + ")"


#: Seed of :func:`reference_inputs` (the export and the engine must draw the same images).
REFERENCE_SEED = 20241130


def reference_inputs(size: int) -> Any:
    """Model inputs on which a reduced precision is compared with fp32, at export (to record
    its tolerance) and at load (to check it): noise, black and mid-grey, float32 NHWC."""
    import numpy as np

    rng = np.random.default_rng(REFERENCE_SEED)
    return np.concatenate(
        [
            rng.uniform(0, 255, (3, size, size, 1)),
            np.zeros((1, size, size, 1)),
            np.full((1, size, size, 1), 128.0),
        ]
    ).astype(np.float32)
