"""``bonexr predict``: score files, folders or a MURA-format tree without a server.

Same code as the service, in process: :class:`service.adapters.engine.InferenceEngine` (the bundle
verified and its contract checked at load), the same decoding limits (``BONEXR_MAX_PIXELS``,
``BONEXR_MAX_DECODED_MB``, ``BONEXR_MAX_UPLOAD_BYTES`` per file) and the same answer rules
(:class:`service.triage.predictor.AnswerRules`: refusals, warnings, the study rule). So a row of
``images.csv`` is what ``/predict`` answers for that file (a refusal's message in
``warnings``), and a row of ``studies.csv`` what ``/predict/study`` answers for the folder.

Only regular files are read (a FIFO or a link to a device is an ``errors.csv`` row, never a
hang), and every cell that a spreadsheet would run as a formula is escaped.

Outputs, in ``--out``:

* ``images.csv``: one row per scored image (path, body part, router probabilities,
  calibrated P(abnormal), threshold and the operating point it belongs to, result, the
  refusal code where there is no verdict (``not_eligible:content``,
  ``unsupported_body_part``), the content score, warnings);
* ``studies.csv`` where files group into studies (a MURA tree, or ``--study-by parent``);
* ``errors.csv``: files that could not be read, with the reason (never fatal).

Resumable: rows are written atomically after every chunk, and ``--resume`` skips files
already in ``images.csv`` or ``errors.csv``; studies are recomputed at the end.
"""

from __future__ import annotations

import csv
import io
import os
import stat
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from tqdm import tqdm

from bonexr.atomic import write_bytes_atomic
from bonexr.errors import BundleError, ConfigError, DataError, ImageError, ImageTooLargeError
from bonexr.imaging import prepare_pixels, sniff_format
from bonexr.study import route_study
from service.adapters.engine import InferenceEngine
from service.domain.answers import Prediction
from service.domain.errors import (
    InvalidStudyError,
    NoPartModelError,
    NotEligibleError,
    TriageError,
    UnknownOperatingPointError,
)
from service.domain.intake import read_image
from service.domain.rules import AnswerRules
from service.doors.csv_cells import escape_cell, unescape_cell
from service.settings import Settings

StudyBy = Literal["auto", "parent", "none"]
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".dcm", ".dicom", ""}
IMAGE_COLUMNS = (
    "path",
    "body_part",
    "router_confidence",
    "abnormality_probability",
    "threshold",
    "operating_point",
    "result",
    "refusal",
    "content_score",
    "warnings",
    "bone_type",  # deprecated: body_part's old name, written until 0.8.0
)
STUDY_COLUMNS = (
    "study",
    "views",
    "body_part",
    "abnormality_probability",
    "threshold",
    "operating_point",
    "result",
    "refusal",
    "warnings",
    "bone_type",  # deprecated: body_part's old name, written until 0.8.0
)
ERROR_COLUMNS = ("path", "reason")


@dataclass(frozen=True)
class BatchSummary:
    images: int  # rows in images.csv: answered or refused
    studies: int
    errors: int
    skipped: int  # already done in a resumed run
    out: Path
    refused: int = 0  # images.csv rows with a refusal (no verdict)
    refused_studies: int = 0

    @property
    def answered(self) -> int:
        return self.images - self.refused

    def describe(self) -> str:
        """One line that does not hide refusals ("8 images scored" said nothing of the 7
        refused)."""
        line = (
            f"{self.images} images: {self.answered} answered, {self.refused} refused "
            f"(see the refusal column), {self.errors} unreadable"
        )
        if self.skipped:
            line += f" ({self.skipped} from an earlier run)"
        if self.studies:
            line += (
                f"; {self.studies} studies: {self.studies - self.refused_studies} answered, "
                f"{self.refused_studies} refused"
            )
        return f"{line}; results in {self.out}"


# ----------------------------------------------------------------------------- inputs


def is_mura_root(folder: Path) -> bool:
    """A MURA-v1.1-format tree: ``train/`` or ``valid/`` holding ``XR_*`` folders, or one
    such split itself (``bonexr predict MURA-v1.1/valid``, as the docs show it, found no
    study before)."""
    if any(folder.glob("XR_*/patient*")):
        return True
    return any(
        (folder / split).is_dir() and any((folder / split).glob("XR_*"))
        for split in ("train", "valid")
    )


