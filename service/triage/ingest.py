"""One ingest path for every door that stores an image: upload, STOW-RS and C-STORE.

Decode under the limits and apply the header gate (:func:`service.domain.intake.read_image`),
then store the pixel-only PNG under its sha256, keep the prepared model input in the pixel
cache and count it. Runs in a worker thread, inside a decode slot (bounded memory).

A refused image is returned unstored, with its refusal (a value: the upload answers 422,
the DICOM node records the instance as not eligible); an image that cannot be decoded is
the decoder's :class:`~bonexr.errors.ImageError`; a full or missing store the store's
error. ``bonexr predict`` reads files through the same :func:`read_image`, without a store.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bonexr.imaging import encode_png, prepare_pixels
from service.domain.answers import Refusal
from service.domain.intake import Intake, Provenance, read_image
from service.triage.services import Services


@dataclass(frozen=True)
class Read:
    """An image read through the one intake: the model input prepared (None when the gate
    refused it or no bundle is loaded) and, when asked for, its pixel-only PNG."""

    intake: Intake
    pixels: np.ndarray | None = None
    png: bytes | None = None


def read_prepared(
    services: Services, data: bytes, *, provenance: Provenance, view: str = "", png: bool = False
) -> Read:
    """Decode and gate ``data`` and prepare the model input, all inside a decode slot
    (bounded memory); with ``png``, also the pixel-only PNG a store keeps. Blocking."""
    engine = services.engine
    with services.decode_slot():
        intake = read_image(
            data, services.settings, engine.known_parts, provenance=provenance, view=view
        )
        if intake.screen.refusal is not None:
            return Read(intake)
        image = intake.decoded.image
        pixels = prepare_pixels(image, engine.input_size) if engine.ready else None
        return Read(intake, pixels, encode_png(image) if png else None)


@dataclass(frozen=True)
class Ingested:
    """What was stored (``filename`` None when the gate refused the image)."""

    intake: Intake
    filename: str | None = None
    created: bool = False
    stored_bytes: int = 0

    @property
    def refusal(self) -> Refusal | None:
        return self.intake.screen.refusal


def ingest(services: Services, data: bytes, *, provenance: Provenance, view: str = "") -> Ingested:
    """Read, gate and store ``data`` (see the module docstring). Blocking."""
    read = read_prepared(services, data, provenance=provenance, view=view, png=True)
    if read.png is None:  # refused by the gate
        return Ingested(read.intake)
    stored = services.store.save(read.png, body_part=read.intake.decoded.body_part)
    if read.pixels is not None:
        services.pixels.put(stored.filename, services.engine.input_size, read.pixels)
    services.metrics.uploads.labels("new" if stored.created else "duplicate").inc()
    return Ingested(read.intake, stored.filename, stored.created, stored.size)
