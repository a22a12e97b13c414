"""Build tiny MURA-v1.1 (or peer-layout) trees on disk for tests.

A test describes studies with :class:`StudySpec`, writes them with :func:`write_mura_tree`
(images plus MURA's four header-less CSVs) or :func:`write_peer_tree` (no CSVs), then adds
any defect it wants to exercise by hand (:func:`write_png`, :func:`append_csv_rows`), so
each test reads as "a clean dataset, plus exactly these problems".

:func:`synthetic_index` skips the disk entirely: an index DataFrame (the columns
``training.dataset.index_dataset`` returns) for tests of what happens after indexing.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from bonexr.labels import display_name

SUFFIX = {0: "negative", 1: "positive"}


@dataclass(frozen=True)
class StudySpec:
    """One study: where it lives, its label, and how its files and CSV rows are written."""

    part: str = "ELBOW"
    patient: int = 1
    study: int = 1
    label: int = 0
    n_images: int = 1
    source: str = "train"
    #: Label written in the folder suffix, when it should disagree with the CSV label.
    folder_label: int | None = None
    #: PIL mode of the images ("L", "RGB", ...); one entry per image or one for all.
    modes: Sequence[str] = ("L",)
    #: Whether the study gets a row in ``<source>_labeled_studies.csv``.
    in_study_csv: bool = True

    @property
    def patient_id(self) -> str:
        return f"patient{self.patient:05d}"

    @property
    def study_folder(self) -> str:
        suffix = SUFFIX[self.label if self.folder_label is None else self.folder_label]
        return f"study{self.study}_{suffix}"

    def folder(self, *, peer: bool = False) -> str:
        """Path relative to the dataset root, MURA (``XR_ELBOW``) or peer (``Elbow``) style."""
        part = display_name(self.part) if peer else f"XR_{self.part}"
        return f"{self.source}/{part}/{self.patient_id}/{self.study_folder}"

    def image_names(self) -> list[str]:
        return [f"image{i}.png" for i in range(1, self.n_images + 1)]

    def mode(self, i: int) -> str:
        return self.modes[i] if i < len(self.modes) else self.modes[-1]


@dataclass
class MuraTree:
    """What was written: relative image paths per CSV-listed study, and the root."""

    root: Path
    images: list[str] = field(default_factory=list)
    studies: list[str] = field(default_factory=list)


def write_png(path: Path, *, mode: str = "L", size: int = 16, value: int = 0) -> Path:
    """Write a small gradient PNG (content varies with ``value`` so files differ)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ramp = (np.add.outer(np.arange(size), np.arange(size)) * 4 + value) % 256
    image = Image.fromarray(ramp.astype(np.uint8))
    if mode != "L":
        image = image.convert(mode)
    image.save(path, format="PNG")
    return path


def _write_images(root: Path, spec: StudySpec, folder: str) -> list[str]:
    written = []
    for i, name in enumerate(spec.image_names()):
        rel = f"{folder}/{name}"
        write_png(root / rel, mode=spec.mode(i), value=spec.patient + i)
        written.append(rel)
    return written


def append_csv_rows(path: Path, rows: Iterable[str]) -> None:
    """Append raw lines to a CSV (to add missing-file rows, duplicates, garbage...)."""
    with path.open("a", encoding="utf-8", newline="") as handle:
        for row in rows:
            handle.write(row + "\n")


def write_mura_tree(
    root: Path, studies: Iterable[StudySpec], *, csv_prefix: str = "MURA-v1.1"
) -> MuraTree:
    """Write images and MURA's four CSVs (no header; paths start with ``csv_prefix/``).

    CSV files for both ``train`` and ``valid`` are always created (possibly empty), like
    the real download. Pass ``csv_prefix=""`` for paths starting at ``train/``.
    """
    root.mkdir(parents=True, exist_ok=True)
    prefix = f"{csv_prefix}/" if csv_prefix else ""
    tree = MuraTree(root=root)
    image_rows: dict[str, list[str]] = {"train": [], "valid": []}
    study_rows: dict[str, list[str]] = {"train": [], "valid": []}
    for spec in studies:
        folder = spec.folder()
        written = _write_images(root, spec, folder)
        tree.images += written
        image_rows[spec.source] += [prefix + rel for rel in written]
        if spec.in_study_csv:
            study_rows[spec.source].append(f"{prefix}{folder}/,{spec.label}")
            tree.studies.append(folder)
    for source in ("train", "valid"):
        (root / f"{source}_image_paths.csv").write_text(
            "".join(row + "\n" for row in image_rows[source]), encoding="utf-8"
        )
        (root / f"{source}_labeled_studies.csv").write_text(
            "".join(row + "\n" for row in study_rows[source]), encoding="utf-8"
        )
    return tree


def write_peer_tree(
    root: Path, studies: Iterable[StudySpec], *, part_folder=display_name
) -> MuraTree:
    """Write the peer layout: ``ROOT/{train,valid}/Elbow/patientN/studyN_<suffix>/*.png``.

    ``part_folder(part)`` names the body-part folder (default ``Elbow``).
    """
    root.mkdir(parents=True, exist_ok=True)
    tree = MuraTree(root=root)
    for spec in studies:
        folder = f"{spec.source}/{part_folder(spec.part)}/{spec.patient_id}/{spec.study_folder}"
        tree.images += _write_images(root, spec, folder)
        tree.studies.append(folder)
    return tree


def balanced_studies(
    parts: Sequence[str],
    *,
    patients_per_label: int,
    source: str = "train",
    first_patient: int = 1,
    n_images: int = 1,
) -> list[StudySpec]:
    """One study per patient: ``patients_per_label`` normal and abnormal patients per part."""
    specs = []
    patient = first_patient
    for part in parts:
        for label in (0, 1):
            for _ in range(patients_per_label):
                specs.append(
                    StudySpec(
                        part=part, patient=patient, label=label, n_images=n_images, source=source
                    )
                )
                patient += 1
    return specs


def synthetic_index(
    n_patients: int = 300,
    *,
    parts: Sequence[str] = ("ELBOW", "HAND", "SHOULDER"),
    seed: int = 0,
    first_valid_patient: int | None = None,
    abnormal_rate: float = 0.4,
) -> pd.DataFrame:
    """An index without files: each patient has 1-3 studies (random part and label) of 1-4
    images. Patients numbered ``first_valid_patient`` and up come from MURA's ``valid``."""
    rng = np.random.default_rng(seed)
    rows = []
    for number in range(1, n_patients + 1):
        patient_id = f"patient{number:05d}"
        valid = first_valid_patient is not None and number >= first_valid_patient
        source = "valid" if valid else "train"
        for study in range(1, int(rng.integers(1, 4)) + 1):
            part = parts[int(rng.integers(len(parts)))]
            label = int(rng.random() < abnormal_rate)
            study_id = f"{source}/XR_{part}/{patient_id}/study{study}_{SUFFIX[label]}"
            for image in range(1, int(rng.integers(1, 5)) + 1):
                rel_path = f"{study_id}/image{image}.png"
                rows.append(
                    {
                        "path": f"/data/MURA-v1.1/{rel_path}",
                        "rel_path": rel_path,
                        "split_source": source,
                        "body_part": part,
                        "patient_id": patient_id,
                        "study_id": study_id,
                        "study_label": label,
                        "label": label,
                    }
                )
    return pd.DataFrame(rows).sort_values("rel_path", ignore_index=True)
