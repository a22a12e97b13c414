"""Index a MURA-v1.1 folder (or the peer project's layout) into one row per image.

Two layouts are understood:

* **MURA-v1.1**: ``ROOT/{train,valid}/XR_<PART>/patientN/studyN_<suffix>/imageN.png`` plus
  ``{train,valid}_image_paths.csv`` and ``{train,valid}_labeled_studies.csv`` (no header).
  The CSVs are MURA's ground truth, so they decide what is indexed and how it is labelled;
  the tree on disk is only cross-checked against them.
* **peer**: the same tree without CSVs, body-part folders named ``Elbow`` (any case, or
  ``XR_ELBOW``); the study folder suffix ``_positive`` / ``_negative`` is the label.

The layout is chosen by the presence of the CSVs. Nothing is dropped silently: every image
that is listed but missing, present but unlisted, unlabelled, hidden, ... is counted in the
:class:`IndexReport` with example paths, so a half-extracted download is noticed before a
day of training is spent on it. User mistakes (no such folder, unparseable CSV row, no
images for the requested body parts) raise :class:`~bonexr.errors.DataError`.

Indexing never opens an image: one ``os.walk`` per selected body-part folder plus
vectorised pandas keeps the ~40k images of real MURA to well under a second or two.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from bonexr.errors import ConfigError, DataError
from bonexr.labels import (
    DEFAULT_BODY_PARTS,
    LABEL_NAMES,
    STUDY_SUFFIX_TO_LABEL,
    normalize_body_part,
    normalize_body_parts,
)
from training.readers import ReadDataset, is_fracatlas, read_fracatlas, read_labels_csv

logger = logging.getLogger(__name__)
# Library convention: applications decide where warnings go; without this, Python's
# last-resort handler would echo every problem to stderr beside ``describe()``'s output.
logger.addHandler(logging.NullHandler())

#: MURA's two folders (its own train / valid partition), in this order.
SOURCES: tuple[str, ...] = ("train", "valid")

#: Image files that are indexed (compared case-insensitively).
IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg")

#: The synthetic generator's box file, at the dataset root (training.synthetic writes it).
DEFECT_BOXES_CSV = "defect_boxes.csv"

#: Columns of the index, in order.
INDEX_COLUMNS: tuple[str, ...] = (
    "path",
    "rel_path",
    "split_source",
    "body_part",
    "patient_id",
    "study_id",
    "study_label",
    "label",
)

LAYOUT_MURA = "mura"
LAYOUT_PEER = "peer"
LAYOUT_FRACATLAS = "fracatlas"
LAYOUT_LABELS_CSV = "labels-csv"
_LAYOUT_TITLES = {
    LAYOUT_MURA: "MURA-v1.1 (images and labels from the CSVs)",
    LAYOUT_PEER: "peer (no CSVs; labels from the study folder suffix)",
    LAYOUT_FRACATLAS: "FracAtlas (dataset.csv; no patient ids: each image its own patient)",
    LAYOUT_LABELS_CSV: "labels CSV (path,body_part,label[,patient_id,study_id][,box])",
}


#: Problems that mean the CSVs and the files disagree (``bonexr index --strict`` fails on
#: them), with the one-line message each is reported with.
ERROR_MESSAGES: dict[str, str] = {
    "missing_on_disk": "{n} image(s) listed in the *_image_paths.csv files are missing on disk "
    "and were dropped",
    "not_in_csv": "{n} image(s) on disk are not listed in the *_image_paths.csv files and were "
    "not indexed",
    "label_mismatch": "{n} stud(ies) have a folder suffix (_positive/_negative) that disagrees "
    "with *_labeled_studies.csv; the CSV label (MURA's ground truth) was used",
    "study_not_in_csv": "{n} image(s) belong to studies with no row in the *_labeled_studies.csv "
    "files and were dropped",
    "empty_study": "{n} stud(ies) in the *_labeled_studies.csv files have no indexed image",
    "no_label_suffix": "{n} image(s) are in study folders without a _positive/_negative suffix "
    "(so without a label) and were dropped",
}

#: Oddities that are skipped but do not make the dataset inconsistent.
WARNING_MESSAGES: dict[str, str] = {
    "duplicate_rows": "{n} duplicate CSV row(s) were ignored",
    "hidden": "{n} hidden file(s) or folder(s) (dotfiles such as ._image1.png) were skipped",
    "not_image": "{n} non-image file(s) were skipped (only .png/.jpg/.jpeg are indexed)",
    "misplaced": "{n} image(s) not at <split>/<part>/<patient>/<study>/<image> were skipped",
    "shared_patient": "{n} patient id(s) have images in both train/ and valid/ (a random split "
    "keeps each patient together; --mode official refuses them)",
    "several_parts": "{n} image(s) show several body parts (FracAtlas 'mixed') and were not "
    "indexed: the router learns one part per image",
    "box_outside": "{n} fracture box(es) lie outside their image and were left out",
    "no_patient_ids": "{n} image(s) have no patient id: each is its own patient, so the split is "
    "by image and two images of one patient may fall on both sides of it",
}

COUNT_KEYS: tuple[str, ...] = (*ERROR_MESSAGES, *WARNING_MESSAGES)

#: How many example paths are kept per problem.
MAX_EXAMPLES = 5

# A CSV path: an optional dataset-folder component (``MURA-v1.1/``, whatever the user's folder
# is called), then <source>/<part>/<patient>/<study>[/<image>].
_PREFIX = r"^(?:[^/]+/)?"
_STUDY_PATH = r"(?P<split_source>[^/]+)/(?P<part_dir>[^/]+)/(?P<patient_id>[^/]+)/(?P<study>[^/]+)"
_IMAGE_ROW = re.compile(_PREFIX + _STUDY_PATH + r"/(?P<file>[^/]+)$")
_STUDY_ROW = re.compile(_PREFIX + _STUDY_PATH + r"/?\s*,\s*(?P<label>[01])(?:\.0)?$")
_DISK_PATH = re.compile("^" + _STUDY_PATH + r"/(?P<file>[^/]+)$")
_SUFFIX = re.compile(r"_(positive|negative)$", flags=re.IGNORECASE)


@dataclass
class IndexReport:
    """What indexing found: the layout, per-split counts, and every problem with examples.

    ``counts`` always holds every key of :data:`COUNT_KEYS` (0 when clean) so callers and
    tests can compare it whole; ``examples`` holds up to :data:`MAX_EXAMPLES` relative paths
    for each non-zero count.
    """

    root: Path
    layout: str
    body_parts: tuple[str, ...]
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNT_KEYS, 0))
    examples: dict[str, list[str]] = field(default_factory=dict)
    n_images: int = 0
    n_studies: int = 0
    n_patients: int = 0
    #: Images per (split_source, body_part) x (normal, abnormal, total), with a total row.
    table: pd.DataFrame | None = None
    #: Body parts present in the dataset but not selected (so not indexed).
    other_parts: tuple[str, ...] = ()

    def add(self, key: str, paths: Iterable[str]) -> None:
        """Count ``paths`` under ``key`` and keep the first few (sorted) as examples."""
        paths = sorted(str(p) for p in paths)
        if not paths:
            return
        self.counts[key] = self.counts.get(key, 0) + len(paths)
        kept = self.examples.setdefault(key, [])
        kept.extend(paths[: MAX_EXAMPLES - len(kept)])

    def _messages(self, templates: dict[str, str]) -> list[str]:
        lines = []
        for key, template in templates.items():
            n = self.counts.get(key, 0)
            if n:
                example = self.examples.get(key, [""])[0]
                lines.append(template.format(n=n) + (f" (e.g. {example})" if example else ""))
        return lines

    @property
    def errors(self) -> list[str]:
        """One line per way the CSVs and the files disagree (``--strict`` fails on these)."""
        return self._messages(ERROR_MESSAGES)

    @property
    def warnings(self) -> list[str]:
        """One line per skipped oddity that does not make the dataset inconsistent."""
        return self._messages(WARNING_MESSAGES)

    def describe(self) -> str:
        """A multi-line summary for a terminal: layout, image table, then every problem."""
        parts = ", ".join(self.body_parts)
        if self.other_parts:
            parts += f" (also present, not selected: {', '.join(self.other_parts)})"
        lines = [
            f"dataset: {self.root}",
            f"layout: {_LAYOUT_TITLES.get(self.layout, self.layout)}",
            f"body parts: {parts}",
            f"indexed {self.n_images} images in {self.n_studies} studies "
            f"of {self.n_patients} patients",
        ]
        if self.table is not None:
            lines += ["", self.table.to_string(), ""]
        errors, warnings = self.errors, self.warnings
        if errors:
            lines.append("problems (--strict exits 1 on these):")
            lines += [f"  - {msg}" for msg in errors]
        if warnings:
            lines.append("warnings:")
            lines += [f"  - {msg}" for msg in warnings]
        if not errors and not warnings:
            lines.append("no problems found")
        return "\n".join(lines)


def index_dataset(
    root: str | Path, *, body_parts: Sequence[str] | str = DEFAULT_BODY_PARTS
) -> tuple[pd.DataFrame, IndexReport]:
    """Index the images of ``body_parts`` under ``root``; see the module docstring.

    Returns the index (columns :data:`INDEX_COLUMNS`, one row per image, sorted by
    ``rel_path``) and the :class:`IndexReport`. Raises :class:`ConfigError` for an unknown
    body part and :class:`DataError` for a missing, empty or unrecognisable folder, an
    unparseable CSV row, or when no image of the requested body parts is left.
    """
    parts = normalize_body_parts(body_parts)
    root = _check_root(root)
    layout = _detect_layout(root)
    report = IndexReport(root=root, layout=layout, body_parts=parts)
    if layout == LAYOUT_MURA:
        index, found = _index_mura(root, parts, report)
    elif layout == LAYOUT_PEER:
        index, found = _index_peer(root, parts, report)
    else:
        read = read_dataset(root)
        for key, paths in read.skipped.items():
            report.add(key, paths)
        index, found = read.rows[read.rows["body_part"].isin(parts)], read.parts_found
        root = data_folder(root)
    report.other_parts = tuple(sorted(set(found) - set(parts)))
    if index.empty:
        raise DataError(_no_images_message(root, parts, found, report))
    index = _finish_index(root, index)
    _check_shared_patients(index, report)
    _summarise(index, report)
    for message in report.errors + report.warnings:
        logger.warning("%s: %s", root, message)
    return index, report


# --------------------------------------------------------------------------- root and layout


def data_folder(root: str | Path) -> Path:
    """The folder image paths are relative to: ``root``, or a labels CSV's folder."""
    path = Path(root)
    return path.parent if path.is_file() else path


