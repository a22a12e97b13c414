"""Give decoded-image memory back to the operating system (glibc malloc tuning).

Why: a burst of large decodes on the threadpool left gigabytes resident long after the
requests ended. glibc serves big allocations from ``mmap`` only above a *dynamic*
threshold that rises (up to 32 MiB) every time such a block is freed, so after the first
large image every later image buffer (Pillow's 16 MiB blocks, NumPy arrays) came from the
heap arenas of whichever worker thread decoded it, and freed arena memory is rarely
returned. Pinning the threshold keeps every large buffer on ``mmap``, which ``free``
unmaps at once; capping the arena count bounds the fragmented small-object heaps.

Chosen over a decoding process pool because it needs no pickling of megapixel arrays
between processes and no extra resident interpreter; the memory test in
``tests/test_service_memory.py`` measures the result. On a non-glibc platform (musl,
macOS) this does nothing and says so in the log.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger("bonexr.memory")

# From glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8

#: Allocations of this size or more are mmap-ed and unmapped on free.
MMAP_THRESHOLD_BYTES = 1 << 20
#: Heap memory above this at the top of an arena is returned to the OS on free.
TRIM_THRESHOLD_BYTES = 8 << 20
#: At most this many malloc arenas (glibc's default is 8 per core).
ARENA_MAX = 2

_applied: bool | None = None
_glibc: ctypes.CDLL | None = None


def _load_glibc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


def tune_malloc() -> bool:
    """Apply the settings above once per process; True where glibc accepted them."""
    global _applied, _glibc
    if _applied is not None:
        return _applied
    libc = _glibc = _load_glibc()
    if libc is None:
        log.info("not glibc: decoded-image memory is left to the platform allocator")
        _applied = False
        return False
    ok = all(
        libc.mallopt(option, value) == 1
        for option, value in (
            (_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES),
            (_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES),
            (_M_ARENA_MAX, ARENA_MAX),
        )
    )
    _applied = ok
    return ok


def release_free_memory() -> None:
    """Return free heap pages to the OS (``malloc_trim``); cheap, call after big decodes."""
    if _applied and _glibc is not None:
        _glibc.malloc_trim(0)
