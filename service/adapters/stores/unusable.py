"""The store of a wrongly configured service: it starts, ``/ready`` says why, and every
operation that needs the store is a 503 with the reason (instead of a crash loop with the
reason buried in a log)."""

from __future__ import annotations

from collections.abc import Iterator

from service.adapters.stores.base import StoredUpload, validate_name
from service.domain.errors import StoreUnavailableError


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

    def write_sidecar(self, filename: str, kind: str, data: bytes) -> bool:
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
