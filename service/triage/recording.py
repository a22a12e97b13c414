"""What gets recorded: a predictor's study answer, or the DICOM node's, as a
:class:`~service.adapters.records.worklist.StudyEntry`; and recording it with its metrics.

One mapping for both sources, so the worklist shows an API study and a received one alike.
"""

from __future__ import annotations

from bonexr.labels import RESULT_ABNORMAL
from service.adapters.records.worklist import StudyEntry, ViewEntry
from service.doors.dicom.results import StudyOutcome
from service.triage.predictor import StudyAnswer
from service.triage.services import Services


def verdict(abnormal: bool | None) -> str | None:
    """The records' word for a decision ("abnormal" / "normal"; None: no finding)."""
    return None if abnormal is None else "abnormal" if abnormal else "normal"


def study_entry(answer: StudyAnswer, model_name: str, model_version: str) -> StudyEntry:
    """A ``POST /predict/study`` answer as a record."""
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
            )
            for name, view in answer.views
        ],
        warnings=list(answer.warnings),
    )


def dicom_entry(outcome: StudyOutcome, filenames: dict[str, str | None]) -> StudyEntry:
    """A study the DICOM node answered as a record (``filenames``: SOP Instance UID ->
    upload name of each received instance; None for one never stored)."""
    return StudyEntry(
        source="dicom",
        bundle_name=outcome.model_name,
        bundle_version=outcome.model_version,
        operating_point=outcome.operating_point,
        body_part=outcome.body_part,
        probability=outcome.probability,
        threshold=outcome.threshold,
        result=verdict(outcome.abnormal),
        refusal=outcome.refusal,
        views=[
            ViewEntry(
                filename=filenames.get(view.sop_instance_uid),
                probability=view.abnormality_probability,
                threshold=view.threshold,
                result=verdict(view.abnormal),
                refused=not view.scored,
                reason=view.reason,
                sop_instance_uid=view.sop_instance_uid,
            )
            for view in outcome.views
        ],
        warnings=list(outcome.warnings),
    )


def record_answer(services: Services, entry: StudyEntry) -> str:
    """Record ``entry`` (blocking) and observe its probability; returns the record id."""
    record_id = services.records.record(entry)
    if entry.probability is not None:
        services.metrics.served_probability.labels(entry.body_part or "none").observe(
            entry.probability
        )
    return record_id
