"""The eligibility policy, decided in one place for every door and every gate.

The rules that find a refusal are :func:`bonexr.eligibility.metadata_refusal` (the DICOM
header: Modality, BodyPartExamined) and the content gate
(:meth:`service.domain.rules.AnswerRules.screen_content`). This module only decides what a
refusal becomes under ``BONEXR_ELIGIBILITY``: a refusal value (``enforce``, the default),
which each door reports its own way, or a warning on an answer given anyway (``warn``).
The upload, ``bonexr predict``, STOW-RS and C-STORE all pass through :func:`screen_header`,
so a CT slice is refused (or warned about) the same way whichever door it came in by.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from bonexr.eligibility import metadata_refusal
from service.domain.answers import Refusal

Mode = Literal["enforce", "warn"]

#: How a refusal reads when ``warn`` answers anyway.
WARNED = "not eligible (BONEXR_ELIGIBILITY=warn, answered anyway)"


@dataclass(frozen=True)
class HeaderScreen:
    """The header gate's outcome for one image: a refusal (``enforce``), warnings
    (``warn``), or neither."""

    refusal: Refusal | None = None
    warnings: tuple[str, ...] = ()


def under_policy(found: Sequence[Refusal], mode: Mode) -> tuple[list[Refusal], list[str]]:
    """``(refusals, warnings)``: the refusals themselves under ``enforce``; under ``warn``
    none, and a warning per refusal naming the view and why."""
    if mode == "enforce":
        return list(found), []
    return [], [_warning(r) for r in found]


def _warning(refusal: Refusal) -> str:
    if refusal.reason == "content":
        return f"{WARNED}: {refusal.view} (score {refusal.score:.1f}): {refusal.detail}"
    return refusal.detail


def screen_header(
    view: str,
    modality: str | None,
    body_part: str | None,
    mode: Mode,
    known_parts: Sequence[str] | None = None,
) -> HeaderScreen:
    """The header gate under the policy. ``known_parts``: the loaded bundle's router
    classes (None while none is loaded)."""
    found = metadata_refusal(modality, body_part, known_parts)
    if found is None:
        return HeaderScreen()
    refusal = Refusal(view, found.reason, found.detail, value=found.value)
    refused, warnings = under_policy([refusal], mode)
    return HeaderScreen(refused[0] if refused else None, tuple(warnings))