def collect_inputs(inputs: Sequence[Path]) -> list[Path]:
    """Every image file named or under the named folders (sorted, hidden files skipped).

    A named file that is not an image, a missing path or no image at all is a
    :class:`DataError` (one ``error:`` line); in folders, only image-like names are taken.
    What each file really is (regular, within the size limit) is checked when it is read.
    """
    found: list[Path] = []
    for item in inputs:
        if item.is_dir():
            found.extend(_walk(item))
        elif item.exists():
            if not stat.S_ISREG(item.stat().st_mode):
                raise DataError(f"{_shown(item)} is not a regular file")
            with item.open("rb") as handle:
                if sniff_format(handle.read(4096)) is None:
                    raise DataError(f"{_shown(item)} is not a PNG, JPEG, WebP or DICOM file")
            found.append(item)
        else:
            raise DataError(f"{_shown(item)} does not exist")
    if not found:
        raise DataError(
            f"no images found in {', '.join(_shown(i) for i in inputs)} "
            "(looked for .png, .jpg, .jpeg, .webp, .dcm and extension-less DICOM files)"
        )
    return sorted(dict.fromkeys(found))


def _walk(folder: Path) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if not name.startswith(".") and path.suffix.lower() in IMAGE_SUFFIXES:
                yield path


def _shown(path: Path) -> str:
    """A path as text that can always be printed and written to a UTF-8 CSV: bytes of a
    non-UTF-8 file name are shown as ``\\xNN`` escapes."""
    return os.fsencode(path).decode("utf-8", errors="backslashreplace")


def _key(path: Path) -> str:
    """What identifies a file across runs: its resolved path (so ``--resume`` with a
    relative and then an absolute spelling matches)."""
    return _shown(path.resolve())


def read_regular_file(path: Path, limit: int) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes (``ImageError`` otherwise):
    a FIFO, a device behind a link or an oversized file is refused before it is read."""
    # O_NONBLOCK: opening a FIFO without a writer returns at once instead of hanging
    with open(os.open(path, os.O_RDONLY | os.O_NONBLOCK), "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise ImageError("not a regular file (a pipe, device or socket): not read")
        if info.st_size > limit:
            raise ImageTooLargeError(
                f"file is larger than the limit of {limit:,} bytes (BONEXR_MAX_UPLOAD_BYTES)"
            )
        data: bytes = handle.read(limit + 1)
    if len(data) > limit:
        raise ImageTooLargeError(f"file grew past the limit of {limit:,} bytes while read")
    return data


# ------------------------------------------------------------------------------- CSVs


def _read_rows(path: Path) -> list[dict[str, object]]:
    if not path.is_file():
        return []
    with path.open(newline="") as handle:
        return [
            {k: unescape_cell(v or "") for k, v in row.items()} for row in csv.DictReader(handle)
        ]


def _write_rows(path: Path, columns: Sequence[str], rows: Iterable[dict[str, object]]) -> None:
    """The whole table, written atomically: a crash leaves the previous complete file."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction="ignore")
    writer.writeheader()
    writer.writerows({k: escape_cell(v) for k, v in row.items()} for row in rows)
    write_bytes_atomic(path, buffer.getvalue().encode())


# ---------------------------------------------------------------------------- scoring


@dataclass(frozen=True)
class ScoredFile:
    path: Path
    prediction: Prediction
    body_part: str | None  # the DICOM header's BodyPartExamined, as the upload records it
    warnings: tuple[str, ...] = ()  # the eligibility gate's, under BONEXR_ELIGIBILITY=warn


def _fmt(value: float) -> str:
    return f"{value:.6f}"


