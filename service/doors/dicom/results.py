"""A study's answer as the DICOM objects a PACS viewer shows (IHE "AI Results" style).

A radiologist reads in the PACS, not on our web page, so the answer has to arrive there
as ordinary DICOM in the *same study* as the images it is about:

* a TID 1500 Measurement Report (:func:`build_report`, a Comprehensive 3D SR built with
  highdicom): the study finding with its calibrated probability, threshold and operating
  point, then one measurement group per received instance, scored or refused with the
  reason, each referencing its source image, so that nothing the node received goes
  unaccounted for;
* per scored view, a Secondary Capture (:func:`build_heatmap_capture`) of the heat-map
  overlay with a burned-in "NOT FOR DIAGNOSIS" label, for viewers that render no SR.

Each goes into a new series of its own (Modality is a series attribute: SR for the
report, OT for the captures), both described :data:`RESULTS_SERIES_DESCRIPTION`; the
patient and study
modules are copied from the source headers, never re-typed. :func:`read_report` parses
a report back (tests, and the closing of the loop: what did we send for this study).
Sources are headers only: nothing here reads the pixels of a source instance.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import highdicom as hd
import numpy as np
from highdicom.coding_schemes import CodingSchemeIdentificationItem
from highdicom.sr.utils import find_content_items
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sr.codedict import codes
from pydicom.uid import Comprehensive3DSRStorage, ExplicitVRLittleEndian, generate_uid
from pydicom.valuerep import MAX_VALUE_LEN

log = logging.getLogger("bonexr.dicom")

RESULTS_SERIES_DESCRIPTION = "bonexr AI results"
MANUFACTURER = "bonexr"

# Our own coding scheme, for the few concepts no standard code names (declared in the
# report's Coding Scheme Identification Sequence; "99" marks a private designator).
PRIVATE_SCHEME = "99BONEXR"


@dataclass(frozen=True)
class ViewOutcome:
    """One received instance and what became of it."""

    sop_instance_uid: str
    sop_class_uid: str
    series_instance_uid: str
    scored: bool  # False: refused, never scored
    reason: str | None = None  # why refused (e.g. "not eligible: the DICOM Modality is CT")
    abnormality_probability: float | None = None  # calibrated, image level
    threshold: float | None = None
    abnormal: bool | None = None
    bone_type: str | None = None  # e.g. "Elbow"


@dataclass(frozen=True)
class StudyOutcome:
    """The study's answer (or why there is none) and what produced it."""

    study_instance_uid: str
    model_name: str  # bundle name, e.g. "demo"
    model_version: str  # bundle version hash, e.g. "3f2a9c1b7d4e"
    software_version: str  # bonexr.__version__
    views: list[ViewOutcome]
    abnormal: bool | None = None  # None: no study finding (refused)
    probability: float | None = None  # calibrated study probability
    threshold: float | None = None  # study threshold applied
    operating_point: str | None = None  # "triage" / "balanced"
    operating_rule: str | None = None  # e.g. "sensitivity >= 0.95 on validation"
    body_part: str | None = None  # "Elbow", "Hand", "Shoulder", ...
    refusal: str | None = None  # why no study finding
    not_for_diagnosis: str | None = None  # statement to include, else None
    warnings: tuple[str, ...] = ()


# --- codes -----------------------------------------------------------------------------


def _private(value: str, meaning: str) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(value, PRIVATE_SCHEME, meaning)


_PROCEDURE = hd.sr.CodedConcept("363680008", "SCT", "Radiographic imaging procedure")
_ABNORMAL = hd.sr.CodedConcept("263654008", "SCT", "Abnormal")
_NORMAL = hd.sr.CodedConcept("17621005", "SCT", "Normal")
_ELIGIBILITY = hd.sr.CodedConcept("126075", "DCM", "Eligibility")
_THRESHOLD = hd.sr.CodedConcept("122411", "DCM", "Threshold Value")
_COMMENT = hd.sr.CodedConcept("121106", "DCM", "Comment")
_PROBABILITY_UNIT = hd.sr.CodedConcept("{probability}", "UCUM", "probability")
_PROBABILITY = _private("ABNPROB", "Calibrated probability of abnormality")
_NOT_ELIGIBLE = _private("NOTELIGIBLE", "Not eligible for scoring")
_REFUSAL = _private("NORESULTREASON", "Reason for no result")
_OPERATING_POINT = _private("OPPOINT", "Operating point")
_OPERATING_RULE = _private("OPRULE", "Operating point rule")
_BODY_PART_TEXT = _private("BODYPART", "Body part")
_WARNING = _private("WARNING", "Processing warning")

