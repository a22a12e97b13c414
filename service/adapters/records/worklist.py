"""Recording answered studies and reading them back in triage order.

The worklist's order is the triage order: the model's **abnormal** studies first, then the
normal ones, then those without a finding (refused); within each group by descending
calibrated probability; ties by arrival, then id. Pages are keyset pages (the cursor holds
the last row's sort key), so a page costs the same on the 10,000th study as on the first
and a study recorded meanwhile never shifts a page.

A DICOM study answered again (a late instance, an instance re-sent with new pixels) is
recorded with ``replaces`` naming its earlier record, which gets ``superseded_by``: the
worklist and its counts list only records nobody replaced (the earlier one stays readable
by id, with its reviews), and deleting a record deletes those it replaced.

Reviews are added, never replaced: two readers reviewing the same study at once are both
recorded (two rows); the study is "reviewed" once it has any.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy import Select, and_, delete, func, or_, select, update
from sqlalchemy.orm import selectinload

from service.adapters.records.database import Database
from service.adapters.records.schema import (
    GROUP_ABNORMAL,
    GROUP_NO_FINDING,
    GROUP_NORMAL,
    Review,
    Study,
    View,
)
from service.domain.errors import InvalidCursorError, RecordNotFoundError

Status = Literal["unread", "reviewed", "all"]
STATUSES: tuple[str, ...] = ("unread", "reviewed", "all")
RESULTS: tuple[str, ...] = ("abnormal", "normal")


def utcnow() -> datetime:
    """Now, as the naive UTC time the tables hold."""
    return datetime.now(UTC).replace(tzinfo=None)


@dataclass(frozen=True)
class ViewEntry:
    """One view of an answered study (a refused one has no probability, and a reason)."""

    filename: str | None
    probability: float | None = None
    threshold: float | None = None
    result: str | None = None
    refused: bool = False
    reason: str | None = None
    sop_instance_uid: str | None = None
    #: what the sender called it (a file name); shown by the worklist in upload order
    label: str | None = None


@dataclass(frozen=True)
class StudyEntry:
    """One answered study, as the predictor or the DICOM node answered it."""

    source: Literal["api", "dicom"]
    bundle_name: str
    bundle_version: str
    operating_point: str | None
    body_part: str | None
    probability: float | None
    threshold: float | None
    result: str | None  # "abnormal", "normal", or None (refused: see refusal)
    views: Sequence[ViewEntry]
    refusal: str | None = None
    warnings: Sequence[str] = field(default_factory=tuple)
    #: the record of the earlier answer to the same study, which this one supersedes
    replaces: str | None = None


@dataclass(frozen=True)
class Page:
    studies: list[Study]
    next_cursor: str | None
    counts: dict[str, int]


def _group(result: str | None) -> int:
    return {"abnormal": GROUP_ABNORMAL, "normal": GROUP_NORMAL}.get(result or "", GROUP_NO_FINDING)


def encode_cursor(study: Study) -> str:
    key = [study.priority_group, study.sort_probability, study.arrived_at.isoformat(), study.id]
    return base64.urlsafe_b64encode(json.dumps(key).encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[int, float, datetime, str]:
    """The sort key a cursor holds; :class:`InvalidCursorError` when it does not parse or
    holds values no page could have produced."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        group, probability, arrived, study_id = json.loads(raw)
        key = int(group), float(probability), datetime.fromisoformat(arrived), str(study_id)
        if not (abs(key[0]) < 2**31 and math.isfinite(key[1]) and abs(key[1]) <= 2):
            raise ValueError("out of range")  # a crafted cursor: the database would overflow
        return key
    except (binascii.Error, ValueError, TypeError, UnicodeDecodeError, OverflowError):
        raise InvalidCursorError(
            "cursor does not parse: pass the next_cursor of a previous page unchanged"
        ) from None


def _current_counts() -> Select[str, int]:
    """Records per status, counting only those nobody replaced."""
    current = select(Study.status, func.count()).where(Study.superseded_by.is_(None))
    return current.group_by(Study.status)


def _study_row(entry: StudyEntry, now: datetime) -> Study:
    probability = entry.probability
    return Study(
        id=uuid.uuid4().hex,
        arrived_at=now,
        source=entry.source,
        bundle_name=entry.bundle_name,
        bundle_version=entry.bundle_version,
        operating_point=entry.operating_point,
        body_part=entry.body_part,
        probability=probability,
        threshold=entry.threshold,
        result=entry.result,
        refusal=entry.refusal,
        warnings=list(entry.warnings),
        status="unread",
        replaces=entry.replaces,
        priority_group=_group(entry.result),
        sort_probability=-1.0 if probability is None else float(probability),
        views=[
            View(
                position=i,
                filename=v.filename,
                sop_instance_uid=v.sop_instance_uid,
                probability=v.probability,
                threshold=v.threshold,
                result=v.result,
                refused=v.refused,
                reason=v.reason,
                label=v.label,
            )
            for i, v in enumerate(entry.views)
        ],
    )