def dataset_layout(root: str | Path) -> str:
    """Which reader ``root`` is read with: mura, peer, fracatlas or labels-csv."""
    return _detect_layout(_check_root(root))


def read_dataset(root: Path) -> ReadDataset:
    """The FracAtlas or labels-CSV reader's findings (index rows, boxes, skipped rows)."""
    return read_labels_csv(root) if root.is_file() else read_fracatlas(root)


def read_boxes(root: str | Path) -> pd.DataFrame | None:
    """The defect boxes of a data set (``rel_path, defect, x0, y0, x1, y1``), if it has
    any: the synthetic generator's ``defect_boxes.csv`` or a real data set's fracture
    boxes (FracAtlas, a labels CSV with box columns); None for MURA (it has none)."""
    path = Path(root)
    if path.is_file() or is_fracatlas(path):
        boxes = read_dataset(path.resolve()).boxes
        return boxes if len(boxes) else None
    generated = path / DEFECT_BOXES_CSV
    return pd.read_csv(generated) if generated.is_file() else None


def _check_root(root: str | Path) -> Path:
    path = Path(root).expanduser()
    if not path.exists():
        raise DataError(f"dataset folder {path} does not exist")
    if path.is_file() and path.suffix.lower() == ".csv":
        return path.resolve()  # a labels CSV
    if not path.is_dir():
        raise DataError(f"dataset path {path} is not a folder")
    if not os.access(path, os.R_OK | os.X_OK):
        raise DataError(f"dataset folder {path} is not readable")
    return path.resolve()