class OfflineScorer:
    """Decode, prepare and score files with a loaded engine and the service's rules."""

    def __init__(self, settings: Settings, operating_point: str | None = None) -> None:
        self.settings = settings
        self.engine = InferenceEngine(settings)
        self.engine.load()
        assert self.engine.manifest is not None
        self.manifest = self.engine.manifest
        self.rules = AnswerRules(self.engine, settings)
        try:
            self.point = self.rules.operating_point(operating_point)
        except TriageError as exc:
            raise ConfigError(f"--operating-point: {exc.detail}") from None
        self.classes = list(self.manifest.router.classes)

    def _prepare(self, path: Path) -> tuple[np.ndarray, str | None, tuple[str, ...]]:
        """Prepared pixels, body part and gate warnings, read through the one intake
        (:func:`~service.domain.intake.read_image`: the service's limits and eligibility
        gate) as an upload is. ImageError/OSError, or the gate's refusal as the
        :class:`NotEligibleError` the upload answers with."""
        data = read_regular_file(path, self.settings.max_upload_bytes)
        intake = read_image(data, self.settings, self.classes, provenance="file")
        if intake.screen.refusal is not None:
            raise AnswerRules.refusal_error([intake.screen.refusal], 1)
        pixels = prepare_pixels(intake.decoded.image, self.manifest.input.size)
        return pixels, intake.decoded.body_part, intake.screen.warnings

    def score(
        self, paths: Sequence[Path], parts: Sequence[str | None] | None = None
    ) -> tuple[list[ScoredFile], list[tuple[Path, str]]]:
        """Predictions for the readable ``paths`` and ``(path, reason)`` for the others."""
        ready: list[tuple[Path, np.ndarray, str | None, str | None]] = []
        gates: list[tuple[str, ...]] = []
        errors: list[tuple[Path, str]] = []
        for index, path in enumerate(paths):
            try:
                pixels, body_part, gate = self._prepare(path)
            except NotEligibleError as refusal:
                errors.append((path, refusal.detail))
                continue
            except ImageError as exc:
                errors.append((path, str(exc)))
                continue
            except OSError as exc:
                errors.append((path, f"cannot read the file ({exc.strerror or 'I/O error'})"))
                continue
            ready.append((path, pixels, body_part, parts[index] if parts else None))
            gates.append(gate)
        if not ready:
            return [], errors
        predictions = self.engine.predict_batch(
            np.stack([pixels for _, pixels, _, _ in ready]), [part for *_, part in ready]
        )
        scored = [
            ScoredFile(path, p, body_part, gate)
            for (path, _, body_part, _), p, gate in zip(ready, predictions, gates, strict=True)
        ]
        return scored, errors

    def image_row(self, scored: ScoredFile) -> dict[str, object]:
        """``/predict``'s answer for the file as a row (a refusal's message in warnings)."""
        prediction, name = scored.prediction, _shown(scored.path)
        row: dict[str, object] = {
            "path": name,
            "body_part": prediction.bone_type,
            "bone_type": prediction.bone_type,
            "router_confidence": _fmt(prediction.router_confidence),
            **{f"p_{c}": _fmt(prediction.bone_type_probabilities[c]) for c in self.classes},
        }
        if prediction.content_score is not None:
            row["content_score"] = _fmt(prediction.content_score)
        try:
            answer = self.rules.image(name, prediction, scored.body_part, self.point)
        except TriageError as refusal:
            return row | {"refusal": refusal_code(refusal), "warnings": refusal.detail}
        decided = answer.prediction
        return row | {
            "abnormality_probability": _fmt(decided.abnormality_probability),
            "threshold": _fmt(decided.threshold),
            "operating_point": decided.operating_point,
            "result": decided.result,
            "warnings": "; ".join([*scored.warnings, *answer.warnings]),
        }

    def study_row(self, study: str, paths: Sequence[Path]) -> dict[str, object]:
        """``/predict/study``'s answer for the files of one study (refusals in warnings)."""
        row: dict[str, object] = {"study": study, "views": len(paths)}
        first, errors = self.score(paths)
        if errors or not first:
            return row | {"warnings": "a view could not be read again"}
        names = [s.path.name for s in first]
        predictions = [s.prediction for s in first]
        try:
            plan = self.rules.plan_study(names, predictions, None, set_aside_refused=False)
        except TriageError as refusal:
            routed = route_study([p.bone_type_probabilities for p in predictions])
            return row | {
                "body_part": routed,
                "bone_type": routed,
                "refusal": refusal_code(refusal),
                "warnings": refusal.detail,
            }
        if plan.rescore:
            again = [paths[i] for i in plan.rescore]
            rescored, errors = self.score(again, [plan.part] * len(again))
            if errors:
                return row | {
                    "body_part": plan.part,
                    "bone_type": plan.part,
                    "warnings": "a view could not be read again",
                }
            for index, scored in zip(plan.rescore, rescored, strict=True):
                predictions[index] = scored.prediction
        answer = self.rules.study_answer(
            plan.names,
            predictions,
            [s.body_part for s in first],
            part=plan.part,
            forced=None,
            point=self.point,
            content_warnings=plan.content_warnings,
        )
        return row | {
            "body_part": answer.bone_type,
            "bone_type": answer.bone_type,
            "abnormality_probability": _fmt(answer.abnormality_probability),
            "threshold": _fmt(answer.threshold),
            "operating_point": answer.operating_point,
            "result": answer.result,
            "warnings": "; ".join(answer.warnings),
        }