class RecordStore:
    """The studies, views and reviews (every method blocks: call from a worker thread)."""

    def __init__(self, database: Database) -> None:
        self.database = database

    def record(self, entry: StudyEntry, *, now: datetime | None = None) -> str:
        """Record an answered study; returns its id."""
        (study_id,) = self.record_many([entry], now=now)
        return study_id

    def record_many(
        self, entries: Sequence[StudyEntry], *, now: datetime | None = None
    ) -> list[str]:
        """Record several answered studies in one transaction; returns their ids."""
        rows = [_study_row(entry, now or utcnow()) for entry in entries]
        with self.database.session() as session:
            session.add_all(rows)
            for row in rows:
                if row.replaces is not None:
                    session.execute(
                        update(Study)
                        .where(Study.id == row.replaces, Study.superseded_by.is_(None))
                        .values(superseded_by=row.id)
                    )
        return [row.id for row in rows]

    def page(self, status: Status = "all", limit: int = 50, cursor: str | None = None) -> Page:
        """One page of the worklist in triage order (see the module docstring)."""
        query = (
            select(Study)
            .options(selectinload(Study.reviews), selectinload(Study.views))
            .where(Study.superseded_by.is_(None))
        )
        if status != "all":
            query = query.where(Study.status == status)
        if cursor:
            group, probability, arrived, study_id = decode_cursor(cursor)
            query = query.where(
                or_(
                    Study.priority_group > group,
                    and_(Study.priority_group == group, Study.sort_probability < probability),
                    and_(
                        Study.priority_group == group,
                        Study.sort_probability == probability,
                        or_(
                            Study.arrived_at > arrived,
                            and_(Study.arrived_at == arrived, Study.id > study_id),
                        ),
                    ),
                )
            )
        query = query.order_by(
            Study.priority_group, Study.sort_probability.desc(), Study.arrived_at, Study.id
        ).limit(limit + 1)
        with self.database.session() as session:
            rows = list(session.scalars(query))
            counted = session.execute(_current_counts())
            by_status = {str(s): int(n) for s, n in counted}
        more = len(rows) > limit
        rows = rows[:limit]
        counts = {
            "unread": by_status.get("unread", 0),
            "reviewed": by_status.get("reviewed", 0),
            "all": sum(by_status.values()),
        }
        return Page(rows, encode_cursor(rows[-1]) if more and rows else None, counts)

    def version(self) -> tuple[str, dict[str, int]]:
        """A token that changes whenever the worklist does (a study recorded, reviewed or
        removed), with the counts: what a page polls instead of the list itself."""
        with self.database.session() as session:
            by_status = {str(k): int(n) for k, n in session.execute(_current_counts())}
            reviews = session.scalar(select(func.count()).select_from(Review)) or 0
            newest = session.scalar(select(func.max(Study.arrived_at)))
        counts = {"unread": by_status.get("unread", 0), "reviewed": by_status.get("reviewed", 0)}
        counts["all"] = counts["unread"] + counts["reviewed"]
        newest_text = newest.isoformat() if newest else "-"
        token = f"{counts['all']}.{counts['reviewed']}.{reviews}.{newest_text}"
        return token, counts

    def get(self, study_id: str) -> Study:
        with self.database.session() as session:
            study = session.get(
                Study,
                study_id,
                options=[selectinload(Study.views), selectinload(Study.reviews)],
            )
        if study is None:
            raise RecordNotFoundError("no recorded study with that id")
        return study

    def review(
        self,
        study_id: str,
        reader: str,
        reader_result: str,
        note: str | None = None,
        *,
        amend: bool = False,
    ) -> Study:
        """Add a reader's verdict (never replacing another reader's) and mark the study
        reviewed. ``amend``: it corrects this reader's own current review, which is kept
        and marked replaced (RecordNotFoundError when the reader has none to amend)."""
        with self.database.session() as session:
            if session.get(Study, study_id) is None:
                raise RecordNotFoundError("no recorded study with that id")
            earlier = None
            if amend:
                earlier = session.scalars(
                    select(Review)
                    .where(
                        Review.study_id == study_id,
                        Review.reader == reader,
                        Review.replaced_by.is_(None),
                    )
                    .order_by(Review.id.desc())
                    .limit(1)
                ).first()
                if earlier is None:
                    raise RecordNotFoundError(
                        f"{reader} has no review of this study to amend: send it without amend"
                    )
            review = Review(
                study_id=study_id,
                reader=reader,
                reader_result=reader_result,
                note=note,
                created_at=utcnow(),
                amends=earlier.id if earlier is not None else None,
            )
            session.add(review)
            session.flush()
            if earlier is not None:
                earlier.replaced_by = review.id
            session.execute(update(Study).where(Study.id == study_id).values(status="reviewed"))
        return self.get(study_id)

    def delete(self, study_id: str) -> list[str]:
        """Remove a study record; returns its uploads that no other record names."""
        with self.database.session() as session:
            study = session.get(Study, study_id, options=[selectinload(Study.views)])
            if study is None:
                raise RecordNotFoundError("no recorded study with that id")
            chain = [study]
            while chain[-1].replaces is not None:  # what it replaced goes with it
                earlier = session.get(
                    Study, chain[-1].replaces, options=[selectinload(Study.views)]
                )
                if earlier is None:
                    break
                chain.append(earlier)
            names = {v.filename for s in chain for v in s.views if v.filename}
            for record in chain:
                session.delete(record)
            session.flush()
            shared = set(session.scalars(select(View.filename).where(View.filename.in_(names))))
        return sorted(names - shared)

    def expire(self, before: datetime) -> list[str]:
        """Remove the records that arrived before ``before`` (retention); returns their
        uploads no remaining record names."""
        with self.database.session() as session:
            old = list(session.scalars(select(Study.id).where(Study.arrived_at < before)))
            if not old:
                return []
            names = set(
                session.scalars(
                    select(View.filename).where(View.study_id.in_(old), View.filename.is_not(None))
                )
            )
            session.execute(delete(View).where(View.study_id.in_(old)))
            session.execute(delete(Review).where(Review.study_id.in_(old)))
            session.execute(delete(Study).where(Study.id.in_(old)))
            kept = set(session.scalars(select(View.filename).where(View.filename.in_(names))))
        return sorted(n for n in names - kept if n)

    def studies_with_upload(self, filename: str) -> list[str]:
        with self.database.session() as session:
            return list(
                session.scalars(select(View.study_id).where(View.filename == filename).limit(10))
            )

    def reviewed_studies(self) -> Iterator[Study]:
        """Every reviewed study nobody replaced, with its views and reviews, oldest first
        (what ``bonexr export-reviews`` turns into training labels)."""
        query = (
            select(Study)
            .options(selectinload(Study.views), selectinload(Study.reviews))
            .where(Study.status == "reviewed", Study.superseded_by.is_(None))
            .order_by(Study.arrived_at, Study.id)
        )
        with self.database.session() as session:
            yield from session.scalars(query)

    def reviewed_rows(self) -> Iterator[dict[str, Any]]:
        """Every review with its study's model verdict, oldest first (the CSV export)."""
        query = (
            select(Study, Review)
            .join(Review, Review.study_id == Study.id)
            .order_by(Review.created_at, Review.id)
        )
        with self.database.session() as session:
            for study, review in session.execute(query):
                probability = "" if study.probability is None else study.probability
                threshold = "" if study.threshold is None else study.threshold
                yield {
                    "study_id": study.id,
                    "arrived_at": study.arrived_at.isoformat() + "Z",
                    "source": study.source,
                    "body_part": study.body_part or "",
                    "bundle": study.bundle_name,
                    "bundle_version": study.bundle_version,
                    "operating_point": study.operating_point or "",
                    "abnormality_probability": probability,
                    "threshold": threshold,
                    "result": study.result or "",
                    # deprecated names of the three above, written until 0.8.0
                    "model_probability": probability,
                    "model_threshold": threshold,
                    "model_result": study.result or "no finding",
                    "reader": review.reader,
                    "reader_result": review.reader_result,
                    "reviewed_at": review.created_at.isoformat() + "Z",
                    "note": review.note or "",
                    "review_id": review.id,
                    "amends": "" if review.amends is None else review.amends,
                    "replaced_by": "" if review.replaced_by is None else review.replaced_by,
                }

    def practice_counts(self) -> dict[str, dict[tuple[str, str], int]]:
        """Per body part: (model result, first reader's result) -> studies, over reviewed
        studies with a finding (what the practice metrics are computed from); a review that
        was amended counts by its amendment (the earliest review nobody replaced)."""
        first = (
            select(Review.study_id, func.min(Review.id).label("first_id"))
            .where(Review.replaced_by.is_(None))
            .group_by(Review.study_id)
            .subquery()
        )
        query = (
            select(Study.body_part, Study.result, Review.reader_result, func.count())
            .join(first, first.c.study_id == Study.id)
            .join(Review, Review.id == first.c.first_id)
            .where(Study.result.is_not(None))
            .group_by(Study.body_part, Study.result, Review.reader_result)
        )
        found: dict[str, dict[tuple[str, str], int]] = {}
        with self.database.session() as session:
            for part, model, reader, count in session.execute(query):
                found.setdefault(str(part), {})[(str(model), str(reader))] = int(count)
        return found