def _csv_name(source: str, kind: str) -> str:
    return f"{source}_{kind}.csv"


def _mura_csvs(folder: Path) -> list[str]:
    names = [_csv_name(s, k) for s in SOURCES for k in ("image_paths", "labeled_studies")]
    return [name for name in names if (folder / name).is_file()]


def _source_dirs(root: Path, *, exact: bool) -> dict[str, Path]:
    """``{"train": ROOT/train, ...}``; the peer layout accepts any case (``Train``)."""
    found: dict[str, Path] = {}
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        key = entry.name if exact else entry.name.lower()
        if key in SOURCES and key not in found and entry.is_dir():
            found[key] = Path(entry.path)
    return found


def _part_dirs(source_dir: Path) -> dict[Path, str]:
    """Sub-folders of a split folder that name a body part, mapped to the part."""
    found: dict[Path, str] = {}
    for entry in sorted(os.scandir(source_dir), key=lambda e: e.name):
        if entry.name.startswith(".") or not entry.is_dir():
            continue
        try:
            found[Path(entry.path)] = normalize_body_part(entry.name)
        except ConfigError:
            continue
    return found


def _is_peer(folder: Path) -> bool:
    sources = _source_dirs(folder, exact=False)
    return any(_part_dirs(source_dir) for source_dir in sources.values())


