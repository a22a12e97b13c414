"""The record tables (times are naive UTC). Changed only through a migration in
``migrations/versions``.

A study is what the model answered (one ``POST /predict/study`` or one study the DICOM node
answered); its views are the images behind it, refused ones included with their reason;
reviews are the readers' verdicts, never overwritten (a second reader's review is another
row); audit events are append-only and hold no image bytes and no patient identifiers.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, DateTime, Float, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class Base(DeclarativeBase):
    pass


#: priority groups of the worklist: the model's abnormal studies first, then normal, then
#: studies without a finding (refused)
GROUP_ABNORMAL, GROUP_NORMAL, GROUP_NO_FINDING = 0, 1, 2


class Study(Base):
    __tablename__ = "studies"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    arrived_at: Mapped[datetime] = mapped_column(DateTime(), index=True)
    source: Mapped[str] = mapped_column(String(16))  # "api" or "dicom"
    bundle_name: Mapped[str] = mapped_column(String(128))
    bundle_version: Mapped[str] = mapped_column(String(64))
    operating_point: Mapped[str | None] = mapped_column(String(32))
    body_part: Mapped[str | None] = mapped_column(String(32), index=True)
    probability: Mapped[float | None] = mapped_column(Float)
    threshold: Mapped[float | None] = mapped_column(Float)
    result: Mapped[str | None] = mapped_column(String(16))  # "abnormal", "normal", None
    refusal: Mapped[str | None] = mapped_column(Text)
    warnings: Mapped[list[str]] = mapped_column(JSON, default=list)
    status: Mapped[str] = mapped_column(String(16), default="unread")  # "unread"/"reviewed"
    #: the order of the worklist: group, then -probability, then arrival (see GROUP_*)
    priority_group: Mapped[int] = mapped_column(Integer)
    sort_probability: Mapped[float] = mapped_column(Float)
    #: the record this one replaces (the same DICOM study answered again: a late instance,
    #: an instance re-sent with new pixels), and the one that replaced this one; the
    #: worklist lists only records nobody replaced
    replaces: Mapped[str | None] = mapped_column(String(32), default=None)
    superseded_by: Mapped[str | None] = mapped_column(String(32), default=None, index=True)

    views: Mapped[list[View]] = relationship(
        back_populates="study", cascade="all, delete-orphan", order_by="View.position"
    )
    reviews: Mapped[list[Review]] = relationship(
        back_populates="study", cascade="all, delete-orphan", order_by="Review.id"
    )


class View(Base):
    __tablename__ = "views"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    study_id: Mapped[str] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    filename: Mapped[str | None] = mapped_column(String(80), index=True)  # upload name
    sop_instance_uid: Mapped[str | None] = mapped_column(String(64))
    probability: Mapped[float | None] = mapped_column(Float)
    threshold: Mapped[float | None] = mapped_column(Float)
    result: Mapped[str | None] = mapped_column(String(16))
    refused: Mapped[bool] = mapped_column(default=False)
    reason: Mapped[str | None] = mapped_column(Text)
    #: what the sender called the view (the page: the file's name), in upload order
    label: Mapped[str | None] = mapped_column(String(128), default=None)

    study: Mapped[Study] = relationship(back_populates="views")


class Review(Base):
    __tablename__ = "reviews"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    study_id: Mapped[str] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), index=True)
    reader: Mapped[str] = mapped_column(String(64))
    reader_result: Mapped[str] = mapped_column(String(16))
    note: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime())
    #: the reader's own earlier review this one amends, and the review that amended this
    #: one (kept, marked replaced: a correction never erases what was said)
    amends: Mapped[int | None] = mapped_column(Integer, default=None)
    replaced_by: Mapped[int | None] = mapped_column(Integer, default=None)

    study: Mapped[Study] = relationship(back_populates="reviews")


class ShadowAnswer(Base):
    """What a candidate bundle answered for a recorded study, in shadow: never shown to a
    reader, compared with the live answer by ``bonexr shadow-report``."""

    __tablename__ = "shadow_answers"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    #: no FK: the comparison outlives a deleted record only as a count
    study_id: Mapped[str] = mapped_column(String(32), index=True)
    at: Mapped[datetime] = mapped_column(DateTime())
    bundle_name: Mapped[str] = mapped_column(String(128))
    bundle_version: Mapped[str] = mapped_column(String(64))
    body_part: Mapped[str | None] = mapped_column(String(32))
    probability: Mapped[float | None] = mapped_column(Float)
    result: Mapped[str | None] = mapped_column(String(16))  # None: the shadow refused it
    refusal: Mapped[str | None] = mapped_column(Text)
    shadow_ms: Mapped[float] = mapped_column(Float)  # the shadow's scoring time
    live_ms: Mapped[float | None] = mapped_column(Float)  # the live answer's, same request


class AuditEvent(Base):
    __tablename__ = "audit"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(DateTime(), index=True)
    key_name: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(16))
    study_id: Mapped[str | None] = mapped_column(String(32), index=True)  # no FK: outlives it
    outcome: Mapped[str] = mapped_column(String(16))


Index(
    "ix_studies_priority",
    Study.status,
    Study.priority_group,
    Study.sort_probability.desc(),
    Study.arrived_at,
    Study.id,
)
