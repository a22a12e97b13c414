"""Content-addressed, crash-safe store for uploaded images (which are patient data).

:class:`UploadStore` is the interface the routes use; :func:`open_store` picks the
implementation from ``BONEXR_UPLOAD_STORE``: this module's folder store
(``file:///path``, default ``BONEXR_UPLOAD_DIR``) or :class:`service.s3_store.S3UploadStore`
(``s3://bucket/prefix``) for replicas on several hosts. The folder store:

* The name is the sha256 of the stored bytes, so the same image is stored once and a name
  can never point at different pixels; the client's file name is never used anywhere.
* Only pixel-only PNGs produced by :func:`bonexr.imaging.encode_png` are stored (the caller
  re-encodes), so no EXIF, text chunks or other metadata are kept.
* Writes go to a unique temp file in the same folder (prefix ``.tmp-``, ignored by every
  listing), are fsynced, then linked into place. ``os.link`` is create-if-absent and atomic,
  so two concurrent uploads of the same image cannot both claim to have created it, and a
  reader never sees a partial file. Where hard links are unsupported, ``os.replace`` (also
  atomic; identical content) is used instead.
* Names are validated against a strict pattern before touching the filesystem, so no
  request value can escape the folder.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol
from urllib.parse import unquote, urlparse

from service.errors import (
    InvalidFilenameError,
    StoreFullError,
    StoreUnavailableError,
    UploadNotFoundError,
)

if TYPE_CHECKING:
    from service.settings import Settings

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
    message; ``problem`` says why writes would fail now (for ``/ready``)."""

    def ensure(self) -> None: ...

    def problem(self) -> str | None: ...

    def save(self, png: bytes, *, body_part: str | None = None) -> StoredUpload: ...

    def body_part(self, filename: str) -> str | None: ...

    def write_sidecar(self, filename: str, kind: str, data: bytes) -> None: ...

    def read_sidecar(self, filename: str, kind: str) -> bytes | None: ...

    def read(self, filename: str) -> bytes: ...

    def exists(self, filename: str) -> bool: ...

    def delete(self, filename: str) -> bool: ...

    def names(self) -> Iterator[str]: ...

    def count(self) -> int: ...

    def sweep(self, max_age_seconds: float | None, *, now: float | None = None) -> int: ...


def open_store(settings: Settings) -> UploadStore:
    """The store ``BONEXR_UPLOAD_STORE`` names (default: the ``BONEXR_UPLOAD_DIR`` folder).

    A store that cannot be used (a malformed URL, boto3 not installed) is returned as an
    :class:`UnusableStore`: the service starts, ``/ready`` answers 503 with the reason and
    every upload 503, instead of a crash loop with the reason buried in a log.
    """
    url = settings.upload_store
    if not url:
        return FileUploadStore(settings.upload_dir)
    if url.startswith("file://"):
        parsed = urlparse(url)
        if parsed.netloc not in ("", "localhost") or not parsed.path:
            return UnusableStore(f"upload store: {url!r} is not a file:///absolute/path URL")
        return FileUploadStore(Path(unquote(parsed.path)))
    if url.startswith("s3://"):
        from service.s3_store import S3UploadStore, parse_s3_url

        try:
            parse_s3_url(url)
            import boto3  # noqa: F401
        except ValueError as exc:
            return UnusableStore(f"upload store: {exc}")
        except ImportError:
            return UnusableStore("upload store: s3:// needs boto3 (pip install 'bonexr[s3]')")
        return S3UploadStore(url)
    return UnusableStore("upload store: BONEXR_UPLOAD_STORE must be file:///path or s3://bucket")


class UnusableStore:
    """A store that was configured wrongly: every operation is a 503 with the reason."""

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def _fail(self) -> StoreUnavailableError:
        return StoreUnavailableError(f"{self.reason}; the upload store is not configured")

    def ensure(self) -> None:
        return None

    def problem(self) -> str | None:
        return self.reason

    def save(self, png: bytes, *, body_part: str | None = None) -> StoredUpload:
        raise self._fail()

    def body_part(self, filename: str) -> str | None:
        return None

    def write_sidecar(self, filename: str, kind: str, data: bytes) -> None:
        raise self._fail()

    def read_sidecar(self, filename: str, kind: str) -> bytes | None:
        return None

    def read(self, filename: str) -> bytes:
        validate_name(filename)
        raise self._fail()

    def exists(self, filename: str) -> bool:
        validate_name(filename)
        raise self._fail()

    def delete(self, filename: str) -> bool:
        validate_name(filename)
        raise self._fail()

    def names(self) -> Iterator[str]:
        return iter(())

    def count(self) -> int:
        return 0

    def sweep(self, max_age_seconds: float | None, *, now: float | None = None) -> int:
        return 0