def _detect_layout(root: Path) -> str:
    """MURA when any of its CSVs is present, peer when split folders hold body-part folders."""
    if root.is_file():
        return LAYOUT_LABELS_CSV
    if not any(not entry.name.startswith(".") for entry in os.scandir(root)):
        raise DataError(f"dataset folder {root} is empty")
    if is_fracatlas(root):
        return LAYOUT_FRACATLAS
    if _mura_csvs(root):
        return LAYOUT_MURA
    if _is_peer(root):
        return LAYOUT_PEER
    hint = ""
    nested = [
        e.name
        for e in os.scandir(root)
        if e.is_dir() and (_mura_csvs(Path(e.path)) or _is_peer(Path(e.path)))
    ]
    if nested:
        hint = f"; did you mean {root / sorted(nested)[0]}?"
    raise DataError(
        f"{root} is not a MURA dataset: it has neither MURA's CSVs (train_image_paths.csv, ...) "
        f"nor train/ or valid/ folders with body-part folders (XR_ELBOW, Elbow, ...){hint}"
    )


# --------------------------------------------------------------------------- walking the tree


def _walk_images(root: Path, folders: Iterable[Path], report: IndexReport) -> list[str]:
    """Relative posix paths of the image files under ``folders`` (one ``os.walk`` each).

    Hidden entries (dotfiles, macOS ``._`` forks, dot-folders) and non-image files are
    counted in the report and skipped.
    """
    images: list[str] = []
    hidden: list[str] = []
    others: list[str] = []
    skip = len(os.path.join(str(root), ""))
    for folder in folders:
        for dirpath, dirnames, filenames in os.walk(folder, onerror=_unreadable):
            rel_dir = dirpath[skip:].replace(os.sep, "/")
            for name in [d for d in dirnames if d.startswith(".")]:
                hidden.append(f"{rel_dir}/{name}/")
                dirnames.remove(name)
            dirnames.sort()
            for name in filenames:
                rel = f"{rel_dir}/{name}"
                if name.startswith("."):
                    hidden.append(rel)
                elif name.lower().endswith(IMAGE_EXTENSIONS):
                    images.append(rel)
                else:
                    others.append(rel)
    report.add("hidden", hidden)
    report.add("not_image", others)
    return images


def _unreadable(error: OSError) -> None:
    """os.walk skips unreadable folders by default; their images would vanish unnoticed."""
    raise DataError(f"cannot read {error.filename}: {error.strerror}") from error


def _selected_part_dirs(
    sources: dict[str, Path], parts: Sequence[str]
) -> tuple[dict[Path, str], set[str]]:
    """Body-part folders of the selected parts, and every part that has a folder."""
    selected: dict[Path, str] = {}
    found: set[str] = set()
    for source_dir in sources.values():
        for folder, part in _part_dirs(source_dir).items():
            found.add(part)
            if part in parts:
                selected[folder] = part
    return selected, found


def _suffix_labels(study_folders: pd.Series) -> pd.Series:
    """Label from a ``studyN_positive`` / ``studyN_negative`` folder name; NaN without suffix."""
    suffix = study_folders.str.extract(_SUFFIX, expand=False).str.lower()
    return suffix.map(STUDY_SUFFIX_TO_LABEL).astype("Float64")


# --------------------------------------------------------------------------- MURA layout


