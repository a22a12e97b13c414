"""``bonexr predict``: score files, folders or a MURA-format tree without a server.

Same code as the service, in process: :class:`service.engine.InferenceEngine` (the bundle
verified and its contract checked at load, ONNX Runtime), the same decoding limits
(``BONEXR_MAX_PIXELS``, ``BONEXR_MAX_DECODED_MB``), the image operating point per view and
:mod:`bonexr.study`'s rule per study. So a row of ``images.csv`` is what ``/predict``
answers for that file, and a row of ``studies.csv`` what ``/predict/study`` answers.

Outputs, in ``--out``:

* ``images.csv``: one row per scored image (path, body part, router probabilities,
  P(abnormal), threshold, result, warnings);
* ``studies.csv`` where files group into studies (a MURA tree, or ``--study-by parent``);
* ``errors.csv``: files that could not be read, with the reason (never fatal).

Resumable: rows are written atomically after every chunk, and ``--resume`` skips files
already in ``images.csv`` or ``errors.csv``; studies are recomputed at the end.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from tqdm import tqdm

from bonexr.atomic import write_bytes_atomic
from bonexr.errors import ConfigError, DataError, ImageError
from bonexr.imaging import prepare_pixels, sniff_format
from bonexr.labels import result_name
from bonexr.study import route_study, study_probability
from service.deps import decode_within_limits
from service.engine import InferenceEngine, Prediction
from service.settings import Settings

StudyBy = Literal["auto", "parent", "none"]
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".dcm", ".dicom", ""}
IMAGE_COLUMNS = (
    "path",
    "bone_type",
    "router_confidence",
    "abnormality_probability",
    "threshold",
    "result",
    "warnings",
)
STUDY_COLUMNS = (
    "study",
    "views",
    "bone_type",
    "abnormality_probability",
    "threshold",
    "result",
    "warnings",
)
ERROR_COLUMNS = ("path", "reason")


@dataclass(frozen=True)
class BatchSummary:
    images: int
    studies: int
    errors: int
    skipped: int  # already done in a resumed run
    out: Path

    def describe(self) -> str:
        return (
            f"{self.images} images scored ({self.skipped} from an earlier run), "
            f"{self.studies} studies, {self.errors} unreadable; results in {self.out}"
        )


# ----------------------------------------------------------------------------- inputs


def is_mura_root(folder: Path) -> bool:
    """A MURA-v1.1-format tree: ``train/`` or ``valid/`` holding ``XR_*`` folders."""
    return any(
        (folder / split).is_dir() and any((folder / split).glob("XR_*"))
        for split in ("train", "valid")
    )


def collect_inputs(inputs: Sequence[Path]) -> list[Path]:
    """Every image file named or under the named folders (sorted, hidden files skipped).

    A named file that is not an image, a missing path or no image at all is a
    :class:`DataError` (one ``error:`` line); in folders, only image-like names are taken.
    """
    found: list[Path] = []
    for item in inputs:
        if item.is_file():
            if sniff_format(item.read_bytes()[:4096]) is None:
                raise DataError(f"{item} is not a PNG, JPEG, WebP or DICOM file")
            found.append(item)
        elif item.is_dir():
            found.extend(_walk(item))
        else:
            raise DataError(f"{item} does not exist")
    if not found:
        raise DataError(
            f"no images found in {', '.join(str(i) for i in inputs)} "
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


# ------------------------------------------------------------------------------- CSVs


def _read_rows(path: Path) -> list[dict[str, object]]:
    if not path.is_file():
        return []
    with path.open(newline="") as handle:
        return [dict(row) for row in csv.DictReader(handle)]


def _write_rows(path: Path, columns: Sequence[str], rows: Iterable[dict[str, object]]) -> None:
    """The whole table, written atomically: a crash leaves the previous complete file."""
    from io import StringIO

    buffer = StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    write_bytes_atomic(path, buffer.getvalue().encode())


# ---------------------------------------------------------------------------- scoring


def _image_row(path: Path, prediction: Prediction, classes: Sequence[str]) -> dict[str, object]:
    warnings = []
    if not prediction.has_verdict:
        warnings.append(f"no abnormality model for {prediction.bone_type} in this bundle")
    row: dict[str, object] = {
        "path": str(path),
        "bone_type": prediction.bone_type,
        "router_confidence": f"{prediction.router_confidence:.6f}",
        "abnormality_probability": (
            f"{prediction.abnormality_probability:.6f}" if prediction.has_verdict else ""
        ),
        "threshold": f"{prediction.threshold:.6f}" if prediction.has_verdict else "",
        "result": prediction.result if prediction.has_verdict else "",
        "warnings": "; ".join(warnings),
    }
    for part in classes:
        row[f"p_{part}"] = f"{prediction.bone_type_probabilities[part]:.6f}"
    return row


class BatchPredictor:
    """Decode, prepare and score files with a loaded engine, chunk by chunk."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.engine = InferenceEngine(settings)
        self.engine.load()
        assert self.engine.manifest is not None
        self.manifest = self.engine.manifest
        self.classes = list(self.manifest.router.classes)

    def pixels(self, path: Path) -> np.ndarray:
        """Prepared pixels, under the service's decoding limits (ImageError/OSError)."""
        decoded = decode_within_limits(path.read_bytes(), self.settings)
        return prepare_pixels(decoded.image, self.manifest.input.size)

    def score(
        self, paths: Sequence[Path], parts: Sequence[str | None] | None = None
    ) -> tuple[list[tuple[Path, Prediction]], list[tuple[Path, str]]]:
        """Predictions for the readable ``paths`` and ``(path, reason)`` for the others."""
        ready: list[tuple[Path, np.ndarray, str | None]] = []
        errors: list[tuple[Path, str]] = []
        for index, path in enumerate(paths):
            try:
                ready.append((path, self.pixels(path), parts[index] if parts else None))
            except ImageError as exc:
                errors.append((path, str(exc)))
            except OSError as exc:
                errors.append((path, f"cannot read the file ({exc.strerror or 'I/O error'})"))
        if not ready:
            return [], errors
        predictions = self.engine.predict_batch(
            np.stack([pixels for _, pixels, _ in ready]), [part for _, _, part in ready]
        )
        return [(path, p) for (path, _, _), p in zip(ready, predictions, strict=True)], errors


