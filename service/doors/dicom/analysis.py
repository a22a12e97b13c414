"""A settled study -> the predictor's answer -> the DICOM result objects.

The answer is the predictor's (:meth:`service.triage.predictor.Predictor.study`, the rule
``POST /predict/study`` applies) over the study's eligible instances, so the report's
finding and probability are exactly what the API answers for the same pixels. What the
API refuses for the whole request, the node answers per view: instances the eligibility
gate refused were never scored, views the content gate refuses are set aside (each with its
reason) and the rest answered; a study with no view left, or one the rules refuse (a body
part without a model, confidently mixed parts, too many views), gets a report that says why
and has no finding. "Not ready", overload and deadline errors propagate: the node tries the
study again later, because they say nothing about the study.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from anyio import to_thread

import bonexr
from bonexr.labels import RESULT_ABNORMAL
from service.domain.answers import Refusal, StudyAnswer
from service.domain.errors import InvalidStudyError, NoPartModelError, NotEligibleError
from service.domain.rules import MIXED_PARTS_ADVICE
from service.doors.dicom.inbox import StudyRecord
from service.doors.dicom.instances import ReceivedInstance, instance_path
from service.doors.dicom.results import (
    StudyOutcome,
    ViewOutcome,
    build_heatmap_capture,
    build_report,
)
from service.triage.heatmaps import draw
from service.triage.predictor import Predictor

#: The captures' series number (the report's series is 9901).
CAPTURES_SERIES_NUMBER = 9902
#: Heat-map opacity on the secondary captures (the page's default).
OVERLAY_OPACITY = 0.5
NOT_FOR_DIAGNOSIS = "bonexr is not a medical device: NOT FOR DIAGNOSIS."
DEMO_STATEMENT = (
    "Model '{name}' is a demonstration trained on synthetic images: its results mean "
    "nothing about real patients."
)


@dataclass(frozen=True)
class Analysis:
    """A study's outcome and, per scored view with a heat map, the overlay to capture."""

    outcome: StudyOutcome
    overlays: dict[str, np.ndarray] = field(default_factory=dict)


def _refusal_text(refusal: Refusal) -> str:
    """A content refusal as the view's reason in the report."""
    score = refusal.score if refusal.score is not None else float("nan")
    limit = refusal.limit if refusal.limit is not None else float("nan")
    return (
        f"not eligible: content score {score:.1f} is above the content gate's limit "
        f"{limit:.1f}: it does not look like the radiographs this model was trained on"
    )


def _report_wording(detail: str, candidates: list[ReceivedInstance]) -> str:
    """A refusal as a report says it: each view by its SOP Instance UID (never the node's
    internal file name), without the advice meant for an API client."""
    for instance in candidates:
        if instance.filename:
            detail = detail.replace(instance.filename, f"instance {instance.sop_uid}")
    return detail.replace(MIXED_PARTS_ADVICE, "")


async def analyse(predictor: Predictor, record: StudyRecord) -> Analysis:
    """Answer ``record``'s study (see the module docstring): one pass over its eligible
    instances; views the content gate refuses come back as values and are set aside."""
    instances = list(record.instances.values())
    refused: dict[str, str | None] = {i.sop_uid: i.refusal for i in instances if i.refusal}
    candidates = [i for i in instances if i.filename and not i.refusal]
    answer: StudyAnswer | None = None
    refusal: str | None = None
    names = list(dict.fromkeys(str(i.filename) for i in candidates))
    try:
        if names:
            answer = await predictor.study(names, None, set_aside_refused=True, door="dicom")
    except NotEligibleError as exc:  # every view refused by the content gate
        views = exc.values.get("views") or [
            {"filename": names[0], "score": exc.values.get("score")}
        ]
        limit = exc.values.get("limit")
        for view in views:
            gone = Refusal(str(view["filename"]), "content", "", view.get("score"), limit)
            for instance in candidates:
                if instance.filename == gone.view:
                    refused[instance.sop_uid] = _refusal_text(gone)
        refusal = "no view of this study is eligible: every instance was refused (see each view)"
    except (NoPartModelError, InvalidStudyError) as exc:
        refusal = _report_wording(exc.detail, candidates)
    if answer is not None:
        out = {r.view: _refusal_text(r) for r in answer.refused}
        for instance in candidates:
            if instance.filename in out:
                refused[instance.sop_uid] = out[str(instance.filename)]
    elif refusal is None:
        refusal = "no view of this study is eligible: every instance was refused (see each view)"
    views = _view_outcomes(instances, refused, answer, refusal)
    gate = [w for i in candidates for w in i.warnings]  # BONEXR_ELIGIBILITY=warn
    outcome = _study_outcome(predictor, record, views, answer, refusal, gate)
    overlays = await to_thread.run_sync(_overlays, predictor, candidates, answer)
    return Analysis(outcome, overlays)


