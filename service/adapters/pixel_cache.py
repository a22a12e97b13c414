"""A small LRU of prepared model inputs, keyed by upload filename and input size.

The usual client uploads an image and asks for its prediction a moment later. Keeping the
pixels prepared at upload time saves the predict path a PNG read, decode and resize. The
store stays the source of truth: a cached entry is used only while its file still exists,
so deletes and retention are never undone by the cache.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np


class PixelCache:
    """Thread-safe LRU of ``(filename, size) -> uint8 (size, size)`` arrays."""

    def __init__(self, max_entries: int = 512) -> None:
        self.max_entries = max_entries
        self._items: OrderedDict[tuple[str, int], np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, filename: str, size: int) -> np.ndarray | None:
        with self._lock:
            pixels = self._items.get((filename, size))
            if pixels is not None:
                self._items.move_to_end((filename, size))
            return pixels

    def put(self, filename: str, size: int, pixels: np.ndarray) -> None:
        if self.max_entries <= 0:
            return
        pixels = pixels.copy()
        pixels.setflags(write=False)
        with self._lock:
            self._items[(filename, size)] = pixels
            self._items.move_to_end((filename, size))
            while len(self._items) > self.max_entries:
                self._items.popitem(last=False)

    def discard(self, filename: str) -> None:
        with self._lock:
            for key in [k for k in self._items if k[0] == filename]:
                del self._items[key]

    def __len__(self) -> int:
        return len(self._items)
