"""Builders of small model bundles for tests (random-init; no downloads)."""

from __future__ import annotations

from pathlib import Path

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
