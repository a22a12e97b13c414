"""The label schema: body parts and abnormality labels, in MURA's terms and the API's.

One spelling inside, converted only at the edges. Internally a body part is always the
upper-case short form (``ELBOW``); everything read from outside (MURA's ``XR_ELBOW``, the
peer layout's ``Elbow``, a flag's ``elbow``) goes through :func:`normalize_body_part`, and
everything written out uses one of the three edge forms below:

* :func:`display_name` -> ``Elbow``: the API's ``bone_type``, manifests, reports;
* :func:`model_key` -> ``elbow``: model and file names (``elbow.onnx``), CLI values;
* :func:`study_type` -> ``XR_ELBOW``: MURA's folder names.
"""

from __future__ import annotations

from collections.abc import Iterable

from bonexr.errors import ConfigError

#: Name of the router model (body-part classifier) in bundles, manifests and file names;
#: every other model is named by its body part.
ROUTER = "router"

#: The seven MURA-v1.1 study types, in MURA's order (the MURA reader and the synthetic
#: generator know these; MURA's folders are ``XR_<PART>``).
MURA_BODY_PARTS: tuple[str, ...] = (
    "ELBOW",
    "FINGER",
    "FOREARM",
    "HAND",
    "HUMERUS",
    "SHOULDER",
    "WRIST",
)

#: Body parts that real data sets add beyond MURA's seven (FracAtlas: leg, hip). A new
#: part is one entry here; nothing else in the code names a part by a string literal.
EXTRA_BODY_PARTS: tuple[str, ...] = ("LEG", "HIP")

#: The whole vocabulary, in its canonical order (MURA's, then the extra parts): what a
#: router may learn and an answer may name.
ALL_BODY_PARTS: tuple[str, ...] = (*MURA_BODY_PARTS, *EXTRA_BODY_PARTS)

#: The body parts a default configuration routes between.
DEFAULT_BODY_PARTS: tuple[str, ...] = ("ELBOW", "HAND", "SHOULDER")

#: MURA's study label: 1 / "positive" means abnormal (fracture, hardware, other findings).
LABEL_ABNORMAL = 1
LABEL_NORMAL = 0

#: What every door calls the two outcomes: the API, the CLI's CSVs, the worklist, its
#: export, the DICOM report and the page (until 0.7.0 the API said "fractured").
RESULT_ABNORMAL = "abnormal"
RESULT_NORMAL = "normal"

STUDY_SUFFIX_TO_LABEL = {"positive": LABEL_ABNORMAL, "negative": LABEL_NORMAL}

#: How tables and reports name the two labels.
LABEL_NAMES: dict[int, str] = {LABEL_NORMAL: "normal", LABEL_ABNORMAL: "abnormal"}


def normalize_body_part(name: str) -> str:
    """Map ``XR_ELBOW``, ``Elbow``, ``elbow`` or ``ELBOW`` to ``ELBOW``.

    Raises :class:`ConfigError` naming the valid choices for anything else, so a typo in a
    flag or env var fails loudly instead of silently training on nothing.
    """
    key = str(name).strip().upper()
    if key.startswith("XR_"):
        key = key[3:]
    if key not in ALL_BODY_PARTS:
        valid = ", ".join(p.lower() for p in ALL_BODY_PARTS)
        raise ConfigError(f"unknown body part {name!r}; valid body parts are: {valid}")
    return key


def normalize_body_parts(names: Iterable[str] | str) -> tuple[str, ...]:
    """Normalise a list (or comma-separated string) of body parts, keeping order, no duplicates."""
    if isinstance(names, str):
        names = [n for n in names.split(",") if n.strip()]
    parts: list[str] = []
    for name in names:
        part = normalize_body_part(name)
        if part not in parts:
            parts.append(part)
    if not parts:
        raise ConfigError("at least one body part must be configured")
    return tuple(parts)


def study_type(part: str) -> str:
    """``ELBOW`` -> ``XR_ELBOW`` (MURA's folder name)."""
    return f"XR_{normalize_body_part(part)}"


def model_key(part: str) -> str:
    """``ELBOW`` -> ``elbow`` (model and file names, CLI values)."""
    return normalize_body_part(part).lower()


def display_name(part: str) -> str:
    """``ELBOW`` -> ``Elbow`` (the API's ``bone_type`` and the peer layout's folder name)."""
    return normalize_body_part(part).capitalize()


def result_name(abnormal: bool) -> str:
    """The API's word for a decision."""
    return RESULT_ABNORMAL if abnormal else RESULT_NORMAL