# SNOMED CT anatomic regions (DICOM CID 4) of the body parts the bundles route to.
_BODY_PARTS = {
    "elbow": hd.sr.CodedConcept("127949000", "SCT", "Elbow"),
    "finger": hd.sr.CodedConcept("7569003", "SCT", "Finger"),
    "forearm": hd.sr.CodedConcept("14975008", "SCT", "Forearm"),
    "hand": hd.sr.CodedConcept("85562004", "SCT", "Hand"),
    "humerus": hd.sr.CodedConcept("85050009", "SCT", "Humerus"),
    "shoulder": hd.sr.CodedConcept("16982005", "SCT", "Shoulder"),
    "wrist": hd.sr.CodedConcept("74670003", "SCT", "Wrist joint"),
}
_BODY_PART_NAMES = {code.value: name.capitalize() for name, code in _BODY_PARTS.items()}

_STUDY_GROUP = "bonexr study result"
_VIEW_GROUP = "bonexr view result"

# Type 2 patient/study attributes highdicom reads from the first evidence dataset.
_TYPE2_PATIENT_STUDY = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
)


# --- shared helpers --------------------------------------------------------------------


def _algorithm(outcome: StudyOutcome) -> hd.sr.AlgorithmIdentification:
    """Which software and which bundle produced the numbers (TID 4019)."""
    return hd.sr.AlgorithmIdentification(
        name="bonexr",
        version=f"{outcome.software_version} bundle {outcome.model_name} {outcome.model_version}",
        parameters=[f"model_name={outcome.model_name}", f"model_version={outcome.model_version}"],
        manufacturer=MANUFACTURER,
    )


def _label(outcome: StudyOutcome) -> str:
    return f"NOT FOR DIAGNOSIS - bonexr {outcome.model_name} {outcome.model_version}"


def _header(source: Dataset) -> Dataset:
    """A header-only copy of ``source``: its pixels dropped, empty values for the type 2
    patient/study attributes it lacks (highdicom reads them unconditionally), nothing
    shared with the caller's dataset (highdicom adds the elements it copies as they are)."""
    header = Dataset()
    for element in source:
        if element.tag.group != 0x7FE0:
            header.add(copy.deepcopy(element))
    for keyword in _TYPE2_PATIENT_STUDY:
        if keyword not in header:
            setattr(header, keyword, None)
    header.SpecificCharacterSet = _CHARSET  # values are text now, written back as UTF-8
    for element in header:
        _shorten(element)
    return header


#: Results are written in UTF-8 whatever the source's character set: a name decoded from
#: Latin-1 or Japanese is written back whole, never as "?".
_CHARSET = "ISO_IR 192"
#: Person names: at most 64 characters per component group (PS3.5 6.2).
_PN_GROUP_MAX = 64


def _shorten(element: DataElement) -> None:
    """Cut a copied text value to its VR's length limit (PS3.5 6.2): a PACS refuses an
    object with an over-long value (Orthanc answered 200 and stored nothing for an
    over-long PatientName copied from the source). UIDs are never cut (intake refuses an
    invalid one); a shortened value is logged by name, never by content."""
    limit = MAX_VALUE_LEN.get(element.VR) if element.VR != "UI" else None
    values = element.value if isinstance(element.value, MultiValue) else [element.value]
    if element.VR == "PN":
        texts = [str(v) for v in values]
        fixed = ["=".join(g[:_PN_GROUP_MAX] for g in t.split("=")) for t in texts]
    elif limit is not None and all(isinstance(v, str) for v in values):
        texts = list(values)
        fixed = [t[:limit] for t in texts]
    else:
        return
    if fixed != texts:
        element.value = fixed if len(fixed) > 1 else fixed[0]
        log.info("results: %s shortened to the DICOM length limit", element.keyword)


def _check_same_study(outcome: StudyOutcome, sources: Sequence[Dataset]) -> None:
    for source in sources:
        if source.get("StudyInstanceUID") != outcome.study_instance_uid:
            raise ValueError(
                f"source {source.get('SOPInstanceUID')} is not in study "
                f"{outcome.study_instance_uid}: results go into the sources' own study"
            )


def _check_views_have_sources(outcome: StudyOutcome, sources: Sequence[Dataset]) -> None:
    received = {source.SOPInstanceUID for source in sources}
    missing = [
        view.sop_instance_uid for view in outcome.views if view.sop_instance_uid not in received
    ]
    if missing:
        raise ValueError(f"no source dataset for the view(s) {', '.join(missing)}")


