"""An image as it enters triage through any door: decoded under the limits, its header
facts read, the eligibility gate applied (:func:`read_image`).

Why one function: the upload, STOW-RS, C-STORE and ``bonexr predict`` must refuse, warn
about and decode the same bytes the same way; each door only says where the bytes came
from (``provenance``) and reports the outcome its own way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from bonexr.imaging import DecodedImage, decode_upload
from service.domain.policy import HeaderScreen, screen_header
from service.settings import Settings

#: Where an image came from: ``POST /upload``, a DICOM instance (STOW-RS or C-STORE), a
#: file read by ``bonexr predict``.
Provenance = Literal["upload", "dicom", "file"]


@dataclass(frozen=True)
class Intake:
    """A decoded image, where it came from, and the header gate's outcome."""

    provenance: Provenance
    decoded: DecodedImage
    screen: HeaderScreen

    @property
    def warnings(self) -> tuple[str, ...]:
        """The decoder's warnings, then the gate's (``BONEXR_ELIGIBILITY=warn``)."""
        return (*self.decoded.warnings, *self.screen.warnings)


def decode_within_limits(data: bytes, settings: Settings) -> DecodedImage:
    """Decode untrusted bytes under ``settings``' pixel and decoded-memory limits."""
    return decode_upload(
        data, max_pixels=settings.max_pixels, max_decoded_bytes=settings.max_decoded_bytes
    )


def read_image(
    data: bytes,
    settings: Settings,
    known_parts: Sequence[str] | None,
    *,
    provenance: Provenance,
    view: str = "",
) -> Intake:
    """Decode ``data`` (an :class:`~bonexr.errors.ImageError` when it cannot be) and apply
    the header gate under ``BONEXR_ELIGIBILITY``. ``known_parts``: the loaded bundle's
    router classes (None while none is loaded)."""
    decoded = decode_within_limits(data, settings)
    screen = screen_header(
        view, decoded.modality, decoded.body_part, settings.eligibility, known_parts
    )
    return Intake(provenance, decoded, screen)
