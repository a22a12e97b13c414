"""A candidate bundle's shadow answers, and what compares them with the live ones."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import select

from service.adapters.records.database import Database
from service.adapters.records.schema import Review, ShadowAnswer, Study
from service.adapters.records.worklist import utcnow


@dataclass(frozen=True)
class ShadowEntry:
    study_id: str
    bundle_name: str
    bundle_version: str
    body_part: str | None
    probability: float | None
    result: str | None
    refusal: str | None
    shadow_ms: float
    live_ms: float | None


class ShadowStore:
    def __init__(self, database: Database) -> None:
        self.database = database

    def add(self, entry: ShadowEntry) -> None:
        """Record one shadow answer (blocking)."""
        with self.database.session() as session:
            session.add(ShadowAnswer(at=utcnow(), **entry.__dict__))

    def pairs(self) -> list[dict[str, Any]]:
        """Each shadow answer beside its study's live answer and the first current reader
        verdict (None when unreviewed), oldest first; studies deleted since are left out."""
        query = (
            select(ShadowAnswer, Study)
            .join(Study, Study.id == ShadowAnswer.study_id)
            .order_by(ShadowAnswer.id)
        )
        verdicts = (
            select(Review.study_id, Review.reader_result)
            .where(Review.replaced_by.is_(None))
            .order_by(Review.id)
        )
        with self.database.session() as session:
            first: dict[str, str] = {}
            for study_id, result in session.execute(verdicts):
                first.setdefault(study_id, result)
            return [
                {
                    "study_id": study.id,
                    "body_part": study.body_part,
                    "live_result": study.result,
                    "live_probability": study.probability,
                    "shadow_bundle": f"{shadow.bundle_name} {shadow.bundle_version}",
                    "shadow_result": shadow.result,
                    "shadow_probability": shadow.probability,
                    "shadow_refusal": shadow.refusal,
                    "shadow_ms": shadow.shadow_ms,
                    "live_ms": shadow.live_ms,
                    "reader_result": first.get(study.id),
                }
                for shadow, study in session.execute(query)
            ]