def _read_lines(path: Path) -> pd.DataFrame:
    """Non-blank lines of a text file with their 1-based line numbers (for error messages)."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc
    lines = pd.Series(text.splitlines(), dtype=object).astype(str)
    frame = pd.DataFrame(
        {
            "line": np.arange(1, len(lines) + 1),
            "text": lines.str.strip().str.replace("\\", "/", regex=False),
        }
    )
    return frame[frame["text"] != ""].reset_index(drop=True)


def _parse_rows(path: Path, source: str, pattern: re.Pattern, example: str) -> pd.DataFrame:
    """Parse a MURA CSV with ``pattern``; the first unparseable row raises DataError."""
    rows = _read_lines(path)
    parsed = rows["text"].str.extract(pattern)
    parsed["line"] = rows["line"]
    bad = parsed["split_source"].isna() | (parsed["split_source"] != source)
    if "file" in parsed:
        bad |= ~parsed["file"].str.lower().str.endswith(IMAGE_EXTENSIONS).fillna(False)
    if bad.any():
        first = int(bad.to_numpy().nonzero()[0][0])
        more = int(bad.sum()) - 1
        raise DataError(
            f"{path}, line {rows['line'].iloc[first]}: cannot parse {rows['text'].iloc[first]!r}; "
            f"expected a row like {example!r}" + (f" ({more} more bad rows)" if more else "")
        )
    parsed["body_part"] = _parse_parts(path, parsed)
    parsed["study_id"] = (
        parsed["split_source"]
        + "/"
        + parsed["part_dir"]
        + "/"
        + parsed["patient_id"]
        + "/"
        + parsed["study"]
    )
    return parsed


def normalize_part_column(path: Path, parts: pd.Series, lines: pd.Series) -> pd.Series:
    """Body parts read from a file, normalised (per distinct value: there are seven).

    An unknown part is a :class:`DataError` naming ``path`` and the line (from ``lines``,
    aligned with ``parts``) where it first appears.
    """
    mapping: dict[str, str] = {}
    for name in parts.unique():
        try:
            mapping[name] = normalize_body_part(name)
        except ConfigError as exc:
            line = lines[parts == name].iloc[0]
            raise DataError(f"{path}, line {line}: {exc}") from exc
    return parts.map(mapping)


def _parse_parts(path: Path, parsed: pd.DataFrame) -> pd.Series:
    return normalize_part_column(path, parsed["part_dir"], parsed["line"])


def _read_mura_csvs(root: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """All image rows and study rows of the CSVs present (a source may lack both CSVs)."""
    images, studies = [], []
    for source in SOURCES:
        image_csv = root / _csv_name(source, "image_paths")
        study_csv = root / _csv_name(source, "labeled_studies")
        if not image_csv.is_file() and not study_csv.is_file():
            continue
        for present, absent in ((image_csv, study_csv), (study_csv, image_csv)):
            if present.is_file() and not absent.is_file():
                raise DataError(f"{root} has {present.name} but not {absent.name}")
        img = _parse_rows(
            image_csv,
            source,
            _IMAGE_ROW,
            f"MURA-v1.1/{source}/XR_ELBOW/patient00011/study1_negative/image1.png",
        )
        img["rel_path"] = img["study_id"] + "/" + img["file"]
        images.append(img)
        std = _parse_rows(
            study_csv,
            source,
            _STUDY_ROW,
            f"MURA-v1.1/{source}/XR_ELBOW/patient00011/study1_negative/,0",
        )
        std["study_label"] = std["label"].astype(int)
        std["csv"] = study_csv.name
        studies.append(std)
    return pd.concat(images, ignore_index=True), pd.concat(studies, ignore_index=True)


def _dedupe_studies(studies: pd.DataFrame, report: IndexReport) -> pd.DataFrame:
    """Drop repeated study rows (counted); a study given both labels is a DataError."""
    repeated = studies.duplicated(["study_id", "study_label"])
    report.add("duplicate_rows", studies.loc[repeated, "study_id"] + "/")
    studies = studies[~repeated]
    conflict = studies.duplicated("study_id", keep=False)
    if conflict.any():
        row = studies[conflict].iloc[0]
        raise DataError(
            f"{row['csv']} gives study {row['study_id']}/ both labels 0 and 1 "
            f"(line {row['line']} and another); fix the CSV"
        )
    return studies


def _index_mura(
    root: Path, parts: tuple[str, ...], report: IndexReport
) -> tuple[pd.DataFrame, set[str]]:
    """Images listed in the CSVs, cross-checked against the tree; labels from the CSVs."""
    images, studies = _read_mura_csvs(root)
    part_dirs, found_on_disk = _selected_part_dirs(_source_dirs(root, exact=True), parts)
    found = set(images["body_part"]) | set(studies["body_part"]) | found_on_disk
    images = images[images["body_part"].isin(parts)]
    studies = studies[studies["body_part"].isin(parts)]

    repeated = images.duplicated("rel_path")
    report.add("duplicate_rows", images.loc[repeated, "rel_path"])
    images = images[~repeated]
    studies = _dedupe_studies(studies, report)

    on_disk = pd.Series(_walk_images(root, part_dirs, report), dtype=object).astype(str)
    listed = images["rel_path"].isin(on_disk)
    report.add("missing_on_disk", images.loc[~listed, "rel_path"])
    report.add("not_in_csv", on_disk[~on_disk.isin(images["rel_path"])])
    images = images[listed]

    merged = images.merge(studies[["study_id", "study_label"]], on="study_id", how="left")
    unlabeled = merged["study_label"].isna()
    report.add("study_not_in_csv", merged.loc[unlabeled, "rel_path"])
    merged = merged[~unlabeled]

    suffix = _suffix_labels(studies["study"])
    mismatch = suffix.notna() & (suffix != studies["study_label"])
    report.add("label_mismatch", studies.loc[mismatch.fillna(False), "study_id"] + "/")
    empty = ~studies["study_id"].isin(merged["study_id"])
    report.add("empty_study", studies.loc[empty, "study_id"] + "/")
    return merged, found


# --------------------------------------------------------------------------- peer layout


def _index_peer(
    root: Path, parts: tuple[str, ...], report: IndexReport
) -> tuple[pd.DataFrame, set[str]]:
    """Images found on disk; the study folder suffix is the label."""
    part_dirs, found = _selected_part_dirs(_source_dirs(root, exact=False), parts)
    rel_paths = pd.Series(_walk_images(root, part_dirs, report), dtype=object).astype(str)
    parsed = rel_paths.str.extract(_DISK_PATH)
    parsed["rel_path"] = rel_paths
    placed = parsed["split_source"].notna()
    report.add("misplaced", rel_paths[~placed])
    parsed = parsed[placed].copy()

    dir_to_part = {folder.relative_to(root).as_posix(): part for folder, part in part_dirs.items()}
    parsed["body_part"] = (parsed["split_source"] + "/" + parsed["part_dir"]).map(dir_to_part)
    parsed["split_source"] = parsed["split_source"].str.lower()
    parsed["study_id"] = parsed["rel_path"].str.rsplit("/", n=1).str[0]
    parsed["study_label"] = _suffix_labels(parsed["study"])
    unlabeled = parsed["study_label"].isna()
    report.add("no_label_suffix", parsed.loc[unlabeled, "rel_path"])
    return parsed[~unlabeled], found


# --------------------------------------------------------------------------- finishing


def _finish_index(root: Path, index: pd.DataFrame) -> pd.DataFrame:
    """Select and order the public columns; absolute paths; sorted by ``rel_path``."""
    out = index.sort_values("rel_path", kind="stable").reset_index(drop=True)
    out["path"] = str(root) + os.sep + out["rel_path"].str.replace("/", os.sep, regex=False)
    out["study_label"] = out["study_label"].astype("int64")
    out["label"] = out["study_label"]
    return out[list(INDEX_COLUMNS)]


def _check_shared_patients(index: pd.DataFrame, report: IndexReport) -> None:
    """MURA's patients are disjoint between train/ and valid/; say so if this dataset's are not."""
    sources = index.groupby("patient_id")["split_source"].nunique()
    report.add("shared_patient", sources.index[sources > 1])


def _summarise(index: pd.DataFrame, report: IndexReport) -> None:
    report.n_images = len(index)
    report.n_studies = int(index["study_id"].nunique())
    report.n_patients = int(index["patient_id"].nunique())
    report.table = image_table(index)


def image_table(index: pd.DataFrame) -> pd.DataFrame:
    """Images per (split_source, body_part) row and normal / abnormal / total column."""
    labels = index["label"].map(LABEL_NAMES).rename("label")
    table = pd.crosstab(
        [index["split_source"], index["body_part"]], labels, margins=True, margins_name="total"
    )
    table = table.reindex(columns=["normal", "abnormal", "total"], fill_value=0)
    table.columns.name = None
    return table


def _no_images_message(
    root: Path, parts: tuple[str, ...], found: set[str], report: IndexReport
) -> str:
    requested = ", ".join(parts)
    have = ", ".join(sorted(found)) if found else "none"
    message = f"no images for body part(s) {requested} in {root}; body parts found: {have}"
    problems = report.errors + report.warnings
    if problems:
        message += f"; {problems[0]}"
    return message
