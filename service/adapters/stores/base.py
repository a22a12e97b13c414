"""What every upload store shares: the interface, the names, the errors.

Uploads are patient data. A store is content-addressed (the name is the sha256 of the
stored pixel-only PNG), create-if-absent, never shows a partial upload, and keeps derived
files ("sidecars": ``<name>.<kind>``, the DICOM body part and cached heat maps) only while
their upload exists. The implementations sit beside each other
(:mod:`service.adapters.stores.folder`, :mod:`service.adapters.stores.s3`,
:mod:`service.adapters.stores.unusable`);
:mod:`service.adapters.stores.factory` picks one from the settings.
"""

from __future__ import annotations

import errno
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from service.domain.errors import (
    InvalidFilenameError,
    StoreFullError,
    StoreUnavailableError,
)

NAME_RE = re.compile(r"[0-9a-f]{64}\.png")
#: Errors that mean "no space": answered 507.
_FULL = {errno.ENOSPC, errno.EDQUOT}
#: The store is reported full (in /ready) when less than this is free.
MIN_FREE_BYTES = 64 * 1024 * 1024

#: Files beside an upload ``<name>``: ``<name>.<kind>`` (its DICOM BodyPartExamined, cached
#: heat maps). Removed with the upload, and by the sweep once the upload is gone.
SIDECAR_RE = re.compile(r"([0-9a-f]{64}\.png)\.([a-z0-9][a-z0-9.-]{0,63})")
BODY_PART = "bodypart"
TEMP_PREFIX = ".tmp-"
#: Temp files older than this are leftovers of a crash and are removed by :meth:`sweep`.
STALE_TEMP_SECONDS = 3600.0


def store_error(exc: OSError) -> StoreFullError | StoreUnavailableError:
    """A client-safe error for a failed store operation (no paths, no errno text)."""
    if exc.errno in _FULL:
        return StoreFullError("the upload store is full: no upload can be stored now")
    return StoreUnavailableError("the upload store is not writable; try again later")


@dataclass(frozen=True)
class StoredUpload:
    filename: str
    created: bool  # False when identical bytes were already stored
    size: int


def validate_name(filename: str) -> str:
    """``filename`` if it is an upload name (sha256 hex + ``.png``), else 422."""
    if not isinstance(filename, str) or not NAME_RE.fullmatch(filename):
        raise InvalidFilenameError("filename must be 64 lowercase hex digits + '.png'")
    return filename


def sidecar_name(filename: str, kind: str) -> str:
    """``<filename>.<kind>``, checked (a kind is a fixed word of the code, never input)."""
    name = f"{validate_name(filename)}.{kind}"
    if not SIDECAR_RE.fullmatch(name):
        raise ValueError(f"invalid sidecar kind {kind!r}")
    return name


class UploadStore(Protocol):
    """Where uploads live. Every implementation is thread-safe, content-addressed and
    create-if-absent, never exposes a partial upload, and raises 503/507
    (:class:`StoreUnavailableError`, :class:`StoreFullError`) or 404/422 with a clear
    message; ``problem`` says why writes would fail now (for ``/ready``).

    ``save(png, body_part=...)``: the body-part sidecar reflects the *latest* upload of
    those pixels: an upload with DICOM metadata records its BodyPartExamined, an upload
    of the same pixels without it (a PNG, a DICOM without the tag) clears the earlier
    record, so a prediction never uses metadata the current sender did not send.

    ``write_sidecar`` keeps the sidecar only if its upload still exists when the write
    completes (True), else removes it again (False): derived patient data never outlives
    a delete. ``count`` never raises (``/metrics`` must not fail): 0 when unreadable."""

    def ensure(self) -> None: ...

    def problem(self) -> str | None: ...

    def save(self, png: bytes, *, body_part: str | None = None) -> StoredUpload: ...

    def body_part(self, filename: str) -> str | None: ...

    def write_sidecar(self, filename: str, kind: str, data: bytes) -> bool: ...

    def read_sidecar(self, filename: str, kind: str) -> bytes | None: ...

    def read(self, filename: str) -> bytes: ...

    def exists(self, filename: str) -> bool: ...

    def delete(self, filename: str) -> bool: ...

    def names(self) -> Iterator[str]: ...

    def count(self) -> int: ...

    def sweep(self, max_age_seconds: float | None, *, now: float | None = None) -> int: ...