# --- the report ------------------------------------------------------------------------


def _text(name: hd.sr.CodedConcept, value: str) -> hd.sr.TextContentItem:
    return hd.sr.TextContentItem(
        name=name, value=value, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
    )


def _finding(abnormal: bool | None) -> hd.sr.CodedConcept | None:
    if abnormal is None:
        return None
    return _ABNORMAL if abnormal else _NORMAL


def _measurements(probability: float | None, threshold: float | None) -> list[hd.sr.Measurement]:
    """The calibrated probability and the threshold it was compared with (TID 300; the
    algorithm is named once, on the group)."""
    values = [(_PROBABILITY, probability), (_THRESHOLD, threshold)]
    return [
        hd.sr.Measurement(name=name, value=float(value), unit=_PROBABILITY_UNIT)
        for name, value in values
        if value is not None
    ]


def _body_part(name: str | None) -> tuple[list[hd.sr.FindingSite], list[hd.sr.TextContentItem]]:
    """A coded finding site for the parts SNOMED names here, free text for any other."""
    if not name:
        return [], []
    code = _BODY_PARTS.get(name.strip().lower())
    if code is None:
        return [], [_text(_BODY_PART_TEXT, name)]
    return [hd.sr.FindingSite(anatomic_location=code)], []


def _group(
    outcome: StudyOutcome,
    identifier: str,
    *,
    finding: hd.sr.CodedConcept | None,
    measurements: list[hd.sr.Measurement],
    body_part: str | None,
    texts: list[hd.sr.TextContentItem],
    sources: list[hd.sr.SourceImageForMeasurementGroup],
    evaluations: list[hd.sr.QualitativeEvaluation] | None = None,
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """One TID 1501 measurement group; free-text items go after the coded content."""
    sites, site_texts = _body_part(body_part)
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier=identifier),
        finding_type=finding,
        algorithm_id=_algorithm(outcome),
        finding_sites=sites or None,
        measurements=measurements or None,
        qualitative_evaluations=evaluations or None,
        source_images=sources or None,
    )
    group[0].ContentSequence.extend([*site_texts, *texts])
    return group


def _source_image(view: ViewOutcome) -> hd.sr.SourceImageForMeasurementGroup:
    return hd.sr.SourceImageForMeasurementGroup(
        referenced_sop_class_uid=view.sop_class_uid,
        referenced_sop_instance_uid=view.sop_instance_uid,
    )


def _study_group(outcome: StudyOutcome) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """The study answer, or, when refused, only why there is none."""
    texts: list[hd.sr.TextContentItem] = []
    if outcome.refusal is not None:
        texts.append(_text(_REFUSAL, outcome.refusal))
    if outcome.operating_point:
        texts.append(_text(_OPERATING_POINT, outcome.operating_point))
    if outcome.operating_rule:
        texts.append(_text(_OPERATING_RULE, outcome.operating_rule))
    if outcome.not_for_diagnosis:
        texts.append(_text(_COMMENT, outcome.not_for_diagnosis))
    texts.extend(_text(_WARNING, warning) for warning in outcome.warnings)
    refused = outcome.refusal is not None
    return _group(
        outcome,
        _STUDY_GROUP,
        finding=None if refused else _finding(outcome.abnormal),
        measurements=[] if refused else _measurements(outcome.probability, outcome.threshold),
        body_part=outcome.body_part,
        texts=texts,
        sources=[_source_image(view) for view in outcome.views if view.scored],
    )


def _view_group(
    outcome: StudyOutcome, view: ViewOutcome, number: int
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """One received instance: its own probability and finding, or why it was refused."""
    identifier = f"{_VIEW_GROUP} {number}"
    if not view.scored:
        return _group(
            outcome,
            identifier,
            finding=None,
            measurements=[],
            body_part=view.bone_type,
            texts=[_text(_REFUSAL, view.reason or "not scored")],
            sources=[_source_image(view)],
            evaluations=[hd.sr.QualitativeEvaluation(name=_ELIGIBILITY, value=_NOT_ELIGIBLE)],
        )
    return _group(
        outcome,
        identifier,
        finding=_finding(view.abnormal),
        measurements=_measurements(view.abnormality_probability, view.threshold),
        body_part=view.bone_type,
        texts=[],
        sources=[_source_image(view)],
    )


def _observation_context(outcome: StudyOutcome) -> hd.sr.ObservationContext:
    """The observer is the device (the model), not a person: an unverified AI result."""
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=generate_uid(entropy_srcs=["bonexr", outcome.model_name, outcome.model_version]),
        name=f"bonexr {outcome.model_name}",
        manufacturer_name=MANUFACTURER,
        model_name=f"bonexr {outcome.model_name} {outcome.model_version}",
    )
    return hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=codes.DCM.Device, observer_identifying_attributes=device
        )
    )


