"""The eligibility gate as the service and ``bonexr predict`` apply it.

The rule is :func:`bonexr.eligibility.metadata_refusal`; this module only decides what a
refusal becomes under ``BONEXR_ELIGIBILITY``: a :class:`~service.domain.errors.NotEligibleError`
(``enforce``, the default) or a warning on the answer (``warn``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from bonexr.eligibility import metadata_refusal
from bonexr.imaging import DecodedImage
from service.domain.errors import NotEligibleError

Mode = Literal["enforce", "warn"]


def screen_metadata(
    decoded: DecodedImage, mode: Mode, known_parts: Sequence[str] | None = None
) -> tuple[str, ...]:
    """Warnings to add (``warn``), or raise the 422 refusal (``enforce``); () when eligible.

    ``known_parts``: the loaded bundle's router classes (None while none is loaded)."""
    refusal = metadata_refusal(decoded.modality, decoded.body_part, known_parts)
    if refusal is None:
        return ()
    if mode == "enforce":
        raise NotEligibleError(refusal.detail, refusal.reason, {refusal.reason: refusal.value})
    return (refusal.detail,)