class FileUploadStore:
    """The upload folder. Thread-safe: every operation is a single atomic filesystem call."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    def ensure(self) -> None:
        """Create the folder (owner-only permissions: uploads are patient data)."""
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)

    validate_name = staticmethod(validate_name)

    def path_for(self, filename: str) -> Path:
        return self.directory / self.validate_name(filename)

    def problem(self) -> str | None:
        """Why uploads would fail now (for ``/ready``), or None when the store is usable.

        Probes by creating (and removing) a temp file: permission bits say nothing about a
        read-only mount, a full disk or a process running as root.
        """
        if not self.directory.is_dir():
            return "upload store: the folder does not exist or cannot be created"
        try:
            fd, probe = tempfile.mkstemp(dir=self.directory, prefix=TEMP_PREFIX + "probe-")
            os.close(fd)
            os.unlink(probe)
            free = shutil.disk_usage(self.directory).free
        except OSError as exc:
            return f"upload store: {store_error(exc)}"
        if free < MIN_FREE_BYTES:
            return f"upload store: nearly full ({free // 2**20} MB free)"
        return None

    def save(self, png: bytes, *, body_part: str | None = None) -> StoredUpload:
        """Store ``png`` under its sha256 (see :meth:`_save`), with the DICOM body part
        when given; a failed write leaves no file and raises 507 (no space) or 503
        (read-only, missing or not permitted)."""
        try:
            stored = self._save(png)
            if body_part:
                self.write_sidecar(stored.filename, BODY_PART, body_part.encode())
            return stored
        except OSError as exc:
            raise store_error(exc) from exc

    def body_part(self, filename: str) -> str | None:
        """The BodyPartExamined recorded with an upload, if its DICOM named one."""
        data = self.read_sidecar(filename, BODY_PART)
        if not data:
            return None
        return data.decode(errors="replace")[:32]

    def _sidecar_path(self, filename: str, kind: str) -> Path:
        return self.directory / sidecar_name(filename, kind)

    def write_sidecar(self, filename: str, kind: str, data: bytes) -> None:
        """Write ``<filename>.<kind>`` atomically (temp file in the folder, then rename).
        Raises OSError like any write; callers decide whether it matters."""
        target = self._sidecar_path(filename, kind)
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=TEMP_PREFIX)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(tmp, target)
        finally:
            Path(tmp).unlink(missing_ok=True)

    def read_sidecar(self, filename: str, kind: str) -> bytes | None:
        """``<filename>.<kind>``, or None when there is none (or it cannot be read)."""
        try:
            return self._sidecar_path(filename, kind).read_bytes()
        except OSError:
            return None

    def _save(self, png: bytes) -> StoredUpload:
        """Store ``png`` under its sha256 unless it is already there.

        A re-upload of stored bytes refreshes the file's mtime (its retention clock). If the
        copy vanishes between the checks (a concurrent delete or sweep), it is written again,
        so a returned name always refers to a file that existed when ``save`` returned.
        """
        self.ensure()
        name = hashlib.sha256(png).hexdigest() + ".png"
        final = self.directory / name
        for _ in range(5):
            if self._touch(final):
                return StoredUpload(name, created=False, size=len(png))
            created = self._write_new(png, final)
            if created:
                return StoredUpload(name, created=True, size=len(png))
        raise OSError("upload store: the file kept disappearing while being stored")

    def _write_new(self, png: bytes, final: Path) -> bool:
        """Write through a synced temp file; True if this call created ``final``."""
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=TEMP_PREFIX, suffix=".png")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(png)
                handle.flush()
                os.fsync(handle.fileno())
            created = self._publish(Path(tmp), final)
        finally:
            Path(tmp).unlink(missing_ok=True)
        if created:
            self._fsync_dir()
        return created

    def _publish(self, tmp: Path, final: Path) -> bool:
        try:
            os.link(tmp, final)
            return True
        except FileExistsError:
            return False
        except OSError:  # filesystem without hard links
            existed = final.exists()
            os.replace(tmp, final)
            return not existed

    def _fsync_dir(self) -> None:
        with contextlib.suppress(OSError):
            fd = os.open(self.directory, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    @staticmethod
    def _touch(path: Path) -> bool:
        """Restart the retention clock of a stored copy; False if there is none."""
        try:
            os.utime(path)
            return True
        except FileNotFoundError:
            return False

    def read(self, filename: str) -> bytes:
        path = self.path_for(filename)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise UploadNotFoundError("no upload with that filename") from None
        except OSError as exc:
            raise store_error(exc) from exc

    def exists(self, filename: str) -> bool:
        return self.path_for(filename).is_file()

    def delete(self, filename: str) -> bool:
        """Remove an upload; False when it did not exist (already deleted or never stored)."""
        path = self.path_for(filename)
        for sidecar in self.directory.glob(f"{path.name}.*"):
            with contextlib.suppress(OSError):
                sidecar.unlink()
        try:
            path.unlink()
            return True
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise store_error(exc) from exc

    def names(self) -> Iterator[str]:
        """Stored upload names (temp files and anything else in the folder are ignored)."""
        try:
            entries = list(os.scandir(self.directory))
        except FileNotFoundError:
            return
        for entry in entries:
            if NAME_RE.fullmatch(entry.name):
                yield entry.name

    def count(self) -> int:
        return sum(1 for _ in self.names())

    def sweep(self, max_age_seconds: float | None, *, now: float | None = None) -> int:
        """Delete uploads older than ``max_age_seconds`` and stale temp files.

        Returns the number of uploads removed (temp files are not counted).
        """
        now = time.time() if now is None else now
        removed = 0
        try:
            entries = list(os.scandir(self.directory))
        except FileNotFoundError:
            return 0
        for entry in entries:
            try:
                age = now - entry.stat(follow_symlinks=False).st_mtime
            except FileNotFoundError:
                continue
            is_upload = NAME_RE.fullmatch(entry.name) is not None
            expired = max_age_seconds is not None and is_upload and age > max_age_seconds
            stale_temp = entry.name.startswith(TEMP_PREFIX) and age > STALE_TEMP_SECONDS
            if expired or stale_temp:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
                    removed += int(is_upload)
        for entry in entries:  # sidecars whose upload is gone
            sidecar = SIDECAR_RE.fullmatch(entry.name)
            if sidecar and not os.path.exists(os.path.join(self.directory, sidecar.group(1))):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
        return removed