def _content(outcome: StudyOutcome) -> hd.sr.MeasurementReport:
    groups = [_study_group(outcome)]
    groups.extend(_view_group(outcome, view, n) for n, view in enumerate(outcome.views, 1))
    return hd.sr.MeasurementReport(
        observation_context=_observation_context(outcome),
        procedure_reported=_PROCEDURE,
        imaging_measurements=groups,
    )


def _evidence(outcome: StudyOutcome, sources: Sequence[Dataset]) -> list[Dataset]:
    """Headers of all sources, a scored one first: highdicom copies the patient and study
    modules from the first evidence dataset."""
    scored = {view.sop_instance_uid for view in outcome.views if view.scored}
    ordered = sorted(sources, key=lambda source: source.SOPInstanceUID not in scored)
    return [_header(source) for source in ordered]


def _results_series(
    outcome: StudyOutcome,
    series_instance_uid: str,
    series_number: int,
    sop_instance_uid: str,
    instance_number: int,
) -> dict[str, Any]:
    """What the report and every capture share: the results series and who made them
    (the node recognises its own objects by these, see ``instances.is_own_result``)."""
    return {
        "series_instance_uid": series_instance_uid,
        "series_number": series_number,
        "sop_instance_uid": sop_instance_uid,
        "instance_number": instance_number,
        "manufacturer": MANUFACTURER,
        "series_description": RESULTS_SERIES_DESCRIPTION,
        "manufacturer_model_name": f"bonexr {outcome.model_name}",
        "software_versions": outcome.software_version,
    }


def build_report(
    outcome: StudyOutcome,
    sources: Sequence[Dataset],
    *,
    series_instance_uid: str,
    sop_instance_uid: str,
    series_number: int = 9901,
    instance_number: int = 1,
    predecessor: tuple[str, str] | None = None,
) -> Dataset:
    """The TID 1500 SR of ``outcome``, in the study of ``sources``.

    ``sources`` are the received instances' headers (pixels are not needed): every one is
    recorded as evidence, and every view of ``outcome`` must be among them. The report is
    complete but unverified: a device, not a person, made it. ``predecessor`` (series and
    SOP Instance UID of the earlier report of this study, which this one supersedes) goes
    into the PredecessorDocumentsSequence.
    """
    if not sources:
        raise ValueError("a report needs at least one source instance")
    _check_same_study(outcome, sources)
    _check_views_have_sources(outcome, sources)
    sources = [_header(source) for source in sources]  # what is copied, made conformant
    return hd.sr.Comprehensive3DSR(
        evidence=_evidence(outcome, sources),
        content=_content(outcome),
        is_complete=True,
        is_verified=False,
        previous_versions=_previous_report(outcome, predecessor),
        **_results_series(
            outcome, series_instance_uid, series_number, sop_instance_uid, instance_number
        ),
        coding_schemes=[
            CodingSchemeIdentificationItem(
                designator=PRIVATE_SCHEME,
                name="bonexr local codes",
                responsible_organization=MANUFACTURER,
            )
        ],
    )


def _previous_report(
    outcome: StudyOutcome, predecessor: tuple[str, str] | None
) -> list[Dataset] | None:
    """The earlier report as highdicom's ``previous_versions`` wants it (its identifiers)."""
    if predecessor is None:
        return None
    earlier = Dataset()
    earlier.StudyInstanceUID = outcome.study_instance_uid
    earlier.SeriesInstanceUID, earlier.SOPInstanceUID = predecessor
    earlier.SOPClassUID = Comprehensive3DSRStorage
    return [earlier]


# --- the heat-map capture --------------------------------------------------------------


