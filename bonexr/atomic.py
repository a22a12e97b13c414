"""Atomic file writes (temp file in the same folder, fsync, rename), shared by every writer.

A reader -- or a crash -- sees either the old file or the complete new one, never half.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def _read_umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


#: Read once at import: ``os.umask`` can only be read by setting it, which would race with
#: file creation in other threads of a running service.
_UMASK = _read_umask()


def current_umask() -> int:
    """The process umask (as it was at start-up)."""
    return _UMASK


def write_bytes_atomic(path: str | Path, data: bytes, *, temp_prefix: str | None = None) -> None:
    """Write ``data`` to ``path`` atomically, with the permissions a plain ``open`` would give.

    ``temp_prefix`` names the temporary file (default ``.<name>.``), for a folder whose
    sweeper removes stale temporaries by their prefix."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix = temp_prefix if temp_prefix is not None else f".{path.name}."
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=prefix, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | Path, payload: Any) -> None:
    write_text_atomic(path, json.dumps(payload, indent=2, default=str) + "\n")
