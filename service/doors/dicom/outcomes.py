"""Triage errors -> what the DICOM node does with them: one table.

An instance the node cannot take is answered to its sender with a DICOM status (C-STORE
status, or the STOW-RS FailureReason); a refusal of a view or a study is written into the
report (the SR's text) and the instance is kept; an error that says nothing about the
study (not ready, overloaded) leaves it waiting to be answered later. ``docs/api.md``
prints this table beside the HTTP and ``bonexr predict`` ones.
"""

from __future__ import annotations

from bonexr.errors import BundleError, ImageError
from service.domain.errors import (
    InvalidStudyError,
    NoPartModelError,
    NotEligibleError,
    NotReadyError,
    OverloadedError,
    StoreFullError,
    StoreUnavailableError,
    by_class,
)

#: DICOM failure codes (PS3.4 C-STORE statuses, reused as STOW-RS FailureReason values).
CANNOT_UNDERSTAND = 0xC000
OUT_OF_RESOURCES = 0xA700
DATASET_DOES_NOT_MATCH = 0xA900

#: The status an instance the node cannot take is refused with (a subclass takes its
#: base's entry; anything else the node cannot decode or store is CANNOT_UNDERSTAND).
INSTANCE_STATUS: dict[type[Exception], int] = {
    StoreFullError: OUT_OF_RESOURCES,
    StoreUnavailableError: OUT_OF_RESOURCES,
    ImageError: CANNOT_UNDERSTAND,
}

#: What each error becomes in the node, for the docs (and read by nothing else).
DICOM_OUTCOME: dict[type[Exception], str] = {
    ImageError: "instance refused: status 0xC000 (cannot understand); nothing recorded",
    StoreFullError: "instance refused: status 0xA700 (out of resources); nothing recorded",
    StoreUnavailableError: "instance refused: status 0xA700 (out of resources)",
    NotEligibleError: "instance kept, view not scored: the SR gives the reason per view",
    NoPartModelError: "report without a finding: the SR says which part has no model",
    InvalidStudyError: "report without a finding: the SR says why (mixed parts, too many views)",
    NotReadyError: "study kept and answered later (no report yet)",
    OverloadedError: "study kept and answered later (no report yet)",
    BundleError: "study kept and answered once a bundle loads",
}


def instance_status(exc: Exception) -> int:
    """The DICOM status an instance is refused with for ``exc``."""
    return by_class(INSTANCE_STATUS, type(exc), CANNOT_UNDERSTAND)
