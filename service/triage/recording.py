"""What gets recorded: a study answer as a
:class:`~service.adapters.records.worklist.StudyEntry`, and recording it with its metrics.

The DICOM node maps its own outcome (:mod:`service.doors.dicom.entries`) with the same
:func:`verdict` words and records through :func:`record_answer`, so the worklist shows an
API study and a received one alike.
"""

from __future__ import annotations

from bonexr.labels import RESULT_ABNORMAL
from service.adapters.records.worklist import StudyEntry, ViewEntry
from service.domain.answers import StudyAnswer
from service.triage.services import Services


def verdict(abnormal: bool | None) -> str | None:
    """The records' word for a decision ("abnormal" / "normal"; None: no finding)."""
    return None if abnormal is None else "abnormal" if abnormal else "normal"


def study_entry(
    answer: StudyAnswer,
    model_name: str,
    model_version: str,
    labels: dict[str, str] | None = None,
) -> StudyEntry:
    """A ``POST /predict/study`` answer as a record (``labels``: filename -> the name the
    sender gave that view)."""
    labels = labels or {}
    return StudyEntry(
        source="api",
        bundle_name=model_name,
        bundle_version=model_version,
        operating_point=answer.operating_point or None,
        body_part=answer.bone_type,
        probability=answer.abnormality_probability,
        threshold=answer.threshold,
        result=verdict(answer.result == RESULT_ABNORMAL),
        views=[
            ViewEntry(
                filename=name,
                probability=view.abnormality_probability,
                threshold=view.threshold,
                result=verdict(view.abnormal),
                label=labels.get(name),
            )
            for name, view in answer.views
        ],
        warnings=list(answer.warnings),
    )


def record_answer(services: Services, entry: StudyEntry) -> str:
    """Record ``entry`` (blocking) and observe its probability; returns the record id."""
    record_id = services.records.record(entry)
    if entry.probability is not None:
        services.metrics.served_probability.labels(entry.body_part or "none").observe(
            entry.probability
        )
    return record_id
