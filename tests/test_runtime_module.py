"""One place opens models: the export's precision gate, the benchmarks and serving all get
their sessions from :mod:`bonexr.runtime`, so the gate measures the sessions that serve."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np

from bonexr.runtime import OnnxRuntimeSession, onnx_session
from training import precision

ROOT = Path(__file__).resolve().parents[1]
#: Calls that open a model in a runtime.
OPENERS = {"InferenceSession", "compile_model"}


def opener_calls() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for package in ("bonexr", "service", "training", "bench"):
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Call):
                    func = node.func
                    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
                    if name in OPENERS:
                        found.setdefault(path.relative_to(ROOT).as_posix(), []).append(name)
    return found


def test_sessions_are_opened_only_in_the_runtime_module() -> None:
    assert opener_calls() == {"bonexr/runtime.py": ["InferenceSession", "compile_model"]}


def test_a_session_has_the_serving_options(untrained_bundle: Path) -> None:
    """Spinning off and the requested threads, for every caller (gate included)."""
    session = onnx_session(untrained_bundle / "hand.onnx", threads=1)
    options = session.get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert options.intra_op_num_threads == 1 and options.inter_op_num_threads == 1


def test_the_gate_reference_is_the_serving_session(untrained_bundle: Path) -> None:
    path = untrained_bundle / "hand.onnx"
    x = np.random.default_rng(0).uniform(
        0, 255, (2, *OnnxRuntimeSession(path).io().input_shape[1:])
    )
    x = x.astype(np.float32)
    np.testing.assert_array_equal(precision._ort(path)(x), OnnxRuntimeSession(path).run(x)[0])