def _font(width: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's default font, scaled to the image: about 1/40 of its width, 10 px at least."""
    return ImageFont.load_default(size=max(10, width // 40))


def burn_label(overlay_rgb: np.ndarray, label: str) -> np.ndarray:
    """``overlay_rgb`` with ``label`` in white on a black band across the top; two lines
    (split at " - ") when one does not fit the width."""
    image = Image.fromarray(np.ascontiguousarray(overlay_rgb))  # H x W x 3 uint8: RGB
    draw = ImageDraw.Draw(image)
    font = _font(image.width)
    pad = max(2, image.width // 200)
    lines = [label]
    if draw.textlength(label, font=font) > image.width - 2 * pad:
        lines = label.split(" - ", 1)
    text = "\n".join(lines)
    bottom = draw.multiline_textbbox((pad, pad), text, font=font)[3]
    draw.rectangle((0, 0, image.width, bottom + pad), fill=(0, 0, 0))
    draw.multiline_text((pad, pad), text, font=font, fill=(255, 255, 255))
    return np.asarray(image, dtype=np.uint8)


def _check_overlay(overlay_rgb: np.ndarray) -> None:
    if overlay_rgb.ndim != 3 or overlay_rgb.shape[2] != 3 or overlay_rgb.dtype != np.uint8:
        raise ValueError(
            f"overlay_rgb must be H x W x 3 uint8, got {overlay_rgb.shape} {overlay_rgb.dtype}"
        )


def _comments(outcome: StudyOutcome, view: ViewOutcome) -> str:
    """What the picture is, for ImageComments: the model, the view's numbers, the warning."""
    parts = [
        f"bonexr {outcome.software_version} bundle {outcome.model_name} {outcome.model_version}"
    ]
    if view.abnormality_probability is not None:
        finding = {None: "", True: ", abnormal", False: ", normal"}[view.abnormal]
        threshold = "" if view.threshold is None else f" (threshold {view.threshold:.3f})"
        parts.append(
            f"abnormality probability {view.abnormality_probability:.3f}{threshold}{finding}"
        )
    parts.append(outcome.not_for_diagnosis or "NOT FOR DIAGNOSIS")
    return "; ".join(parts)[:10240]


def _source_reference(source: Dataset) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = source.SOPClassUID
    item.ReferencedSOPInstanceUID = source.SOPInstanceUID
    item.PurposeOfReferenceCodeSequence = [
        hd.sr.CodedConcept("121322", "DCM", "Source image for image processing operation")
    ]
    return item


def _describe(capture: Dataset, source: Dataset, outcome: StudyOutcome, view: ViewOutcome) -> None:
    """The attributes that tell a viewer what the capture is and where it came from."""
    capture.BurnedInAnnotation = "YES"
    capture.ImageComments = _comments(outcome, view)
    capture.DerivationDescription = (
        f"bonexr heat map (class activation map) over the source image; "
        f"bundle {outcome.model_name} {outcome.model_version}; not for diagnosis"
    )[:1024]
    capture.SourceImageSequence = [_source_reference(source)]
    # The overlay keeps the source's orientation (perhaps not its size); type 2: empty
    # when the source does not say.
    capture.PatientOrientation = source.get("PatientOrientation")
    for keyword in ("BodyPartExamined", "Laterality", "ImageLaterality"):
        if source.get(keyword):
            setattr(capture, keyword, source.get(keyword))
    if "BodyPartExamined" in capture and not any(
        keyword in capture for keyword in ("Laterality", "ImageLaterality")
    ):
        capture.Laterality = None  # type 2C for a paired body part: known to be unknown


def build_heatmap_capture(
    source: Dataset,
    overlay_rgb: np.ndarray,
    outcome: StudyOutcome,
    view: ViewOutcome,
    *,
    series_instance_uid: str,
    sop_instance_uid: str,
    series_number: int = 9901,
    instance_number: int = 2,
) -> Dataset:
    """Secondary capture of ``overlay_rgb`` (H x W x 3 uint8, already the heat map drawn
    over the image) with a burned-in "NOT FOR DIAGNOSIS - bonexr <model_name>
    <model_version>" label on a dark band (BurnedInAnnotation "YES"), so that a viewer that
    shows no SR still shows what the model looked at, and never without the warning."""
    _check_overlay(overlay_rgb)
    if source.SOPInstanceUID != view.sop_instance_uid:
        raise ValueError("the source dataset is not the view's instance")
    header = _header(source)
    capture = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=header,
        pixel_array=burn_label(overlay_rgb, _label(outcome)),
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
        bits_allocated=8,
        # highdicom needs a coordinate system; PATIENT asks for an orientation, which
        # _describe replaces with the source's own
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        patient_orientation=("L", "F"),
        transfer_syntax_uid=ExplicitVRLittleEndian,
        **_results_series(
            outcome, series_instance_uid, series_number, sop_instance_uid, instance_number
        ),
    )
    capture.copy_patient_and_study_information(header)
    _describe(capture, header, outcome, view)
    return capture


# --- reading a report back -------------------------------------------------------------


def _texts(item: Dataset, name: hd.sr.CodedConcept) -> list[str]:
    found = find_content_items(item, name=name, value_type=hd.sr.ValueTypeValues.TEXT)
    return [str(match.value) for match in found]


def _first_text(item: Dataset, name: hd.sr.CodedConcept) -> str | None:
    found = _texts(item, name)
    return found[0] if found else None


def _number(
    group: hd.sr.MeasurementsAndQualitativeEvaluations, name: hd.sr.CodedConcept
) -> float | None:
    found = group.get_measurements(name=name)
    return float(found[0].value) if found else None


def _finding_name(group: hd.sr.MeasurementsAndQualitativeEvaluations) -> str | None:
    finding = group.finding_type
    if finding is None:
        return None
    return {_ABNORMAL.value: "abnormal", _NORMAL.value: "normal"}.get(
        finding.value, finding.meaning
    )


def _read_body_part(group: hd.sr.MeasurementsAndQualitativeEvaluations) -> str | None:
    for site in group.finding_sites:
        return _BODY_PART_NAMES.get(site.value.value, site.value.meaning)
    return _first_text(group[0], _BODY_PART_TEXT)


def _read_view(group: hd.sr.MeasurementsAndQualitativeEvaluations) -> dict[str, Any]:
    sources = group.source_images
    refused = any(e.value == _NOT_ELIGIBLE for e in group.get_qualitative_evaluations(_ELIGIBILITY))
    return {
        "sop_instance_uid": str(sources[0].referenced_sop_instance_uid) if sources else None,
        "sop_class_uid": str(sources[0].referenced_sop_class_uid) if sources else None,
        "scored": not refused,
        "finding": _finding_name(group),
        "probability": _number(group, _PROBABILITY),
        "threshold": _number(group, _THRESHOLD),
        "body_part": _read_body_part(group),
        "reason": _first_text(group[0], _REFUSAL),
    }


def _algorithm_parameters(group: hd.sr.MeasurementsAndQualitativeEvaluations) -> dict[str, str]:
    found = _texts(group[0], hd.sr.CodedConcept("111002", "DCM", "Algorithm Parameters"))
    return dict(parameter.split("=", 1) for parameter in found if "=" in parameter)


def read_report(dataset: Dataset) -> dict[str, Any]:
    """Parse a report made by :func:`build_report` back into plain values (highdicom's
    TID 1500 reader): ``finding`` ("abnormal", "normal" or None), ``probability``,
    ``threshold``, ``operating_point``, ``operating_rule``, ``body_part``, ``model_name``,
    ``model_version``, ``refusal``, ``not_for_diagnosis``, ``warnings`` and ``views``
    (per instance: ``sop_instance_uid``, ``scored``, ``finding``, ``probability``,
    ``threshold``, ``body_part``, ``reason``)."""
    report = hd.sr.Comprehensive3DSR.from_dataset(dataset)
    content = report.content
    if not isinstance(content, hd.sr.MeasurementReport):
        raise ValueError("not a TID 1500 measurement report")
    groups = content.get_image_measurement_groups()
    study = [g for g in groups if g.tracking_identifier == _STUDY_GROUP]
    if len(study) != 1:
        raise ValueError("not a bonexr report: no single study result group")
    group = study[0]
    parameters = _algorithm_parameters(group)
    views = [g for g in groups if (g.tracking_identifier or "").startswith(_VIEW_GROUP)]
    finding, probability = _finding_name(group), _number(group, _PROBABILITY)
    return {
        # the API's names (docs/api.md, "One vocabulary"), then the report's own
        "result": finding,
        "abnormality_probability": probability,
        "finding": finding,
        "probability": probability,
        "threshold": _number(group, _THRESHOLD),
        "operating_point": _first_text(group[0], _OPERATING_POINT),
        "operating_rule": _first_text(group[0], _OPERATING_RULE),
        "body_part": _read_body_part(group),
        "model_name": parameters.get("model_name"),
        "model_version": parameters.get("model_version"),
        "refusal": _first_text(group[0], _REFUSAL),
        "not_for_diagnosis": _first_text(group[0], _COMMENT),
        "warnings": _texts(group[0], _WARNING),
        "views": [_read_view(view) for view in views],
    }
