"""The DICOM answer a PACS shows (service.doors.dicom.results): the TID 1500 SR and the
heat-map secondary captures, checked by reading them back with highdicom and by
dicom3tools' ``dciodvfy`` (the IOD validator), in the study of the source images."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.filewriter import dcmwrite
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from service.doors.dicom.results import (
    RESULTS_SERIES_DESCRIPTION,
    StudyOutcome,
    ViewOutcome,
    build_heatmap_capture,
    build_report,
    burn_label,
    read_report,
)
from tests.tools import missing

CR_IMAGE = "1.2.840.10008.5.1.4.1.1.1"  # Computed Radiography Image Storage
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"  # CT Image Storage
STUDY_UID = generate_uid()
CR_SERIES = generate_uid()
CT_SERIES = generate_uid()
CT_REASON = "not eligible: the DICOM Modality is CT, not a radiograph (CR, DX)"
NOT_FOR_DIAGNOSIS = "Demo bundle trained on synthetic data: not for diagnosis."
SOURCE_KEYWORDS = ("PatientName", "PatientID", "StudyInstanceUID", "AccessionNumber", "StudyDate")


def _source(sop_class: str, series_uid: str, number: int, **elements: object) -> FileDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("source.dcm", {}, file_meta=meta, preamble=b"\x00" * 128)
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientName = "DOE^JANE"
    ds.PatientID = "ID-12345"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "F"
    ds.StudyInstanceUID = STUDY_UID
    ds.StudyDate = "20240501"
    ds.StudyTime = "101500"
    ds.AccessionNumber = "ACC-778"
    ds.ReferringPhysicianName = "REF^DOC"
    ds.StudyID = "S1"
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = 1
    ds.InstanceNumber = number
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    return ds


def _cr(number: int, photometric: str) -> FileDataset:
    pixels = (np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 7) % 4096
    ds = _source(
        CR_IMAGE,
        CR_SERIES,
        number,
        Modality="CR",
        BodyPartExamined="ELBOW",
        PatientOrientation=["A", "F"],
        Rows=64,
        Columns=64,
        SamplesPerPixel=1,
        PhotometricInterpretation=photometric,
        BitsAllocated=16,
        BitsStored=12,
        HighBit=11,
        PixelRepresentation=0,
    )
    ds.PixelData = pixels.tobytes()
    return ds


def _ct() -> FileDataset:
    return _source(CT_IMAGE, CT_SERIES, 1, Modality="CT", Rows=8, Columns=8)


@pytest.fixture
def sources() -> list[FileDataset]:
    """Two CR views of an elbow (one saying its laterality) and a CT instance."""
    first = _cr(1, "MONOCHROME2")
    first.ImageLaterality = "R"
    return [first, _cr(2, "MONOCHROME1"), _ct()]


def _outcome(sources: list[FileDataset], *, refused: bool = False) -> StudyOutcome:
    first, second, ct = sources
    views = [
        ViewOutcome(first.SOPInstanceUID, CR_IMAGE, CR_SERIES, scored=True,
                    abnormality_probability=0.8123456, threshold=0.41, abnormal=True,
                    bone_type="Elbow"),
        ViewOutcome(second.SOPInstanceUID, CR_IMAGE, CR_SERIES, scored=True,
                    abnormality_probability=0.2, threshold=0.41, abnormal=False,
                    bone_type="Elbow"),
        ViewOutcome(ct.SOPInstanceUID, CT_IMAGE, CT_SERIES, scored=False, reason=CT_REASON),
    ]  # fmt: skip
    common = {
        "study_instance_uid": STUDY_UID,
        "model_name": "demo",
        "model_version": "3f2a9c1b7d4e",
        "software_version": "0.1.0",
        "views": views,
        "not_for_diagnosis": NOT_FOR_DIAGNOSIS,
        "warnings": ("one view was refused",),
    }
    if refused:
        return StudyOutcome(**common, refusal="no eligible radiograph of one body part")  # type: ignore[arg-type]
    return StudyOutcome(
        **common,  # type: ignore[arg-type]
        abnormal=True,
        probability=0.7345678912,
        threshold=0.4321,
        operating_point="triage",
        operating_rule="sensitivity >= 0.95 on validation",
        body_part="Elbow",
    )


def _report(outcome: StudyOutcome, sources: Sequence[Dataset]) -> tuple[Dataset, str, str]:
    series, instance = generate_uid(), generate_uid()
    sr = build_report(outcome, sources, series_instance_uid=series, sop_instance_uid=instance)
    return sr, series, instance


def _round_trip(dataset: Dataset, path: Path) -> Dataset:
    dcmwrite(path, dataset, enforce_file_format=True)
    return dcmread(path)


def _headers_only(sources: list[FileDataset], folder: Path) -> list[Dataset]:
    """The sources as the caller may hold them: read back with ``stop_before_pixels``."""
    headers: list[Dataset] = []
    for n, source in enumerate(sources):
        path = folder / f"source{n}.dcm"
        dcmwrite(path, source, enforce_file_format=True)
        headers.append(dcmread(path, stop_before_pixels=True))
    return headers


def _referenced_instances(node: Dataset) -> set[str]:
    """Every ReferencedSOPInstanceUID anywhere below ``node`` (content tree and evidence)."""
    found: set[str] = set()
    for element in node:
        if element.keyword == "ReferencedSOPInstanceUID":
            found.add(str(element.value))
        elif element.VR == "SQ":
            for item in element.value:
                found |= _referenced_instances(item)
    return found


def test_report_round_trips_the_study_answer(sources: list[FileDataset], tmp_path: Path) -> None:
    outcome = _outcome(sources)
    sr, _, _ = _report(outcome, _headers_only(sources, tmp_path))
    parsed = read_report(_round_trip(sr, tmp_path / "sr.dcm"))

    assert parsed["finding"] == "abnormal"
    assert parsed["probability"] == pytest.approx(0.7345678912, abs=1e-6)
    assert parsed["threshold"] == pytest.approx(0.4321, abs=1e-6)
    assert parsed["operating_point"] == "triage"
    assert parsed["operating_rule"] == "sensitivity >= 0.95 on validation"
    assert parsed["body_part"] == "Elbow"
    assert parsed["model_name"] == "demo"
    assert parsed["model_version"] == "3f2a9c1b7d4e"
    assert parsed["refusal"] is None
    assert parsed["not_for_diagnosis"] == NOT_FOR_DIAGNOSIS
    assert parsed["warnings"] == ["one view was refused"]

    by_uid = {view["sop_instance_uid"]: view for view in parsed["views"]}
    assert set(by_uid) == {view.sop_instance_uid for view in outcome.views}
    for view in outcome.views:
        got = by_uid[view.sop_instance_uid]
        assert got["scored"] is view.scored
        assert got["reason"] == view.reason
        if view.scored:
            assert got["probability"] == pytest.approx(view.abnormality_probability, abs=1e-6)
            assert got["threshold"] == pytest.approx(view.threshold, abs=1e-6)
            assert got["finding"] == ("abnormal" if view.abnormal else "normal")
            assert got["body_part"] == "Elbow"
    ct = by_uid[sources[2].SOPInstanceUID]
    assert ct["scored"] is False
    assert ct["reason"] == CT_REASON
    assert ct["probability"] is None and ct["finding"] is None
    assert ct["sop_class_uid"] == CT_IMAGE


def test_report_is_a_new_series_in_the_source_study(
    sources: list[FileDataset], tmp_path: Path
) -> None:
    sr, series, instance = _report(_outcome(sources), sources)
    sr = _round_trip(sr, tmp_path / "sr.dcm")
    for keyword in (*SOURCE_KEYWORDS, "PatientBirthDate", "PatientSex", "StudyID"):
        assert sr.get(keyword) == sources[0].get(keyword), keyword
    assert sr.SeriesInstanceUID == series
    assert sr.SeriesInstanceUID not in {s.SeriesInstanceUID for s in sources}
    assert sr.SOPInstanceUID == instance
    assert sr.SeriesDescription == RESULTS_SERIES_DESCRIPTION
    assert sr.SeriesNumber == 9901 and sr.InstanceNumber == 1
    assert sr.Modality == "SR"
    assert sr.Manufacturer == "bonexr"
    assert sr.ManufacturerModelName == "bonexr demo"
    assert sr.SoftwareVersions == "0.1.0"
    assert sr.CompletionFlag == "COMPLETE"
    assert sr.VerificationFlag == "UNVERIFIED"
    schemes = {item.CodingSchemeDesignator for item in sr.CodingSchemeIdentificationSequence}
    assert "99BONEXR" in schemes


def test_report_references_only_and_all_the_sources(
    sources: list[FileDataset], tmp_path: Path
) -> None:
    sr, _, _ = _report(_outcome(sources), sources)
    sr = _round_trip(sr, tmp_path / "sr.dcm")
    source_uids = {s.SOPInstanceUID for s in sources}

    evidence = _referenced_instances(sr.CurrentRequestedProcedureEvidenceSequence[0])
    assert evidence == source_uids  # the refused CT instance is evidence too
    assert "PertinentOtherEvidenceSequence" not in sr
    content = _referenced_instances(sr.ContentSequence[-1])  # Imaging Measurements
    assert content == source_uids
    assert _referenced_instances(sr) == source_uids


def test_refused_study_has_no_finding_and_says_why(
    sources: list[FileDataset], tmp_path: Path
) -> None:
    sr, _, _ = _report(_outcome(sources, refused=True), sources)
    parsed = read_report(_round_trip(sr, tmp_path / "sr.dcm"))
    assert parsed["finding"] is None
    assert parsed["probability"] is None
    assert parsed["threshold"] is None
    assert parsed["refusal"] == "no eligible radiograph of one body part"
    assert parsed["not_for_diagnosis"] == NOT_FOR_DIAGNOSIS
    assert len(parsed["views"]) == 3  # the views are still accounted for


def test_report_needs_every_view_among_the_sources(sources: list[FileDataset]) -> None:
    with pytest.raises(ValueError, match="no source dataset"):
        _report(_outcome(sources), sources[:2])
    other_study = _cr(9, "MONOCHROME2")
    other_study.StudyInstanceUID = generate_uid()
    with pytest.raises(ValueError, match="not in study"):
        _report(_outcome(sources), [*sources, other_study])


def _overlay() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(40, 220, size=(64, 80, 3), dtype=np.uint8)


def _capture(source: Dataset, outcome: StudyOutcome, overlay: np.ndarray) -> Dataset:
    view = next(v for v in outcome.views if v.sop_instance_uid == source.SOPInstanceUID)
    return build_heatmap_capture(
        source,
        overlay,
        outcome,
        view,
        series_instance_uid=generate_uid(),
        sop_instance_uid=generate_uid(),
    )


def test_capture_is_the_labelled_overlay_in_the_source_study(
    sources: list[FileDataset], tmp_path: Path
) -> None:
    outcome, overlay = _outcome(sources), _overlay()
    header = _headers_only(sources, tmp_path)[1]  # the MONOCHROME1 view, no pixels
    sc = _round_trip(_capture(header, outcome, overlay.copy()), tmp_path / "sc.dcm")

    assert sc.PhotometricInterpretation == "RGB"
    assert (sc.Rows, sc.Columns) == overlay.shape[:2]
    assert sc.BurnedInAnnotation == "YES"
    assert sc.SeriesDescription == RESULTS_SERIES_DESCRIPTION
    assert "NOT FOR DIAGNOSIS" in sc.ImageComments.upper()
    for keyword in SOURCE_KEYWORDS:
        assert sc.get(keyword) == sources[1].get(keyword), keyword
    (reference,) = sc.SourceImageSequence
    assert reference.ReferencedSOPInstanceUID == sources[1].SOPInstanceUID
    assert reference.ReferencedSOPClassUID == CR_IMAGE

    pixels = sc.pixel_array
    assert pixels.shape == overlay.shape and pixels.dtype == np.uint8
    changed = np.flatnonzero((pixels != overlay).any(axis=(1, 2)))
    assert changed.size > 0  # the label is burned in
    height = int(changed.max()) + 1
    np.testing.assert_array_equal(changed, np.arange(height))  # as one band from the top
    assert height < pixels.shape[0] / 2
    band = pixels[:height]
    assert (band == 0).all(axis=-1).mean() > 0.3  # dark
    assert (band.min(axis=-1) > 200).any()  # with light text on it
    np.testing.assert_array_equal(pixels[height:], overlay[height:])  # the rest untouched


def test_label_fits_a_large_image_on_one_line() -> None:
    overlay = np.full((600, 1000, 3), 128, np.uint8)
    labelled = burn_label(overlay, "NOT FOR DIAGNOSIS - bonexr demo 3f2a9c1b7d4e")
    changed_rows = np.flatnonzero((labelled != overlay).any(axis=(1, 2)))
    assert 0 < changed_rows.max() < 60  # one line of a ~25 px font, at the top
    white_columns = np.flatnonzero((labelled == 255).all(axis=-1).any(axis=0))
    assert white_columns.max() < 1000 - 2  # the text is not clipped at the right edge


def _dciodvfy(path: Path) -> tuple[list[str], list[str]]:
    tool = shutil.which("dciodvfy")
    if tool is None:
        missing("dciodvfy", "install dicom3tools (apt-get install dicom3tools)")
    assert tool is not None
    run = subprocess.run([tool, str(path)], capture_output=True, text=True, timeout=60)
    lines = (run.stdout + run.stderr).splitlines()
    errors = [line for line in lines if line.startswith("Error")]
    warnings = [line for line in lines if line.startswith("Warning")]
    return errors, warnings


@pytest.mark.parametrize("refused", [False, True])
def test_dciodvfy_finds_no_error_in_the_report(
    sources: list[FileDataset], tmp_path: Path, refused: bool
) -> None:
    sr, _, _ = _report(_outcome(sources, refused=refused), sources)
    path = tmp_path / "sr.dcm"
    dcmwrite(path, sr, enforce_file_format=True)
    errors, warnings = _dciodvfy(path)
    print("\n".join(warnings))
    assert errors == []


@pytest.mark.parametrize("view", [0, 1], ids=["laterality-known", "laterality-unknown"])
def test_dciodvfy_finds_no_error_in_the_capture(
    sources: list[FileDataset], tmp_path: Path, view: int
) -> None:
    path = tmp_path / "sc.dcm"
    capture = _capture(sources[view], _outcome(sources), _overlay())
    dcmwrite(path, capture, enforce_file_format=True)
    errors, warnings = _dciodvfy(path)
    print("\n".join(warnings))
    assert errors == []


def test_sparse_source_headers_still_make_valid_objects(
    sources: list[FileDataset], tmp_path: Path
) -> None:
    """Type 2 patient/study attributes and the orientation missing from every source: the
    objects carry them empty (known to be unknown) and still validate."""
    sparse = ("PatientBirthDate", "PatientSex", "ReferringPhysicianName", "AccessionNumber")
    for source in sources:
        for keyword in (*sparse, "PatientOrientation", "ImageLaterality"):
            if keyword in source:
                delattr(source, keyword)
    outcome = _outcome(sources)
    sr, _, _ = _report(outcome, sources)
    capture = _capture(sources[0], outcome, _overlay())
    for name, dataset in (("sr", sr), ("sc", capture)):
        path = tmp_path / f"{name}.dcm"
        dcmwrite(path, dataset, enforce_file_format=True)
        errors, warnings = _dciodvfy(path)
        print("\n".join(warnings))
        assert errors == [], name
        written = dcmread(path)
        assert all(written[keyword].value in (None, "") for keyword in sparse), name
        assert written.PatientID == "ID-12345"
    assert "PatientOrientation" not in sources[0]  # the caller's datasets are left alone
    assert "Laterality" not in sources[0]
