"""A study the DICOM node answered, as a worklist record (the node's own form of the
triage answer; ``POST /predict/study`` records through :mod:`service.triage.recording`)."""

from __future__ import annotations

from service.adapters.records.worklist import StudyEntry, ViewEntry
from service.doors.dicom.results import StudyOutcome
from service.triage.recording import verdict


def dicom_entry(
    outcome: StudyOutcome, filenames: dict[str, str | None], replaces: str | None = None
) -> StudyEntry:
    """A study the DICOM node answered as a record (``filenames``: SOP Instance UID ->
    upload name of each received instance; None for one never stored; ``replaces``: the
    record of the study's earlier answer, which this one supersedes)."""
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
        replaces=replaces,
    )
