"""One received DICOM instance: read, checked by the eligibility gate, stored like an upload.

The instance is kept exactly as it was sent (``instances/<sha256>.dcm`` in the node's folder:
content-addressed, never modified; retention applies), because the results copy its patient
and study modules and reference its UIDs. An eligible radiograph's pixels also go into the
upload store as the same pixel-only PNG ``POST /upload`` would store, so the predictor answers
a received study exactly as ``POST /predict/study`` answers the same pixels. An instance the
models were never trained to judge (a CT slice, a chest film) is recorded with the reason and
never decoded or scored. bonexr's own results, routed back by a PACS rule, are taken and
ignored: otherwise each report would make the study new again, and a loop.
"""

from __future__ import annotations

import hashlib
import io
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bonexr.atomic import write_bytes_atomic
from bonexr.errors import ImageError
from service.domain.errors import TriageError
from service.domain.policy import screen_header
from service.doors.dicom.outcomes import (
    CANNOT_UNDERSTAND,
    DATASET_DOES_NOT_MATCH,
    OUT_OF_RESOURCES,
    instance_status,
)
from service.doors.dicom.results import MANUFACTURER, RESULTS_SERIES_DESCRIPTION
from service.triage import ingest as triage_ingest
from service.triage.services import Services


class InstanceRejected(Exception):
    """The instance was not taken at all (unreadable, no UIDs, undecodable pixels, store
    full): the sender is told with ``status`` and ``detail``; nothing was recorded."""

    def __init__(self, status: int, detail: str, sop_uid: str | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.sop_uid = sop_uid


@dataclass(frozen=True)
class ReceivedInstance:
    """What the node keeps about one received instance (no patient data but UIDs)."""

    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str
    modality: str | None
    body_part: str | None
    #: sha256 of the instance as sent (``instances/<sha256>.dcm``)
    dicom_sha256: str
    #: the upload-store PNG of an eligible radiograph; None when not eligible
    filename: str | None = None
    #: why the instance is never scored (the eligibility gate's sentence)
    refusal: str | None = None
    #: a digest of PatientID and its issuer (:func:`patient_key`; None for older records)
    patient: str | None = None
    #: what the report must say of it: the decoder's warnings (a multi-frame instance) and
    #: the gate's under BONEXR_ELIGIBILITY=warn (the instance is scored anyway)
    warnings: tuple[str, ...] = ()
    #: one of bonexr's own result objects, routed back by the PACS: taken, never a view
    own_result: bool = False

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, payload: dict[str, Any]) -> ReceivedInstance:
        fields: dict[str, Any] = {k: payload.get(k) for k in cls.__dataclass_fields__}
        fields["warnings"] = tuple(payload.get("warnings") or ())  # absent before 0.4
        return cls(**fields)


def instance_path(root: Path, sha256: str) -> Path:
    """Where an instance is kept, by the sha256 of its bytes."""
    return root / "instances" / f"{sha256}.dcm"