def refusal_code(refusal: TriageError) -> str:
    """The refusal's code as the API's 422 body gives it (``not_eligible:content`` ...)."""
    if isinstance(refusal, NotEligibleError):
        return f"{refusal.code}:{refusal.reason}"
    return refusal.code


#: What each error becomes in ``bonexr predict``, for the docs: a row (the run goes on),
#: or the run stops with ``error:`` and exit 2 (a user mistake) before any file is read.
BATCH_OUTCOME: dict[type[Exception], str] = {
    ImageError: "errors.csv row with the reason; the run goes on",
    NotEligibleError: "header gate: errors.csv row; content gate: images.csv `refusal` "
    "`not_eligible:content` (studies.csv for a study)",
    NoPartModelError: "images.csv / studies.csv `refusal` `unsupported_body_part`",
    InvalidStudyError: "studies.csv `refusal` `invalid_study`",
    UnknownOperatingPointError: "exit 2 before any file is read (`--operating-point`)",
    BundleError: "exit 2: the bundle is refused at load",
}


def predict_files(
    inputs: Sequence[Path],
    out: Path,
    settings: Settings,
    *,
    operating_point: str | None = None,
    study_by: StudyBy = "auto",
    resume: bool = False,
    chunk_size: int = 64,
    progress: bool = True,
) -> BatchSummary:
    """Score ``inputs`` into ``out``/images.csv (+ studies.csv, errors.csv)."""
    if chunk_size < 1:
        raise ConfigError("--chunk-size must be at least 1")
    files = collect_inputs(inputs)
    if study_by == "auto":
        study_by = "parent" if any(i.is_dir() and is_mura_root(i) for i in inputs) else "none"
    out.mkdir(parents=True, exist_ok=True)
    images_csv, errors_csv = out / "images.csv", out / "errors.csv"
    if not resume and (images_csv.exists() or errors_csv.exists()):
        raise ConfigError(f"{out} already holds results; pass --resume to continue them")
    scorer = OfflineScorer(settings, operating_point)
    image_rows = _read_rows(images_csv)
    error_rows = _read_rows(errors_csv)
    done = {_key(Path(str(r["path"]))) for r in (*image_rows, *error_rows)}
    todo = [f for f in dict.fromkeys(files) if _key(f) not in done]
    # one spelling per file, even when the inputs named it twice
    todo = list({_key(f): f for f in reversed(todo)}.values())[::-1]
    columns = [*IMAGE_COLUMNS, *(f"p_{c}" for c in scorer.classes)]
    with tqdm(
        total=len(files), initial=len(files) - len(todo), unit="img", disable=not progress
    ) as bar:
        for start in range(0, len(todo), chunk_size):
            chunk = todo[start : start + chunk_size]
            scored, errors = scorer.score(chunk)
            image_rows += [scorer.image_row(s) for s in scored]
            error_rows += [{"path": _shown(path), "reason": reason} for path, reason in errors]
            _write_rows(images_csv, columns, image_rows)
            _write_rows(errors_csv, ERROR_COLUMNS, error_rows)
            bar.update(len(chunk))
    study_rows: list[dict[str, object]] = []
    if study_by == "parent":
        study_rows = _score_studies(scorer, image_rows, progress=progress)
        _write_rows(out / "studies.csv", STUDY_COLUMNS, study_rows)
    return BatchSummary(
        images=len(image_rows),
        studies=len(study_rows),
        errors=len(error_rows),
        skipped=len(files) - len(todo),
        out=out,
        refused=sum(1 for r in image_rows if not r.get("result")),
        refused_studies=sum(1 for r in study_rows if not r.get("result")),
    )


def _score_studies(
    scorer: OfflineScorer, image_rows: list[dict[str, object]], *, progress: bool
) -> list[dict[str, object]]:
    """One row per parent folder, answered as ``/predict/study`` answers it."""
    groups: dict[str, list[Path]] = {}
    for image in image_rows:
        path = Path(str(image["path"]))
        groups.setdefault(str(path.parent), []).append(path)
    return [
        scorer.study_row(study, paths)
        for study, paths in tqdm(groups.items(), unit="study", disable=not progress)
    ]