def _view_outcomes(
    instances: list[ReceivedInstance],
    refused: dict[str, str | None],
    answer: StudyAnswer | None,
    refusal: str | None,
) -> list[ViewOutcome]:
    scored = dict(answer.views) if answer is not None else {}
    found = []
    for instance in instances:
        common: dict[str, Any] = {
            "sop_instance_uid": instance.sop_uid,
            "sop_class_uid": instance.sop_class_uid,
            "series_instance_uid": instance.series_uid,
        }
        prediction = scored.get(str(instance.filename)) if instance.filename else None
        if prediction is not None and instance.sop_uid not in refused:
            found.append(
                ViewOutcome(
                    **common,
                    scored=True,
                    abnormality_probability=prediction.abnormality_probability,
                    threshold=prediction.threshold,
                    abnormal=prediction.abnormal,
                    bone_type=prediction.scored_by or prediction.bone_type,
                )
            )
        else:
            reason = refused.get(instance.sop_uid) or f"not scored: {refusal}"
            found.append(ViewOutcome(**common, scored=False, reason=reason))
    return found


def _study_outcome(
    predictor: Predictor,
    record: StudyRecord,
    views: list[ViewOutcome],
    answer: StudyAnswer | None,
    refusal: str | None,
    gate_warnings: list[str],
) -> StudyOutcome:
    engine = predictor.engine
    manifest = engine.manifest
    statement = NOT_FOR_DIAGNOSIS
    if manifest is not None and manifest.synthetic:
        statement += " " + DEMO_STATEMENT.format(name=engine.model_name)
    common: dict[str, Any] = {
        "study_instance_uid": record.study_uid,
        "model_name": engine.model_name,
        "model_version": engine.model_version,
        "software_version": bonexr.__version__,
        "views": views,
        "not_for_diagnosis": statement,
    }
    if answer is None:
        return StudyOutcome(**common, refusal=refusal)
    return StudyOutcome(
        **common,
        abnormal=answer.result == RESULT_ABNORMAL,
        probability=answer.abnormality_probability,
        threshold=answer.threshold,
        operating_point=answer.operating_point,
        operating_rule=answer.point.rule if answer.point is not None else None,
        body_part=answer.bone_type,
        warnings=(*gate_warnings, *answer.warnings),
    )


def _overlays(
    predictor: Predictor, candidates: list[ReceivedInstance], answer: StudyAnswer | None
) -> dict[str, np.ndarray]:
    """The heat map over each scored view's stored image (inside a decode slot each)."""
    if answer is None:
        return {}
    services, size = predictor.services, predictor.engine.input_size
    predictions = dict(answer.views)
    overlays = {}
    for instance in candidates:
        prediction = predictions.get(str(instance.filename))
        if prediction is None or prediction.cam is None:
            continue
        png = services.store.read(str(instance.filename))
        with services.decode_slot():
            picture = draw(png, prediction.cam, size, opacity=OVERLAY_OPACITY, raw=False)
            overlays[instance.sop_uid] = np.asarray(picture.convert("RGB"))
    return overlays


def report_uids(key: str) -> tuple[str, str]:
    """The series and SOP Instance UID of the report of answer ``key``: derived, never
    stored, so a later answer can name its predecessor from the key alone."""
    from pydicom.uid import generate_uid

    return generate_uid(entropy_srcs=[key, "series"]), generate_uid(entropy_srcs=[key, "report"])


def result_objects(
    root: Path, record: StudyRecord, analysis: Analysis, key: str
) -> list[tuple[str, bytes]]:
    """The SR and the secondary captures as Part 10 files, named for the outbox.

    Their UIDs derive from the report key, so building the same answer again (after a crash
    between analysis and bookkeeping) gives the very same objects, which a PACS stores once.
    A study answered before (``record.last_report_key``) gets a report that references the
    earlier one as its predecessor.
    """
    import pydicom
    from pydicom.uid import generate_uid

    outcome = analysis.outcome
    headers = {
        sop: pydicom.dcmread(path, stop_before_pixels=True)
        for sop, instance in record.instances.items()
        if (path := instance_path(root, instance.dicom_sha256)).is_file()
    }
    series_uid, report_uid = report_uids(key)
    earlier = record.last_report_key
    # Modality is a series attribute: the SR and the secondary captures (OT) each get
    # their own series, so a viewer grouping by series shows the captures as images.
    captures_uid = generate_uid(entropy_srcs=[key, "captures"])
    report = build_report(
        outcome,
        list(headers.values()),
        series_instance_uid=series_uid,
        sop_instance_uid=report_uid,
        predecessor=report_uids(earlier) if earlier and earlier != key else None,
    )
    objects = [("0-report.dcm", _encode(pydicom, report))]
    number = 2
    for view in outcome.views:
        overlay = analysis.overlays.get(view.sop_instance_uid)
        source = headers.get(view.sop_instance_uid)
        if overlay is None or source is None or not view.scored:
            continue
        capture = build_heatmap_capture(
            source,
            overlay,
            outcome,
            view,
            series_instance_uid=captures_uid,
            series_number=CAPTURES_SERIES_NUMBER,
            sop_instance_uid=generate_uid(entropy_srcs=[key, "heatmap", view.sop_instance_uid]),
            instance_number=number,
        )
        objects.append((f"{number}-heatmap.dcm", _encode(pydicom, capture)))
        number += 1
    return objects


def _encode(pydicom: Any, dataset: Any) -> bytes:
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, dataset, enforce_file_format=True)
    return buffer.getvalue()