def predict_files(
    inputs: Sequence[Path],
    out: Path,
    settings: Settings,
    *,
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
    predictor = BatchPredictor(settings)
    image_rows = _read_rows(images_csv)
    error_rows = _read_rows(errors_csv)
    done = {str(r["path"]) for r in image_rows} | {str(r["path"]) for r in error_rows}
    todo = [f for f in files if str(f) not in done]
    columns = [*IMAGE_COLUMNS, *(f"p_{c}" for c in predictor.classes)]
    with tqdm(
        total=len(files), initial=len(files) - len(todo), unit="img", disable=not progress
    ) as bar:
        for start in range(0, len(todo), chunk_size):
            chunk = todo[start : start + chunk_size]
            scored, errors = predictor.score(chunk)
            image_rows += [_image_row(path, p, predictor.classes) for path, p in scored]
            error_rows += [{"path": str(path), "reason": reason} for path, reason in errors]
            _write_rows(images_csv, columns, image_rows)
            _write_rows(errors_csv, ERROR_COLUMNS, error_rows)
            bar.update(len(chunk))
    studies = 0
    if study_by == "parent":
        study_rows = _score_studies(predictor, image_rows, progress=progress)
        _write_rows(out / "studies.csv", STUDY_COLUMNS, study_rows)
        studies = len(study_rows)
    return BatchSummary(
        images=len(image_rows),
        studies=studies,
        errors=len(error_rows),
        skipped=len(files) - len(todo),
        out=out,
    )


def _score_studies(
    predictor: BatchPredictor, image_rows: list[dict[str, object]], *, progress: bool
) -> list[dict[str, object]]:
    """One row per parent folder, by :mod:`bonexr.study`'s rule and ``/predict/study``'s
    checks (confidently mixed parts or a part without a model: no verdict, a warning)."""
    groups: dict[str, list[dict[str, object]]] = {}
    for image in image_rows:
        groups.setdefault(str(Path(str(image["path"])).parent), []).append(image)
    floor = predictor.settings.router_confidence_floor
    rows: list[dict[str, object]] = []
    for study, views in tqdm(groups.items(), unit="study", disable=not progress):
        probs = [{c: float(str(v[f"p_{c}"])) for c in predictor.classes} for v in views]
        part = route_study(probs)
        row: dict[str, object] = {"study": study, "views": len(views), "bone_type": part}
        mixed = [
            f"{Path(str(v['path'])).name} -> {v['bone_type']}"
            for v, p in zip(views, probs, strict=True)
            if v["bone_type"] != part and p[str(v["bone_type"])] >= floor
        ]
        if mixed:
            rows.append(row | {"warnings": f"views route to different body parts: {mixed}"})
            continue
        if part not in predictor.manifest.parts:
            rows.append(row | {"warnings": f"no abnormality model for {part} in this bundle"})
            continue
        scored, errors = predictor.score([Path(str(v["path"])) for v in views], [part] * len(views))
        if errors or not scored:
            rows.append(row | {"warnings": "a view could not be read again"})
            continue
        probability = study_probability([p.abnormality_probability for _, p in scored])
        threshold = float(predictor.manifest.parts[part].threshold)
        rows.append(
            row
            | {
                "abnormality_probability": f"{probability:.6f}",
                "threshold": f"{threshold:.6f}",
                "result": result_name(probability >= threshold),
                "warnings": "",
            }
        )
    return rows
