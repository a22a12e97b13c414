"""Builders of small model bundles for tests (random-init; no downloads)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bonexr.labels import DEFAULT_BODY_PARTS


def make_untrained_bundle(
    destination: Path,
    *,
    input_size: int = 64,
    backbone: str = "tiny",
    body_parts: tuple[str, ...] = DEFAULT_BODY_PARTS,
    router_parts: tuple[str, ...] | None = None,
    seed: int = 0,
) -> Path:
    """Export random-init models through the real export path (ONNX + parity + manifest)."""
    from training.export import export_random_init_bundle

    export_random_init_bundle(
        destination,
        input_size=input_size,
        backbone=backbone,
        body_parts=body_parts,
        router_parts=router_parts,
        seed=seed,
    )
    return destination


def write_as_exported(bundle: Path, raw: dict[str, Any]) -> None:
    """Write ``raw`` as ``manifest.json`` the way an export of it would: with its field
    hashes and version recomputed (a test's stand-in for a bundle exported that way)."""
    from bonexr.bundle import Manifest, rewrite_manifest

    rewrite_manifest(bundle, Manifest.model_validate(raw))


def write_as_legacy(bundle: Path, raw: dict[str, Any]) -> None:
    """Write ``raw`` as a bundle exported before field hashes: none, and a version over
    the model files only."""
    from bonexr.bundle import content_version

    raw.pop("field_hashes", None)
    raw["version"] = content_version(raw["files"])
    (bundle / "manifest.json").write_text(json.dumps(raw))
