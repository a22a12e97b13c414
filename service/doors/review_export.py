"""``bonexr export-reviews``: the readers' verdicts as training data for the next bundle.

Every reviewed study in the records (the newest answer of each, see supersession) becomes
rows of a labels CSV that ``bonexr train labels.csv`` reads (docs/training.md, "A labels
CSV"): one row per view whose image the upload store still holds, copied beside it. The
label is the readers' verdict where the current reviews agree (an amended review counts
by its amendment); a study whose readers disagree is left out and listed in
``disagreements.csv`` for adjudication. ``reviews.csv`` says who reviewed what and when,
and the export itself is audited (``export_reviews``, by the name given).

What the labels do not know: the body part is the model's (readers judged the verdict, not
the part), and there is no patient id (the records keep none): each study is its own
patient, so two studies of one patient can land on both sides of a training split.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from bonexr.atomic import write_bytes_atomic
from service.adapters.records.audit import AuditLog
from service.adapters.records.database import opened
from service.adapters.records.schema import Study
from service.adapters.records.worklist import RecordStore
from service.adapters.stores.factory import open_store
from service.domain.errors import UploadNotFoundError
from service.doors.csv_cells import escape_cell
from service.settings import Settings

LABEL_COLUMNS = ("path", "body_part", "label", "patient_id", "study_id")
REVIEW_COLUMNS = (
    "study_id", "arrived_at", "body_part", "label", "readers", "reader_results",
    "reviewed_at", "model_result", "model_probability", "bundle", "bundle_version",
)  # fmt: skip
LABEL_OF = {"abnormal": 1, "normal": 0}


@dataclass
class ExportSummary:
    studies: int = 0
    images: int = 0
    disagreements: int = 0
    no_image: int = 0  # views whose upload is gone (retention, deletion) or never stored
    conflicting: int = 0  # an image shared by studies with different verdicts: left out
    out: Path = field(default_factory=Path)

    def describe(self) -> str:
        return (
            f"{self.studies} reviewed studies -> {self.images} labelled images in "
            f"{self.out / 'labels.csv'}; {self.disagreements} studies where readers disagree "
            f"(disagreements.csv), {self.no_image} views without a stored image, "
            f"{self.conflicting} images with conflicting verdicts left out"
        )


def current_verdict(study: Study) -> tuple[str | None, list[tuple[str, str, str]]]:
    """The readers' agreed verdict (None when they disagree) and (reader, verdict, when) of
    each review that counts (an amended review counts by its amendment)."""
    counted = [r for r in study.reviews if r.replaced_by is None]
    who = [(r.reader, r.reader_result, r.created_at.isoformat() + "Z") for r in counted]
    verdicts = {r.reader_result for r in counted}
    return (verdicts.pop() if len(verdicts) == 1 else None), who


def _rows(
    studies: Iterator[Study], store: object, images: Path, summary: ExportSummary
) -> tuple[list[dict[str, object]], list[dict[str, object]], list[dict[str, object]]]:
    labels: list[dict[str, object]] = []
    reviews: list[dict[str, object]] = []
    disagreements: list[dict[str, object]] = []
    labelled: dict[str, int] = {}
    for study in studies:
        verdict, who = current_verdict(study)
        record: dict[str, object] = {
            "study_id": study.id,
            "arrived_at": study.arrived_at.isoformat() + "Z",
            "body_part": study.body_part or "",
            "label": "" if verdict is None else LABEL_OF[verdict],
            "readers": ";".join(r for r, _, _ in who),
            "reader_results": ";".join(v for _, v, _ in who),
            "reviewed_at": ";".join(t for _, _, t in who),
            "model_result": study.result or "",
            "model_probability": "" if study.probability is None else study.probability,
            "bundle": study.bundle_name,
            "bundle_version": study.bundle_version,
        }
        summary.studies += 1
        reviews.append(record)
        if verdict is None:
            summary.disagreements += 1
            disagreements.append(record)
            continue
        if not study.body_part:
            continue  # a refused study: no part to label it under
        for view in study.views:
            if view.refused or not view.filename:
                summary.no_image += not view.filename
                continue
            label = LABEL_OF[verdict]
            if labelled.get(view.filename, label) != label:
                summary.conflicting += 1
                continue
            try:
                data = store.read(view.filename)  # type: ignore[attr-defined]
            except UploadNotFoundError:
                summary.no_image += 1
                continue
            if view.filename not in labelled:
                write_bytes_atomic(images / view.filename, data)
                labels.append(
                    {
                        "path": f"images/{view.filename}",
                        "body_part": study.body_part.lower(),
                        "label": label,
                        "patient_id": study.id,
                        "study_id": study.id,
                    }
                )
                summary.images += 1
            labelled[view.filename] = label
    return labels, reviews, disagreements


def _write(
    path: Path, columns: tuple[str, ...], rows: list[dict[str, object]], *, escape: bool
) -> None:
    """A CSV; ``escape``: cells a spreadsheet shows as text (reader names, for people),
    not for labels.csv, which the training reads as written (our own names and numbers)."""
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: escape_cell(v) if escape else v for k, v in row.items()})


def export_reviews(settings: Settings, out: Path, *, by: str) -> ExportSummary:
    """Write ``labels.csv`` (+ ``images/``), ``reviews.csv`` and ``disagreements.csv``
    into ``out`` from the records ``settings`` name; audited as ``by``."""
    out.mkdir(parents=True, exist_ok=True)
    if (out / "labels.csv").exists():
        raise FileExistsError(f"{out} already holds an export; choose another folder")
    images = out / "images"
    images.mkdir(exist_ok=True)
    with opened(settings.database_url, settings.upload_dir) as database:
        records = RecordStore(database)
        summary = ExportSummary(out=out)
        labels, reviews, disagreements = _rows(
            records.reviewed_studies(), open_store(settings), images, summary
        )
        _write(out / "labels.csv", LABEL_COLUMNS, labels, escape=False)
        _write(out / "reviews.csv", REVIEW_COLUMNS, reviews, escape=True)
        _write(out / "disagreements.csv", REVIEW_COLUMNS, disagreements, escape=True)
        AuditLog(database).add(by, "export_reviews", None, "ok")
    return summary
