"""The upload folder store: uploads as files ``<sha256>.png`` in one local folder.

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
* Sidecars never outlive their upload, across threads and worker processes sharing the
  folder: a sidecar is renamed into place and *then* the upload is checked (removed again
  if the upload is gone), while :meth:`FileUploadStore.delete` removes the upload *before*
  its sidecars. Whichever order the two interleave in, one of them removes the sidecar;
  a crash between the two steps leaves an orphan that :meth:`FileUploadStore.sweep` removes.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from bonexr.atomic import write_bytes_atomic
from service.adapters.stores.base import (
    BODY_PART,
    MIN_FREE_BYTES,
    NAME_RE,
    SIDECAR_RE,
    STALE_TEMP_SECONDS,
    TEMP_PREFIX,
    StoredUpload,
    sidecar_name,
    store_error,
    validate_name,
)
from service.domain.errors import UploadNotFoundError


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
            else:  # the record reflects the latest upload (see UploadStore)
                self._sidecar_path(stored.filename, BODY_PART).unlink(missing_ok=True)
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

    def write_sidecar(self, filename: str, kind: str, data: bytes) -> bool:
        """Write ``<filename>.<kind>`` atomically (temp file in the folder, then rename) if
        the upload exists, and keep it only if the upload still exists after the rename
        (see the module docstring): False when the upload is gone and nothing was kept.
        Raises OSError like any write; callers decide whether it matters."""
        upload = self.path_for(filename)
        target = self._sidecar_path(filename, kind)
        if not upload.is_file():
            return False
        write_bytes_atomic(target, data, temp_prefix=TEMP_PREFIX)
        if upload.is_file():
            return True
        target.unlink(missing_ok=True)  # a delete ran meanwhile: it may have missed this
        return False

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
        try:  # the upload first, then its sidecars (see the module docstring)
            path.unlink()
            existed = True
        except FileNotFoundError:
            existed = False
        except OSError as exc:
            raise store_error(exc) from exc
        for sidecar in self.directory.glob(f"{path.name}.*"):
            with contextlib.suppress(OSError):
                sidecar.unlink()
        return existed

    def names(self) -> Iterator[str]:
        """Stored upload names (temp files and anything else in the folder are ignored)."""
        try:
            entries = list(os.scandir(self.directory))
        except OSError:  # missing, replaced by a file, unreadable: nothing to list
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
        except OSError:
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
