"""The per-app :class:`Services` container: settings, store, engine, metrics, decode slots,
the records database.

Built once per app by :func:`service.doors.http.app.create_app` and kept on ``app.state``; the route
dependencies that hand it out live in :mod:`service.doors.http.deps`.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from bonexr.imaging import DecodedImage
from service.adapters.engine import InferenceEngine
from service.adapters.memory import release_free_memory
from service.adapters.metrics import ServiceMetrics
from service.adapters.pixel_cache import PixelCache
from service.adapters.records.audit import AuditLog
from service.adapters.records.database import Database
from service.adapters.records.worklist import RecordStore
from service.adapters.stores.base import UploadStore
from service.domain.intake import decode_within_limits
from service.settings import Settings


@dataclass
class Services:
    """What the routes need."""

    settings: Settings
    store: UploadStore
    engine: InferenceEngine
    metrics: ServiceMetrics
    decode_slots: threading.BoundedSemaphore
    pixels: PixelCache
    database: Database
    records: RecordStore
    audit: AuditLog
    #: set once the records database has the current schema (start-up or a later /ready)
    records_migrated: bool = False

    @contextlib.contextmanager
    def decode_slot(self) -> Iterator[None]:
        """Hold one of the ``decode_slots`` (bounding how many images are in memory at
        once); on leaving, freed decode buffers go back to the OS
        (:mod:`service.adapters.memory`)."""
        with self.decode_slots:
            try:
                yield
            finally:
                release_free_memory()

    def delete_uploads(self, names: Iterable[str], reason: str) -> int:
        """Remove uploads (with their sidecars and cached pixels), counted under ``reason``
        in ``bonexr_uploads_deleted_total``; returns how many were there. Blocking: call
        from a worker thread."""
        removed = 0
        for name in names:
            self.pixels.discard(name)
            if self.store.delete(name):
                removed += 1
                self.metrics.uploads_deleted.labels(reason).inc()
        return removed

    def decode(self, data: bytes) -> DecodedImage:
        """Decode untrusted bytes under the configured pixel and decoded-memory limits.
        Call inside :meth:`decode_slot`, from the threadpool."""
        return decode_within_limits(data, self.settings)
