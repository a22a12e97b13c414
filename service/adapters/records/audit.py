"""The audit trail: who touched which study record, when, and how it went.

Append-only: the API has no route that changes or removes an event, and this module has no
function that does. An event holds the key's name, the action (``list``, ``view``,
``review``, ``delete``, ``heatmap``, ``export``, ``audit``), the study id where there is one,
the time (UTC) and the outcome (``ok`` or the HTTP status of the refusal) -- never image
bytes, never patient identifiers. ``GET /audit`` serves it to the keys named in
``BONEXR_ADMIN_KEYS``.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select

from service.adapters.records.database import Database
from service.adapters.records.schema import AuditEvent
from service.adapters.records.worklist import utcnow
from service.domain.errors import InvalidCursorError

ACTIONS = (
    "list",
    "view",
    "review",
    "amend_review",
    "delete",
    "delete_upload",
    "heatmap",
    "export",
    "export_reviews",
    "audit",
)


@dataclass(frozen=True)
class AuditPage:
    events: list[AuditEvent]
    next_cursor: str | None


class AuditLog:
    def __init__(self, database: Database) -> None:
        self.database = database

    def add(self, key_name: str, action: str, study_id: str | None, outcome: str = "ok") -> None:
        """Append one event (blocking)."""
        if action not in ACTIONS:
            raise ValueError(f"unknown audit action {action!r}")
        with self.database.session() as session:
            session.add(
                AuditEvent(
                    at=utcnow(),
                    key_name=key_name[:64],
                    action=action,
                    study_id=study_id,
                    outcome=outcome[:16],
                )
            )

    def page(self, limit: int = 100, cursor: str | None = None) -> AuditPage:
        """Newest first; the cursor is the last event's id."""
        query = select(AuditEvent).order_by(AuditEvent.id.desc()).limit(limit + 1)
        if cursor is not None:
            if not (cursor.isascii() and cursor.isdigit() and len(cursor) <= 18):
                raise InvalidCursorError("cursor does not parse: pass next_cursor unchanged")
            query = query.where(AuditEvent.id < int(cursor))
        with self.database.session() as session:
            events = list(session.scalars(query))
        more = len(events) > limit
        events = events[:limit]
        return AuditPage(events, str(events[-1].id) if more and events else None)