def read_header(data: bytes) -> Any:
    """The instance's elements, values over 1 KiB (the pixels) left unread;
    :class:`InstanceRejected` when it is not DICOM."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(io.BytesIO(data), defer_size=1024)
    except (InvalidDicomError, ValueError, TypeError, KeyError, EOFError, OSError) as exc:
        raise InstanceRejected(
            CANNOT_UNDERSTAND, f"not a readable DICOM instance ({type(exc).__name__})"
        ) from None


def _text(header: Any, keyword: str) -> str | None:
    value = header.get(keyword)
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def patient_key(header: Any) -> str:
    """Who the instance is of, as a digest (the node keeps no patient data): PatientID and
    its issuer, hashed."""
    who = f"{_text(header, 'PatientID') or ''}\x00{_text(header, 'IssuerOfPatientID') or ''}"
    return hashlib.sha256(who.encode("utf-8", "replace")).hexdigest()[:16]


def _identifiers(header: Any) -> tuple[dict[str, str | None], str, str]:
    """(study and series UIDs, SOP Instance UID, SOP Class UID), each present and a valid
    UID (they go into the results as they are: one a PACS would refuse is refused here)."""
    uids = {k: _text(header, k) for k in ("StudyInstanceUID", "SeriesInstanceUID")}
    sop_uid = _text(header, "SOPInstanceUID")
    sop_class = _text(header, "SOPClassUID")
    named = {**uids, "SOPInstanceUID": sop_uid, "SOPClassUID": sop_class}
    missing = [k for k, v in named.items() if v is None]
    if missing:
        raise InstanceRejected(
            DATASET_DOES_NOT_MATCH, f"the instance has no {', '.join(missing)}", sop_uid
        )
    assert sop_uid is not None and sop_class is not None
    invalid = [k for k, v in named.items() if not is_uid(str(v))]
    if invalid:
        raise InstanceRejected(
            DATASET_DOES_NOT_MATCH,
            f"{', '.join(invalid)} is not a DICOM UID (digits and dots, at most 64 characters)",
            sop_uid if "SOPInstanceUID" not in invalid else None,
        )
    return uids, sop_uid, sop_class


def ingest(
    services: Services,
    root: Path,
    data: bytes,
    *,
    study_uid: str | None = None,
    patient_of: Callable[[str], str | None] | None = None,
) -> ReceivedInstance:
    """Check and store one instance as sent (blocking: call from a worker thread).

    Raises :class:`InstanceRejected` when it cannot be taken (also when ``study_uid`` is
    given and the instance belongs to another study, or when ``patient_of`` says the study
    already holds another patient's instances: one report must never mix two patients); a
    not-eligible instance is *taken* (kept, recorded with its refusal) but never decoded.
    """
    header = read_header(data)
    uids, sop_uid, sop_class = _identifiers(header)
    if study_uid is not None and uids["StudyInstanceUID"] != study_uid:
        raise InstanceRejected(
            DATASET_DOES_NOT_MATCH, "the instance belongs to another study", sop_uid
        )
    patient = patient_key(header)
    holder = patient_of(str(uids["StudyInstanceUID"])) if patient_of is not None else None
    if holder is not None and holder != patient:
        raise InstanceRejected(
            DATASET_DOES_NOT_MATCH,
            "the study already holds instances of another patient (PatientID differs): "
            "not taken, so that one report never mixes two patients",
            sop_uid,
        )
    modality, body_part = _text(header, "Modality"), _text(header, "BodyPartExamined")
    if is_own_result(header):  # a routing rule sent our report back: never a new view
        return ReceivedInstance(
            str(uids["StudyInstanceUID"]), str(uids["SeriesInstanceUID"]), sop_uid,
            sop_class, modality, body_part, "", own_result=True,
        )  # fmt: skip
    mode = services.settings.eligibility
    known = services.engine.known_parts
    screen = screen_header(sop_uid, modality, body_part, mode, known)  # before decoding
    if screen.refusal is None and "PixelData" not in header:  # a report, a presentation state
        refusal_text: str | None = "not eligible: the instance has no image (no PixelData)"
    else:
        refusal_text = screen.refusal.detail if screen.refusal is not None else None
    filename, warnings = None, screen.warnings
    if refusal_text is None:  # stored: the decoder's warnings (a multi-frame) and the gate's
        filename, warnings = _store_pixels(services, data, sop_uid)
    sha = hashlib.sha256(data).hexdigest()
    path = instance_path(root, sha)
    if not path.is_file():
        try:
            write_bytes_atomic(path, data)
        except OSError as exc:
            raise InstanceRejected(
                OUT_OF_RESOURCES, f"the node's folder is not writable ({type(exc).__name__})"
            ) from None
    return ReceivedInstance(
        study_uid=str(uids["StudyInstanceUID"]),
        series_uid=str(uids["SeriesInstanceUID"]),
        sop_uid=sop_uid,
        sop_class_uid=sop_class,
        modality=modality,
        body_part=body_part,
        dicom_sha256=sha,
        filename=filename,
        refusal=refusal_text,
        warnings=warnings,
        patient=patient,
    )


#: A UID as PS3.5 9.1 allows it, leading zeros tolerated (older devices write them).
_UID = re.compile(r"[0-9]+(\.[0-9]+)*")


def is_uid(value: str) -> bool:
    """Whether ``value`` can be written back as a UID: digits and dots, at most 64
    characters (``../``, letters or spaces in one would make every result non-conformant)."""
    return len(value) <= 64 and _UID.fullmatch(value) is not None


def is_own_result(header: Any) -> bool:
    """Whether ``header`` is one of the objects bonexr sends back (report or heat map)."""
    return (
        _text(header, "SeriesDescription") == RESULTS_SERIES_DESCRIPTION
        and _text(header, "Manufacturer") == MANUFACTURER
    )


def _store_pixels(services: Services, data: bytes, sop_uid: str) -> tuple[str, tuple[str, ...]]:
    """Decode under the service's limits and store the pixel-only PNG: the one ingest path
    ``/upload`` takes (:func:`service.triage.ingest.ingest`). The header gate already
    passed; any image or store problem is the sender's status, never a half-taken study."""
    try:
        ingested = triage_ingest.ingest(services, data, provenance="dicom", view=sop_uid)
    except (TriageError, ImageError) as exc:  # full store; too large, undecodable ...
        raise InstanceRejected(instance_status(exc), _detail(exc), sop_uid) from None
    if ingested.filename is None:  # refused on the decoded header: cannot happen after
        raise InstanceRejected(CANNOT_UNDERSTAND, "not eligible", sop_uid)  # the gate above
    return ingested.filename, ingested.intake.warnings


def _detail(exc: Exception) -> str:
    return exc.detail if isinstance(exc, TriageError) else str(exc)
