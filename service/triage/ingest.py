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

from bonexr.imaging import encode_png, prepare_pixels
from service.domain.answers import Refusal
from service.domain.intake import Intake, Provenance, read_image
from service.triage.services import Services


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
    engine = services.engine
    known = list(engine.manifest.router.classes) if engine.manifest is not None else None
    with services.decode_slot():
        intake = read_image(data, services.settings, known, provenance=provenance, view=view)
        if intake.screen.refusal is not None:
            return Ingested(intake)
        png = encode_png(intake.decoded.image)
        size = engine.input_size if engine.ready else None
        pixels = prepare_pixels(intake.decoded.image, size) if size else None
    stored = services.store.save(png, body_part=intake.decoded.body_part)
    if pixels is not None and size is not None:
        services.pixels.put(stored.filename, size, pixels)
    services.metrics.uploads.labels("new" if stored.created else "duplicate").inc()
    return Ingested(intake, stored.filename, stored.created, stored.size)
