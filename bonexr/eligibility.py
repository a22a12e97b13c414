"""Which images the models may judge at all, from what the file says about itself.

A bundle's models were trained on projection radiographs of the body parts its router
knows (MURA's upper-limb study types; FracAtlas's hand, leg, hip and shoulder). A DICOM
file names its modality and, often, the body part examined; when either says the image is
something else (a CT slice, a chest film, a knee for a bundle that never saw one), no
verdict is honest, so the image is refused with the reason before any model runs. Files
without those tags (PNG, JPEG, WebP, DICOM without them) pass this gate; the content gate
judges the pixels.

One rule for the service's uploads, the DICOM node, ``bonexr predict`` and the training
evaluation.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from bonexr.labels import ALL_BODY_PARTS, normalize_body_part

#: DICOM Modality values of projection radiography (computed and digital radiography).
RADIOGRAPH_MODALITIES = frozenset({"CR", "DX"})

#: Ambiguous BodyPartExamined values that may well be an arm, or a leg.
_UPPER = frozenset(
    {"EXTREMITY", "UPPER EXTREMITY", "UPPEREXTREMITY", "UPPER LIMB", "UPPER_LIMB",
     "UPR EXTREMITY", "UP_EXM"}
)  # fmt: skip
_LOWER = frozenset(
    {"EXTREMITY", "LOWER EXTREMITY", "LOWEREXTREMITY", "LOWER LIMB", "LOWER_LIMB", "LOW_EXM"}
)

#: BodyPartExamined values (DICOM CID 4031 defined terms and common variants) of each part
#: of the vocabulary, with the ambiguous values of its limb. A knee or a foot is not a
#: "leg" here: no training set so far had them named as such.
DICOM_TERMS: dict[str, frozenset[str]] = {
    "ELBOW": frozenset({"ELBOW"}) | _UPPER,
    "FINGER": frozenset({"FINGER", "THUMB"}) | _UPPER,
    "FOREARM": frozenset({"FOREARM"}) | _UPPER,
    "HAND": frozenset({"HAND", "THUMB", "FINGER"}) | _UPPER,
    "HUMERUS": frozenset({"HUMERUS", "ARM", "UPPER ARM", "UPPERARM"}) | _UPPER,
    "SHOULDER": frozenset({"SHOULDER", "CLAVICLE", "SCAPULA"}) | _UPPER,
    "WRIST": frozenset({"WRIST"}) | _UPPER,
    "LEG": frozenset({"LEG", "LOWER LEG", "TIBIA", "FIBULA", "FEMUR", "THIGH", "ANKLE"}) | _LOWER,
    "HIP": frozenset({"HIP", "PELVIS"}),
}
assert set(DICOM_TERMS) == set(ALL_BODY_PARTS), "a body part without its DICOM terms"


def accepted_terms(known_parts: Iterable[str]) -> frozenset[str]:
    """The BodyPartExamined values a bundle whose router knows ``known_parts`` accepts."""
    return frozenset().union(*(DICOM_TERMS[normalize_body_part(p)] for p in known_parts))


@dataclass(frozen=True)
class Refusal:
    """Why an image is not eligible: ``reason`` is a stable code, ``detail`` a sentence."""

    reason: str  # "modality" or "body_part"
    value: str
    detail: str


def metadata_refusal(
    modality: str | None, body_part: str | None, known_parts: Iterable[str] | None = None
) -> Refusal | None:
    """The refusal the file's own tags call for, or None when they allow a verdict.

    ``known_parts``: the body parts the bundle's router knows (its classes); None (no
    bundle yet) accepts any part of the vocabulary.
    """
    parts = [normalize_body_part(p) for p in (known_parts or ALL_BODY_PARTS)]
    named = ", ".join(p.lower() for p in parts)
    if modality and modality.upper() not in RADIOGRAPH_MODALITIES:
        return Refusal(
            "modality",
            modality,
            f"not eligible: the DICOM Modality is {modality}, not a projection radiograph "
            f"(CR or DX); this model only judges X-ray radiographs of: {named}",
        )
    if body_part and body_part.strip().upper() not in accepted_terms(parts):
        return Refusal(
            "body_part",
            body_part,
            f"not eligible: the DICOM BodyPartExamined is {body_part}, not a part this model "
            f"knows; it only judges radiographs of: {named}",
        )
    return None
