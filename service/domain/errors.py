"""What can go wrong in triage, as plain exceptions: no HTTP status, no DICOM status.

Why no status here: the same refusal reaches a client as a 422 (HTTP), an ``errors.csv``
row (``bonexr predict``) or a report text (the DICOM node). Each door maps these classes to
its own form in one table (:mod:`service.doors.http.errors`, :mod:`service.doors.outcomes`),
and ``docs/api.md`` prints the three side by side from those tables.

Every error has a stable machine ``code`` and a message safe to show (never a path or
patient data); :meth:`TriageError.fields` are the extra values a client can act on.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from bonexr.errors import (
    BundleError,
    ImageError,
    ImageTooLargeError,
    UndecodableImageError,
    UnsupportedFormatError,
)

#: A door's form of an error (an HTTP status, a DICOM status, a sentence).
V = TypeVar("V")


class TriageError(Exception):
    """An error whose message is safe to show the client."""

    #: stable machine-readable code, the same through every door
    code: str = "error"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail

    def fields(self) -> dict[str, Any]:
        """Values beside ``detail`` that a client can act on (none by default)."""
        return {}


class UploadNotFoundError(TriageError):
    """No stored upload by that name (expired, deleted, never sent)."""

    code = "upload_not_found"


class PayloadTooLargeError(TriageError):
    """More bytes than the limit, found while reading the body."""

    code = "too_large"


class InvalidFilenameError(TriageError):
    code = "invalid_filename"


class NotReadyError(TriageError):
    """No bundle loaded (loading, refused, shutting down), or a request past its deadline."""

    code = "not_ready"


class InvalidRequestError(TriageError):
    """A well-formed request whose options contradict each other."""

    code = "invalid_request"


class InvalidStudyError(TriageError):
    """A well-formed study request that cannot be answered as asked."""

    code = "invalid_study"


class NoPartModelError(TriageError):
    """The router recognised a body part this bundle has no abnormality model for.

    ``bone_type`` goes with it: the router's answer is still useful (it is not another
    part's verdict)."""

    code = "unsupported_body_part"

    def __init__(self, detail: str, bone_type: str) -> None:
        super().__init__(detail)
        self.bone_type = bone_type

    def fields(self) -> dict[str, Any]:
        return {"body_part": self.bone_type, "bone_type": self.bone_type}  # old name until 0.8


class NotEligibleError(TriageError):
    """An image the model was never trained to judge.

    ``reason`` is a stable code (``modality``, ``body_part``, ``content``); ``values`` go
    beside it (the value that decided, e.g. ``{"modality": "CT"}``, or each refused view).
    """

    code = "not_eligible"

    def __init__(self, detail: str, reason: str, values: dict[str, Any]) -> None:
        super().__init__(detail)
        self.reason = reason
        self.values = values

    def fields(self) -> dict[str, Any]:
        return {"reason": self.reason, **self.values}


class UnknownOperatingPointError(TriageError):
    """The request named an operating point the bundle does not have."""

    code = "unknown_operating_point"

    def __init__(self, detail: str, available: list[str]) -> None:
        super().__init__(detail)
        self.available = available

    def fields(self) -> dict[str, Any]:
        return {"operating_points": self.available}


class ModelCardMissingError(TriageError):
    """The loaded bundle ships no model card."""

    code = "no_model_card"


class HeatmapUnavailableError(TriageError):
    """The loaded bundle's models have no heat-map output."""

    code = "no_heatmap"


class OverloadedError(TriageError):
    """The queue is full: refused at once, before any work, with a time to retry after."""

    code = "overloaded"

    def __init__(self, detail: str, retry_after_s: int) -> None:
        super().__init__(detail)
        self.retry_after_s = retry_after_s


class DuplicateFieldError(TriageError):
    code = "duplicate_field"


class MalformedBodyError(TriageError):
    """A body that is not what the endpoint takes at all (a broken multipart/related)."""

    code = "malformed_body"


class UnsupportedMediaTypeError(TriageError):
    """A request or part of a media type the endpoint does not take."""

    code = "unsupported_media_type"


class StoreUnavailableError(TriageError):
    """The upload store is missing, read-only or not permitted: the server's fault, for now."""

    code = "store_unavailable"


class RecordNotFoundError(TriageError):
    """No recorded study with that id."""

    code = "record_not_found"


class InvalidCursorError(TriageError):
    """A worklist or audit cursor that does not parse."""

    code = "invalid_cursor"


class ForbiddenError(TriageError):
    """A valid key that may not do this (an admin-only action)."""

    code = "forbidden"


class RecordsUnavailableError(TriageError):
    """The records database is down, read-only or full: nothing already recorded is lost;
    the request can be retried."""

    code = "records_unavailable"


class StoreFullError(TriageError):
    """No space left in the upload store."""

    code = "store_full"


class InferenceFailedError(TriageError):
    """The models raised on a valid input: a server fault."""

    code = "inference_failed"


class BundleRejectedError(TriageError):
    """A bundle offered for a hot swap failed its checks (files, contract, a smoke answer):
    it is not served, and the bundle serving now goes on."""

    code = "bundle_rejected"


class SwapInProgressError(TriageError):
    """Another swap is loading a bundle now: one at a time."""

    code = "swap_in_progress"


def all_triage_errors() -> list[type[TriageError]]:
    """Every concrete error class above, for the doors' tables and their completeness test."""
    return sorted(TriageError.__subclasses__(), key=lambda cls: cls.__name__)


#: Codes for the shared core's image and bundle errors (:mod:`bonexr.errors`): they reach
#: clients through the same doors.
CORE_ERROR_CODES: dict[type[Exception], str] = {
    UnsupportedFormatError: "unsupported_format",
    ImageTooLargeError: "too_large",
    UndecodableImageError: "undecodable",
    ImageError: "bad_image",
    BundleError: "bundle_refused",
}


def by_class(table: Mapping[type[Exception], V], cls: type[Exception], default: V) -> V:
    """The entry of ``cls``, or of its nearest base class, in a door's table (``default``
    when none is there): how every door maps an error it has no row of its own for."""
    for base in cls.__mro__:
        if base in table:
            return table[base]
    return default


def code_of(cls: type[Exception]) -> str:
    """The stable code of a triage or core error class ("error" for anything else)."""
    if issubclass(cls, TriageError):
        return cls.code
    return by_class(CORE_ERROR_CODES, cls, "error")


def error_code(exc: Exception) -> str:
    """The stable code of a triage or core error ("error" for anything else)."""
    return code_of(type(exc))
