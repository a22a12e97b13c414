"""Which images the models may judge at all, from what the file says about itself.

The models were trained on projection radiographs of the upper limb (MURA's seven study
types). A DICOM file names its modality and, often, the body part examined; when either
says the image is something else (a CT slice, a chest film), no verdict is honest, so the
image is refused with the reason before any model runs. Files without those tags (PNG,
JPEG, WebP, DICOM without them) pass this gate; the content gate judges the pixels.

One rule for the service's uploads, ``bonexr predict`` and the training evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass

#: DICOM Modality values of projection radiography (computed and digital radiography).
RADIOGRAPH_MODALITIES = frozenset({"CR", "DX"})

#: BodyPartExamined values of the upper limb and its girdle (DICOM CID 4031 defined terms
#: and common variants), plus the ambiguous ones that may well be an arm.
UPPER_LIMB_BODY_PARTS = frozenset(
    {
        "ELBOW", "HAND", "SHOULDER", "FINGER", "FOREARM", "HUMERUS", "WRIST", "ARM",
        "UPPER ARM", "UPPERARM", "THUMB", "CLAVICLE", "SCAPULA",
        "EXTREMITY", "UPPER EXTREMITY", "UPPEREXTREMITY", "UPPER LIMB", "UPPER_LIMB",
        "UPR EXTREMITY", "UP_EXM",
    }
)  # fmt: skip


@dataclass(frozen=True)
class Refusal:
    """Why an image is not eligible: ``reason`` is a stable code, ``detail`` a sentence."""

    reason: str  # "modality" or "body_part"
    value: str
    detail: str


def metadata_refusal(modality: str | None, body_part: str | None) -> Refusal | None:
    """The refusal the file's own tags call for, or None when they allow a verdict."""
    if modality and modality.upper() not in RADIOGRAPH_MODALITIES:
        return Refusal(
            "modality",
            modality,
            f"not eligible: the DICOM Modality is {modality}, not a projection radiograph "
            "(CR or DX); this model only judges X-ray radiographs of the upper limb",
        )
    if body_part and body_part.upper() not in UPPER_LIMB_BODY_PARTS:
        return Refusal(
            "body_part",
            body_part,
            f"not eligible: the DICOM BodyPartExamined is {body_part}, not an upper limb; "
            "this model only judges elbow, hand, shoulder and the other MURA study types",
        )
    return None
