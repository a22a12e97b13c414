"""A deterministic synthetic dataset in the exact Stanford MURA-v1.1 layout.

Why it exists: MURA is licence-gated and ~40k images, so tests, CI and the demo need a
stand-in that exercises *exactly* the same code path (folders, CSVs, PNG modes, patient
ids) and that a model can genuinely learn from. The generator draws grayscale
"radiographs" procedurally: bones are polygons with a brighter cortex rim, blurred soft
tissue around them, a dark background, a detector-like response curve, blur and noise,
random pose, size, aspect ratio, brightness and contrast. Each body part has its own
anatomy (two bones meeting at the elbow, finger rays fanning out of the carpus, a round
humeral head against the glenoid, ...) so the router task is real; abnormal studies carry
a fracture (a dark gap with displaced / angulated fragments, soft-tissue swelling, and
sometimes loose fragments, healing callus or a cast) or bright metal hardware (plates with
screws, lone screws, a shoulder prosthesis) at a varying position, so the abnormality task
is real but not a single-pixel shortcut. A few normal studies wear a cast too, so a cast
alone is a hint, not proof.

Determinism: the dataset plan comes from one generator seeded with ``seed``; every image
is drawn from generators seeded with ``(seed, study index)`` (anatomy and defect, shared by
all views of a study) and ``(seed, image index)`` (pose, size, contrast, noise). Nothing
depends on iteration order, so the same seed gives byte-identical files.

Atomicity: everything is written into a hidden sibling folder that is renamed onto
``root`` only when complete, so an interrupted run never leaves a half dataset behind.
"""

from __future__ import annotations

import dataclasses
import math
import os
import secrets
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from tqdm import tqdm

from bonexr.errors import ConfigError, DataError
from bonexr.labels import (
    DEFAULT_BODY_PARTS,
    LABEL_ABNORMAL,
    LABEL_NORMAL,
    normalize_body_parts,
    study_type,
)
from training.dataset import DEFECT_BOXES_CSV

#: Every path in MURA's CSVs starts with this, whatever the folder is called locally.
CSV_PREFIX = "MURA-v1.1"
#: Where each abnormal image's defect site was drawn (``rel_path,defect,x0,y0,x1,y1`` in
#: pixels of that image): the ground truth the heat maps' localisation is scored against.
#: Not part of MURA; the indexer ignores it.
SPLITS: tuple[str, ...] = ("train", "valid")

#: Share of positive (abnormal) studies; MURA-v1.1 has about 40%.
POSITIVE_RATE = 0.4
#: Probabilities of 1, 2 or 3 studies per patient and of 1..4 views per study.
STUDIES_PER_PATIENT_P = (0.7, 0.2, 0.1)
VIEWS_PER_STUDY_P = (0.15, 0.35, 0.35, 0.15)
#: Share of fractures among abnormal studies (the rest show metal hardware).
FRACTURE_RATE = 0.55
#: Extra soft-tissue density of a fracture's swelling, relative to normal soft tissue.
SWELLING = 2.0
#: Share of fractures imaged while healing, with callus around the break.
CALLUS_RATE = 0.5
#: Share of fractures with loose fragments (comminuted).
COMMINUTED_RATE = 0.5
#: Share of fracture studies shown in a cast, and of normal studies (follow-ups) too.
CAST_RATE_FRACTURE = 0.6
CAST_RATE_NORMAL = 0.04
#: Real MURA stores some PNGs as RGB or RGBA; readers must cope, so we do the same.
RGB_RATE = 0.10
RGBA_RATE = 0.03

# Independent random streams derived from the user's seed.
_PLAN_STREAM = 0
_ANATOMY_STREAM = 1
_DEFECT_STREAM = 2
_IMAGE_STREAM = 3
_CAST_STREAM = 4

Array = np.ndarray
#: A 2-D point as the drawing code accepts it (an array or an (x, y) pair).
Point = Array | tuple[float, float]


# --------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SyntheticSummary:
    """What :func:`generate_synthetic_mura` wrote (counts are read back from the plan)."""

    root: Path
    n_images: int
    n_studies: int
    n_patients: int
    #: ``(split, part, label) -> number of images`` (label 1 = abnormal).
    counts: dict[tuple[str, str, int], int]
    #: ``(split, part, label) -> number of studies``.
    study_counts: dict[tuple[str, str, int], int]
    body_parts: tuple[str, ...]
    seed: int
    seconds: float

    def describe(self) -> str:
        """A short table of images (and studies) per split x body part x label."""
        rate = self.n_images / self.seconds if self.seconds > 0 else float("inf")
        lines = [
            f"synthetic MURA-v1.1 dataset at {self.root}",
            f"  {self.n_images:,} images, {self.n_studies:,} studies, "
            f"{self.n_patients:,} patients (seed {self.seed}; "
            f"{self.seconds:.1f} s, {rate:.0f} images/s)",
            f"  {'split':<6} {'part':<9} {'normal':>15} {'abnormal':>15} {'images':>7}",
        ]
        for split in SPLITS:
            for part in self.body_parts:
                cells = []
                for label in (LABEL_NORMAL, LABEL_ABNORMAL):
                    images = self.counts.get((split, part, label), 0)
                    studies = self.study_counts.get((split, part, label), 0)
                    cells.append(f"{images} ({studies} st)")
                total = sum(self.counts.get((split, part, lab), 0) for lab in (0, 1))
                if total == 0:
                    continue
                lines.append(f"  {split:<6} {part:<9} {cells[0]:>15} {cells[1]:>15} {total:>7}")
        lines.append("  (images, with studies in brackets; abnormal = MURA 'positive')")
        return "\n".join(lines)


def generate_synthetic_mura(
    root: str | Path,
    *,
    patients_per_part: int = 40,
    body_parts: Sequence[str] = DEFAULT_BODY_PARTS,
    seed: int = 0,
    progress: bool | None = None,
    valid_fraction: float = 0.2,
    min_size: int = 128,
    max_size: int = 320,
) -> SyntheticSummary:
    """Write a synthetic dataset laid out exactly like the ``MURA-v1.1`` folder.

    ``root`` plays the MURA-v1.1 folder: it receives ``train/`` and ``valid/`` image trees
    and the four header-less CSVs. It must not exist or be an empty folder; a user's data
    is never overwritten.

    Raises:
        ConfigError: unknown body part, or an invalid fraction / size range.
        DataError: ``root`` is non-empty or not a folder, or ``patients_per_part < 2``.
    """
    started = time.perf_counter()
    parts = normalize_body_parts(body_parts)
    undrawn = [p.lower() for p in parts if p not in _DRAWERS]
    if undrawn:
        raise ConfigError(
            f"the synthetic generator draws MURA's seven parts only, not {', '.join(undrawn)}"
        )
    _check_arguments(patients_per_part, valid_fraction, min_size, max_size)
    root = Path(root)
    _check_target(root)
    plan = _plan_dataset(parts, patients_per_part, int(seed), valid_fraction)

    root.parent.mkdir(parents=True, exist_ok=True)
    staging = root.parent / f".{root.name}.partial-{os.getpid()}-{secrets.token_hex(4)}"
    staging.mkdir()
    try:
        _write_dataset(staging, plan, int(seed), progress, min_size, max_size)
        _check_target(root)  # someone may have filled it while we were drawing
        if root.exists():
            root.rmdir()  # empty (checked above); os.replace cannot replace a folder everywhere
        os.replace(staging, root)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return _summarize(root, plan, parts, int(seed), time.perf_counter() - started)


# --------------------------------------------------------------------------------------
# Argument checks
# --------------------------------------------------------------------------------------


def _check_arguments(
    patients_per_part: int, valid_fraction: float, min_size: int, max_size: int
) -> None:
    """Fail before drawing anything, with a message naming the bad value."""
    if int(patients_per_part) < 2:
        raise DataError(
            f"patients_per_part must be at least 2 (one train and one valid patient per part), "
            f"got {patients_per_part}"
        )
    if not 0.0 <= float(valid_fraction) < 1.0:
        raise ConfigError(f"valid_fraction must be in [0, 1), got {valid_fraction}")
    if int(min_size) < 32 or int(max_size) < int(min_size):
        raise ConfigError(
            f"image size range must satisfy 32 <= min_size <= max_size, got {min_size}..{max_size}"
        )


def _check_target(root: Path) -> None:
    """Refuse anything but a missing path or an empty folder."""
    if not root.exists():
        return
    if not root.is_dir():
        raise DataError(f"{root} exists and is not a folder; choose a new output folder")
    if any(root.iterdir()):
        raise DataError(
            f"{root} already exists and is not empty; refusing to overwrite it "
            "(choose a new folder or delete it first)"
        )


# --------------------------------------------------------------------------------------
# The dataset plan: patients, studies, labels, views
# --------------------------------------------------------------------------------------


@dataclass
class _StudyDraw:
    """One study as first drawn; labels may still be flipped to balance a group."""

    label: int
    n_views: int
    defect: str  # used only if the study ends up positive


@dataclass(frozen=True)
class _Study:
    """One planned study folder and where its random streams start."""

    split: str
    part: str
    patient: int
    number: int
    label: int
    defect: str  # "" for normal studies, else "fracture" or "hardware"
    n_views: int
    index: int  # global study index: seeds anatomy and defect
    first_image: int  # global index of image1: seeds the per-view generators

    @property
    def rel_dir(self) -> str:
        """``train/XR_ELBOW/patient00011/study1_negative`` (relative to the root)."""
        suffix = "positive" if self.label == LABEL_ABNORMAL else "negative"
        return (
            f"{self.split}/{study_type(self.part)}/patient{self.patient:05d}/"
            f"study{self.number}_{suffix}"
        )


def _n_valid(patients_per_part: int, valid_fraction: float) -> int:
    """Valid patients per part: at least one (if any are asked for), never all of them."""
    if valid_fraction <= 0:
        return 0
    return min(max(round(patients_per_part * valid_fraction), 1), patients_per_part - 1)


def _draw_study(rng: np.random.Generator) -> _StudyDraw:
    label = LABEL_ABNORMAL if rng.random() < POSITIVE_RATE else LABEL_NORMAL
    n_views = int(rng.choice(len(VIEWS_PER_STUDY_P), p=VIEWS_PER_STUDY_P)) + 1
    defect = "fracture" if rng.random() < FRACTURE_RATE else "hardware"
    return _StudyDraw(label, n_views, defect)


def _draw_group(rng: np.random.Generator, n_patients: int) -> list[list[_StudyDraw]]:
    """Patients of one (split, part), guaranteed to contain both labels.

    Small groups (a single valid patient) would otherwise often be one-label, which makes
    per-part AUROC undefined in tests and the demo.
    """
    patients = []
    for _ in range(n_patients):
        n_studies = int(rng.choice(len(STUDIES_PER_PATIENT_P), p=STUDIES_PER_PATIENT_P)) + 1
        patients.append([_draw_study(rng) for _ in range(n_studies)])
    if sum(len(p) for p in patients) < 2:
        patients[0].append(_draw_study(rng))
    studies = [s for p in patients for s in p]
    for label in (LABEL_NORMAL, LABEL_ABNORMAL):
        if all(s.label != label for s in studies):
            studies[int(rng.integers(len(studies)))].label = label
    return patients


def _plan_dataset(
    parts: tuple[str, ...], patients_per_part: int, seed: int, valid_fraction: float
) -> list[_Study]:
    """Decide every study folder up front (train patients first, like MURA's ids)."""
    rng = np.random.default_rng([seed, _PLAN_STREAM])
    n_valid = _n_valid(patients_per_part, valid_fraction)
    plan: list[_Study] = []
    patient_id = 0
    image_index = 0
    for split in SPLITS:
        n_patients = n_valid if split == "valid" else patients_per_part - n_valid
        for part in parts:
            if n_patients == 0:
                continue
            for draws in _draw_group(rng, n_patients):
                patient_id += 1
                for number, draw in enumerate(draws, start=1):
                    defect = draw.defect if draw.label == LABEL_ABNORMAL else ""
                    plan.append(
                        _Study(
                            split=split,
                            part=part,
                            patient=patient_id,
                            number=number,
                            label=draw.label,
                            defect=defect,
                            n_views=draw.n_views,
                            index=len(plan),
                            first_image=image_index,
                        )
                    )
                    image_index += draw.n_views
    return plan


# --------------------------------------------------------------------------------------
# Writing the tree and the CSVs
# --------------------------------------------------------------------------------------


def _write_dataset(
    staging: Path,
    plan: list[_Study],
    seed: int,
    progress: bool | None,
    min_size: int,
    max_size: int,
) -> None:
    """Draw and save every image, then the four header-less CSVs."""
    for split in SPLITS:
        (staging / split).mkdir()
    n_images = sum(s.n_views for s in plan)
    image_lines: dict[str, list[str]] = {split: [] for split in SPLITS}
    study_lines: dict[str, list[str]] = {split: [] for split in SPLITS}
    box_lines = ["rel_path,defect,x0,y0,x1,y1"]
    with tqdm(
        total=n_images, disable=None if progress is None else not progress, unit="img", desc="synth"
    ) as bar:
        for study in plan:
            folder = staging / study.rel_dir
            folder.mkdir(parents=True)
            study_lines[study.split].append(f"{CSV_PREFIX}/{study.rel_dir}/,{study.label}")
            for view in range(study.n_views):
                image, box = _render_view(study, view, seed, min_size, max_size)
                name = f"image{view + 1}.png"
                image.save(folder / name, format="PNG", compress_level=6)
                if box is not None:
                    box_lines.append(
                        f"{study.rel_dir}/{name},{study.defect}," + ",".join(map(str, box))
                    )
                image_lines[study.split].append(f"{CSV_PREFIX}/{study.rel_dir}/{name}")
                bar.update(1)
    for split in SPLITS:
        _write_lines(staging / f"{split}_image_paths.csv", image_lines[split])
        _write_lines(staging / f"{split}_labeled_studies.csv", study_lines[split])
    _write_lines(staging / DEFECT_BOXES_CSV, box_lines)


def _write_lines(path: Path, lines: list[str]) -> None:
    """Write a header-less CSV via a temp file and an atomic rename."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8", newline="\n")
    os.replace(tmp, path)


def _summarize(
    root: Path, plan: list[_Study], parts: tuple[str, ...], seed: int, seconds: float
) -> SyntheticSummary:
    counts: dict[tuple[str, str, int], int] = {}
    study_counts: dict[tuple[str, str, int], int] = {}
    for study in plan:
        key = (study.split, study.part, study.label)
        counts[key] = counts.get(key, 0) + study.n_views
        study_counts[key] = study_counts.get(key, 0) + 1
    return SyntheticSummary(
        root=root,
        n_images=sum(s.n_views for s in plan),
        n_studies=len(plan),
        n_patients=len({s.patient for s in plan}),
        counts=counts,
        study_counts=study_counts,
        body_parts=parts,
        seed=seed,
        seconds=seconds,
    )


# --------------------------------------------------------------------------------------
# Geometry: anatomy lives in a normalised frame (x right, y down, about [-1, 1]^2)
# --------------------------------------------------------------------------------------


def _vec(x: float, y: float) -> Array:
    return np.array([x, y], dtype=float)


def _rot(degrees: float) -> Array:
    a = math.radians(degrees)
    return np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])


def _unit(degrees: float) -> Array:
    """Direction ``degrees`` away from straight down (positive turns toward +x)."""
    a = math.radians(degrees)
    return np.array([math.sin(a), math.cos(a)])


def _ellipse(center: Point, rx: float, ry: float, angle: float = 0.0, n: int = 28) -> Array:
    phi = np.linspace(0.0, 2 * math.pi, n, endpoint=False)
    pts = np.stack([rx * np.cos(phi), ry * np.sin(phi)], axis=1) @ _rot(angle).T
    return pts + np.asarray(center, dtype=float)


@dataclass
class _Shape:
    """A polygon to rasterise. ``thick`` (normalised) sets the cortex rim width."""

    points: Array
    density: float = 1.0
    thick: float = 0.05
    tissue: bool = True  # surrounded by soft tissue haze
    bone: bool = True  # False: only soft tissue (a swelling)
    site: bool = False  # part of the abnormality's site (its box is recorded)


@dataclass
class _LongBone:
    """A tubular bone: a (slightly bowed) shaft whose ends flare into epiphyses.

    One closed outline (not a union of pieces) so the cortex rim is continuous, and it can
    be cut anywhere along its axis, which is how fractures are drawn.
    """

    # any (x, y) point; an ndarray after __post_init__ (Any: the drawing code passes both)
    start: Any
    end: Any
    width: float  # shaft half-width
    flare0: float = 0.4  # relative extra half-width at the start
    flare1: float = 0.4
    cap: float = 0.7  # end-cap length relative to the local half-width
    bow: float = 0.0
    density: float = 1.0

    def __post_init__(self) -> None:
        self.start = np.asarray(self.start, dtype=float)
        self.end = np.asarray(self.end, dtype=float)

    @property
    def length(self) -> float:
        return float(np.linalg.norm(self.end - self.start))

    @property
    def direction(self) -> Array:
        return (self.end - self.start) / max(self.length, 1e-9)

    @property
    def normal(self) -> Array:
        d = self.direction
        return np.array([-d[1], d[0]])

    def axis(self, t: Array | float) -> Array:
        t = np.asarray(t, dtype=float)
        bow = self.bow * self.length * np.sin(math.pi * t)
        return self.start + t[..., None] * (self.end - self.start) + bow[..., None] * self.normal

    def half_width(self, t: Array | float) -> Array:
        t = np.asarray(t, dtype=float)
        extent = 2.2 * self.width / max(self.length, 1e-9)
        return self.width * (
            1.0
            + self.flare0 * np.exp(-((t / extent) ** 2))
            + self.flare1 * np.exp(-(((1.0 - t) / extent) ** 2))
        )

    def side(self, t: Array, s: float | Array) -> Array:
        """Points at axial positions ``t`` and lateral positions ``s`` in [-1, 1]."""
        s = np.asarray(s, dtype=float)
        return self.axis(t) + (s * self.half_width(t))[..., None] * self.normal

    def _cap(self, t: float, forward: bool) -> Array:
        phi = np.linspace(0.0, math.pi, 11)[1:-1]
        w = float(self.half_width(t))
        sign = 1.0 if forward else -1.0
        centre = self.axis(t)
        return (
            centre
            + sign * np.cos(phi)[:, None] * w * self.normal
            + sign * np.sin(phi)[:, None] * w * self.cap * self.direction
        )

    def _cut(self, t: float, cut: Array) -> Array:
        """Points of a fracture line: rows of (lateral s from +1 to -1, axial offset)."""
        return self.side(t + cut[:, 1] / self.length, cut[:, 0])

    def outline(
        self, t0: float = 0.0, t1: float = 1.0, cut0: Array | None = None, cut1: Array | None = None
    ) -> Array:
        """Closed outline from ``t0`` to ``t1``; an end is capped unless a cut is given."""
        length = self.length
        l0 = t0 + (cut0[0, 1] / length if cut0 is not None else 0.0)
        r0 = t0 + (cut0[-1, 1] / length if cut0 is not None else 0.0)
        l1 = t1 + (cut1[0, 1] / length if cut1 is not None else 0.0)
        r1 = t1 + (cut1[-1, 1] / length if cut1 is not None else 0.0)
        n = max(8, int(24 * (t1 - t0)) + 4)
        left = self.side(np.linspace(l0, l1, n), 1.0)
        right = self.side(np.linspace(r1, r0, n), -1.0)
        end = self._cut(t1, cut1)[1:-1] if cut1 is not None else self._cap(t1, forward=True)
        begin = self._cut(t0, cut0)[::-1][1:-1] if cut0 is not None else self._cap(t0, False)
        return np.concatenate([left, end, right, begin])

    def shape(self) -> _Shape:
        return _Shape(self.outline(), self.density, self.width)


@dataclass
class _Scene:
    """One body part's anatomy before the view transform."""

    bones: list[_LongBone] = field(default_factory=list)
    blobs: list[_Shape] = field(default_factory=list)
    #: Bones that may carry a defect, with the visible axial range ``(index, t_lo, t_hi)``.
    targets: list[tuple[int, float, float]] = field(default_factory=list)
    #: Soft-tissue thickness around the bones (normalised units).
    tissue: float = 0.2
    #: Whether fractures here may be shown in a cast (not the shoulder or humerus: slings).
    castable: bool = True
    #: Named landmarks some defects need (the shoulder prosthesis uses the humeral head).
    anchors: dict[str, Array] = field(default_factory=dict)

    def add(self, bone: _LongBone, target: tuple[float, float] | None = None) -> _LongBone:
        self.bones.append(bone)
        if target is not None:
            self.targets.append((len(self.bones) - 1, *target))
        return bone


def _ray(
    scene: _Scene,
    base: Point,
    angle: float,
    lengths: Sequence[float],
    widths: Sequence[float],
    bends: Sequence[float] | Array,
    gap: float,
    targets: Sequence[tuple[float, float] | None],
) -> Array:
    """A chain of small long bones (metacarpal + phalanges) with joint gaps and bends.

    Angles are measured from straight *up* here (fingers point up in a PA hand film).
    Returns the tip of the last bone.
    """
    point = np.asarray(base, dtype=float)
    heading = angle
    for i, (length, width) in enumerate(zip(lengths, widths, strict=True)):
        direction = -_unit(-heading)  # up, turned by heading toward +x
        end = point + length * direction
        flare1 = 0.35 if i < len(lengths) - 1 else 0.25
        scene.add(_LongBone(point, end, width, 0.45, flare1, 0.6), targets[i])
        point = end + gap * direction
        heading += bends[i] if i < len(bends) else 0.0
    return point


# --------------------------------------------------------------------------------------
# Anatomy per body part. ``anat`` is shared by all views of a study, ``pose`` is per view.
# --------------------------------------------------------------------------------------


def _draw_elbow(anat: np.random.Generator, pose: np.random.Generator) -> _Scene:
    """Humerus from above meeting radius + ulna at an angle (AP: nearly straight)."""
    hw, fw = anat.uniform(0.10, 0.13), anat.uniform(0.055, 0.07)
    condyle, olecranon = anat.uniform(0.8, 1.1), anat.uniform(0.8, 1.1)
    lateral = pose.random() < 0.5
    flex = pose.uniform(60, 100) if lateral else pose.uniform(0, 18)
    joint = np.array([pose.normal(0, 0.05) - 0.1, pose.uniform(-0.15, 0.0)])
    scene = _Scene(tissue=0.28)
    scene.add(
        _LongBone(
            joint + _vec(0, -1.5),
            joint + _vec(0, -0.03),
            hw,
            0.0,
            condyle * (0.6 if lateral else 1.0),
            0.45,
        ),
        (0.55, 0.85),
    )
    d = _unit(flex)
    n = np.array([-d[1], d[0]])
    sep = 0.05 if lateral else 0.11
    radius = _LongBone(joint + 0.07 * d + sep * n, joint + 1.5 * d + 1.3 * sep * n, fw, 0.5, 0.3)
    ulna = _LongBone(
        joint - 0.12 * d - sep * n, joint + 1.5 * d - sep * n, fw * 1.05, olecranon, 0.2, 0.9
    )
    scene.add(radius, (0.2, 0.6))
    scene.add(ulna, (0.2, 0.6))
    scene.blobs.append(_Shape(_ellipse(joint + _vec(0.19, -0.12), 0.05, 0.04), 0.7, 0.03))
    return scene


def _draw_hand(anat: np.random.Generator, pose: np.random.Generator) -> _Scene:
    """PA hand: carpal cluster, five metacarpals, phalanges fanning out, radius/ulna ends."""
    size = anat.uniform(0.92, 1.04)
    mc_len = np.array([0.46, 0.47, 0.43, 0.38]) * size
    prox = np.array([0.27, 0.29, 0.27, 0.22]) * size
    mid = np.array([0.17, 0.19, 0.18, 0.13]) * size
    dist = np.array([0.12, 0.13, 0.12, 0.11]) * size
    w = anat.uniform(0.038, 0.046)
    spread = pose.uniform(0.6, 1.4)
    bends = pose.normal(0, 4, size=(5, 3))
    scene = _Scene(tissue=0.12)
    dy = 0.12
    for x, y in ((-0.1, 1.45), (0.16, 1.45)):
        scene.add(
            _LongBone((x, y + dy), (x, 0.82 + dy), 0.1 if x < 0 else 0.06, 0.0, 0.6, 0.4),
            None,  # mostly outside the film: no defect there
        )
    for row_y, xs in ((0.68, (-0.17, -0.06, 0.05, 0.15)), (0.55, (-0.16, -0.06, 0.04, 0.13))):
        for x in xs:
            centre = np.array([x, row_y + dy]) + anat.normal(0, 0.008, 2)
            rx, ry = anat.uniform(0.045, 0.062, 2)
            scene.blobs.append(_Shape(_ellipse(centre, rx, ry, anat.uniform(0, 180)), 0.9, rx))
    for i, x in enumerate((-0.17, -0.06, 0.05, 0.15)):
        angle = (-14 + 9.5 * i) * spread
        lengths = (mc_len[i], prox[i], mid[i], dist[i])
        widths = (w, w * 0.9, w * 0.78, w * 0.68)
        _ray(
            scene,
            (x, 0.46 + dy),
            angle,
            lengths,
            widths,
            bends[i],
            0.03,
            ((0.2, 0.8), (0.2, 0.8), None, None),
        )
    thumb = (-45 - 10 * spread) + pose.normal(0, 4)
    _ray(
        scene,
        (-0.24, 0.54 + dy),
        thumb,
        (0.3 * size, 0.22 * size, 0.15 * size),
        (w * 1.05, w, w * 0.85),
        bends[4],
        0.03,
        ((0.2, 0.8), None, None),
    )
    return scene


def _draw_shoulder(anat: np.random.Generator, pose: np.random.Generator) -> _Scene:
    """AP shoulder: big round humeral head on a shaft, glenoid arc, scapula, clavicle, ribs."""
    r = anat.uniform(0.26, 0.32)
    shaft_w = anat.uniform(0.12, 0.14)
    head = np.array([0.15, -0.18]) + pose.normal(0, 0.03, 2)
    abduct = pose.uniform(-25, 5)
    aspect = pose.uniform(0.85, 1.0)
    scene = _Scene(tissue=0.35, castable=False)
    d = _unit(abduct + 8)
    shaft = _LongBone(head + 0.2 * d, head + 1.9 * d, shaft_w, 0.7, 0.0, 0.6)
    scene.add(shaft, (0.2, 0.45))
    scene.blobs.append(
        _Shape(_ellipse(head, r, r * aspect, pose.uniform(0, 180), 36), 1.0, r * 0.3)
    )
    tub = head + r * 0.75 * np.array([0.9, 0.3]) + pose.normal(0, 0.03, 2)
    scene.blobs.append(_Shape(_ellipse(tub, r * 0.45, r * 0.35, 30), 0.6, 0.05))
    scene.anchors = {"head": head, "radius": np.array([r]), "shaft": np.array([0.0])}
    # glenoid: a crescent just medial to the head
    gx = head[0] - r - anat.uniform(0.03, 0.06)
    phi = np.linspace(-0.9, 0.9, 12)
    outer = np.stack([gx - 0.02 + 0.08 * (1 - np.cos(phi)), head[1] + 0.26 * np.sin(phi)], 1)
    inner = np.stack([gx - 0.09 + 0.05 * (1 - np.cos(phi)), head[1] + 0.22 * np.sin(phi)], 1)
    scene.blobs.append(_Shape(np.concatenate([outer, inner[::-1]]), 1.0, 0.035))
    # scapular body (thin, faint) and its lateral border
    body = np.array(
        [
            [gx - 0.05, head[1] - 0.25],
            [gx - 0.1, head[1] + 0.3],
            [gx - 0.4, head[1] + 1.2],
            [-1.4, head[1] + 0.5],
            [-1.4, head[1] - 0.45],
        ]
    )
    scene.blobs.append(_Shape(body, 0.35, 0.03))
    scene.add(
        _LongBone(
            (gx - 0.08, head[1] + 0.22), (gx - 0.42, head[1] + 1.25), 0.05, 0.3, 0.2, 0.6, 0.0, 0.8
        )
    )
    acromion_end = head + _vec(r * 0.4, -r - 0.12)
    scene.add(_LongBone((-1.3, head[1] - 0.02), acromion_end, 0.055, 0.0, 0.5, 0.8))
    clav_end = head + _vec(0.02, -r - 0.24)
    clavicle = _LongBone(
        (-1.4, clav_end[1] - 0.25),
        clav_end,
        anat.uniform(0.045, 0.06),
        0.2,
        0.4,
        0.7,
        anat.uniform(-0.05, 0.05),
    )
    scene.add(clavicle, (0.4, 0.75))
    scene.blobs.append(_Shape(_ellipse((gx - 0.08, head[1] - r * 0.75), 0.06, 0.04, 20), 0.8, 0.03))
    for k in range(4):
        centre = np.array([-0.95, head[1] + 1.05 + 0.3 * k])
        phi = np.linspace(-2.5, -1.35, 14)
        outer = centre + 1.2 * np.stack([np.cos(phi), np.sin(phi)], 1)
        inner = centre + 1.13 * np.stack([np.cos(phi), np.sin(phi)], 1)
        scene.blobs.append(_Shape(np.concatenate([outer, inner[::-1]]), 0.3, 0.02, False))
    return scene


def _draw_finger(anat: np.random.Generator, pose: np.random.Generator) -> _Scene:
    """One ray filling the film: metacarpal head and three phalanges (lateral: flexed)."""
    size = anat.uniform(0.92, 1.05)
    w = anat.uniform(0.08, 0.095)
    lateral = pose.random() < 0.5
    flex = pose.uniform(5, 30, 3) if lateral else pose.normal(0, 3, 3)
    scene = _Scene(tissue=0.16)
    base = np.array([pose.normal(0, 0.05), 1.55])
    _ray(
        scene,
        base,
        pose.normal(0, 4),
        (0.95 * size, 0.55 * size, 0.36 * size, 0.25 * size),
        (w * 1.15, w, w * 0.85, w * 0.72),
        flex,
        0.05,
        ((0.65, 0.85), (0.2, 0.8), (0.2, 0.8), None),
    )
    if pose.random() < 0.5:
        side = pose.choice([-1.0, 1.0])
        scene.add(_LongBone((side * 0.62, 1.3), (side * 0.68, -0.2), w * 0.8, 0.3, 0.3, 0.6))
    return scene


def _draw_forearm(anat: np.random.Generator, pose: np.random.Generator) -> _Scene:
    """Radius and ulna running the film's length, side by side (lateral: overlapping)."""
    rw, uw = anat.uniform(0.075, 0.09), anat.uniform(0.065, 0.08)
    lateral = pose.random() < 0.5
    sep = 0.07 if lateral else 0.14
    x0 = pose.normal(0, 0.05)
    scene = _Scene(tissue=0.3)
    scene.add(
        _LongBone(
            (x0 - sep, -1.28), (x0 - sep * 1.1, 1.25), rw, 0.4, 0.8, 0.5, anat.uniform(0.01, 0.04)
        ),
        (0.2, 0.8),
    )
    scene.add(
        _LongBone((x0 + sep, -1.38), (x0 + sep, 1.2), uw, 1.0, 0.3, 0.8, anat.uniform(-0.02, 0.0)),
        (0.2, 0.8),
    )
    scene.add(_LongBone((x0, -2.4), (x0, -1.36), 0.12, 0.0, 1.0, 0.45))
    for x in (-0.15, 0.0, 0.15):
        scene.blobs.append(_Shape(_ellipse((x0 + x, 1.45), 0.06, 0.05), 0.9, 0.05))
    return scene


def _draw_humerus(anat: np.random.Generator, pose: np.random.Generator) -> _Scene:
    """One long thick bone, head at the top, condyles at the bottom."""
    w = anat.uniform(0.12, 0.15)
    x0 = pose.normal(0, 0.05)
    scene = _Scene(tissue=0.38, castable=False)
    scene.add(
        _LongBone((x0, -1.05), (x0 - 0.02, 1.12), w, 0.8, 1.0, 0.5, anat.uniform(-0.02, 0.02)),
        (0.2, 0.8),
    )
    scene.blobs.append(_Shape(_ellipse((x0 + 0.06, -1.18), 0.3, 0.28, 0, 32), 1.0, 0.09))
    scene.blobs.append(_Shape(_ellipse((x0 - 0.4, -1.2), 0.06, 0.2), 0.8, 0.04))
    return scene


def _draw_wrist(anat: np.random.Generator, pose: np.random.Generator) -> _Scene:
    """Carpal cluster between the radius/ulna ends and the metacarpal bases."""
    scene = _Scene(tissue=0.2)
    y0 = pose.normal(0, 0.04)
    scene.add(
        _LongBone((-0.12, 1.5), (-0.12, 0.27 + y0), anat.uniform(0.12, 0.15), 0.0, 0.7, 0.35),
        (0.5, 0.85),
    )
    scene.add(
        _LongBone((0.25, 1.5), (0.26, 0.35 + y0), anat.uniform(0.06, 0.075), 0.0, 0.4, 0.6),
        (0.5, 0.85),
    )
    for row_y, xs in ((0.06, (-0.3, -0.1, 0.1, 0.28)), (-0.19, (-0.29, -0.1, 0.08, 0.25))):
        for x in xs:
            centre = np.array([x, row_y + y0]) + anat.normal(0, 0.015, 2)
            rx, ry = anat.uniform(0.075, 0.105, 2)
            scene.blobs.append(_Shape(_ellipse(centre, rx, ry, anat.uniform(0, 180)), 0.95, rx))
    spread = pose.uniform(0.7, 1.3)
    for i, x in enumerate((-0.28, -0.1, 0.07, 0.23)):
        base = np.array([x, -0.34 + y0])
        direction = -_unit(-(-8 + 6 * i) * spread)
        scene.add(_LongBone(base, base + 1.1 * direction, 0.055, 0.45, 0.3, 0.6), (0.1, 0.5))
    thumb = np.array([-0.45, -0.25 + y0])
    scene.add(_LongBone(thumb, thumb + 0.8 * -_unit(35), 0.06, 0.45, 0.3, 0.6))
    return scene


_DRAWERS: dict[str, Callable[[np.random.Generator, np.random.Generator], _Scene]] = {
    "ELBOW": _draw_elbow,
    "FINGER": _draw_finger,
    "FOREARM": _draw_forearm,
    "HAND": _draw_hand,
    "HUMERUS": _draw_humerus,
    "SHOULDER": _draw_shoulder,
    "WRIST": _draw_wrist,
}


# --------------------------------------------------------------------------------------
# Defects
# --------------------------------------------------------------------------------------


def _pick_target(scene: _Scene, rng: np.random.Generator, power: float) -> tuple[int, float]:
    """A defect site (bone index, axial position); thicker bones are likelier.

    ``power`` sets how strongly: plates go on big bones (radius, humerus) far more often
    than on phalanges, fractures less so.
    """
    weights = np.array([scene.bones[i].width ** power * (hi - lo) for i, lo, hi in scene.targets])
    index, lo, hi = scene.targets[int(rng.choice(len(weights), p=weights / weights.sum()))]
    return index, float(rng.uniform(lo, hi))


def _fracture(scene: _Scene, rng: np.random.Generator) -> list[_Shape]:
    """Split a bone at a jagged (maybe oblique) line; displace and angulate the far part.

    Also returns a soft-tissue swelling around the site, a real secondary sign.
    """
    index, tc = _pick_target(scene, rng, 1.5)
    bone = scene.bones.pop(index)
    w = max(float(bone.half_width(tc)), 0.045)  # small bones still get a visible break
    k = int(rng.integers(4, 7))
    s = np.linspace(1.0, -1.0, k)
    oblique = rng.uniform(-1.6, 1.6) * w
    jag = rng.uniform(-0.35, 0.35, k) * w
    cut = np.stack([s, 0.5 * oblique * s + jag], axis=1)
    gap = rng.uniform(0.8, 1.5) * w / bone.length
    near = bone.outline(0.0, tc - gap / 2, cut1=cut)
    far = bone.outline(tc + gap / 2, 1.0, cut0=cut)
    pivot = bone.axis(tc)
    angle = rng.choice([-1.0, 1.0]) * rng.uniform(12, 32)
    shift = rng.choice([-1.0, 1.0]) * rng.uniform(0.7, 1.5) * w * bone.normal
    far = (far - pivot) @ _rot(angle).T + pivot + shift
    along = math.degrees(math.atan2(bone.direction[1], bone.direction[0]))
    swelling = _ellipse(pivot, rng.uniform(3.5, 5.0) * w, rng.uniform(2.2, 3.0) * w, along)
    shapes = [
        _Shape(near, bone.density, bone.width),
        _Shape(far, bone.density, bone.width),
        _Shape(swelling, 0.0, w, tissue=True, bone=False, site=True),
    ]
    if rng.random() < COMMINUTED_RATE:  # comminuted: loose fragments beside the break
        for _ in range(int(rng.integers(1, 4))):
            centre = pivot + rng.uniform(-1.0, 1.0) * w * bone.direction
            centre = centre + rng.choice([-1.0, 1.0]) * rng.uniform(0.9, 1.5) * w * bone.normal
            chip = _ellipse(
                centre,
                rng.uniform(0.3, 0.6) * w,
                rng.uniform(0.2, 0.4) * w,
                rng.uniform(0, 180),
                int(rng.integers(3, 6)),
            )
            shapes.append(_Shape(chip, bone.density, 0.5 * w, site=True))
    if rng.random() < CALLUS_RATE:
        shapes.append(_callus(pivot, w, along, rng))
    if scene.castable and rng.random() < CAST_RATE_FRACTURE:
        shapes.append(_cast(bone, tc, scene.tissue, rng))
    return shapes


def _callus(centre: Array, w: float, along: float, rng: np.random.Generator) -> _Shape:
    """Healing callus: a fluffy, irregular cuff of new bone around a subacute break."""
    n = 20
    phi = np.linspace(0.0, 2 * math.pi, n, endpoint=False)
    radius = 1.0 + rng.uniform(-0.18, 0.18, n)
    rx, ry = rng.uniform(1.8, 2.6) * w, rng.uniform(1.3, 1.7) * w
    pts = np.stack([rx * radius * np.cos(phi), ry * radius * np.sin(phi)], axis=1)
    return _Shape(pts @ _rot(along).T + centre, rng.uniform(0.3, 0.45), 0.2 * w, site=True)


def _cast(bone: _LongBone, tc: float, tissue: float, rng: np.random.Generator) -> _Shape:
    """A plaster/fibreglass cast: a faint shell around the limb with sharp, denser edges.

    Casts are common on MURA's positive studies (and occasionally on negative follow-ups),
    a secondary sign a model should be able to use, as radiologists do.
    """
    reach = rng.uniform(0.45, 0.8) / bone.length
    half = 1.6 * float(bone.half_width(tc)) + 1.1 * tissue + rng.uniform(0.02, 0.06)
    band = _rect_along(bone, tc - reach, tc + reach, rng.normal(0, 0.2) * bone.width, half)
    return _Shape(band, rng.uniform(0.35, 0.5), 0.08, tissue=False)


def _maybe_cast(scene: _Scene, rng: np.random.Generator) -> list[_Shape]:
    """A cast on a normal study (a healed follow-up), so a cast alone is not proof."""
    if not scene.castable or rng.random() >= CAST_RATE_NORMAL:
        return []
    index, tc = _pick_target(scene, rng, 1.0)
    return [_cast(scene.bones[index], tc, scene.tissue, rng)]


def _rect_along(bone: _LongBone, ta: float, tb: float, offset: float, half: float) -> Array:
    """A strip following the bone axis between ``ta`` and ``tb``, shifted sideways."""
    t = np.linspace(ta, tb, 10)
    centre = bone.axis(t) + offset * bone.normal
    edge = half * bone.normal
    return np.concatenate([centre + edge, (centre - edge)[::-1]])


def _screw(centre: Array, direction: Array, length: float, width: float) -> list[_Shape]:
    """A threaded screw (zig-zag shank) with a wider head, as metal shapes."""
    direction = direction / np.linalg.norm(direction)
    normal = np.array([-direction[1], direction[0]])
    n = 9
    t = np.linspace(-0.5, 0.5, n) * length
    zig = np.where(np.arange(n) % 2 == 0, 1.0, 1.35) * width / 2
    left = centre + t[:, None] * direction + zig[:, None] * normal
    right = centre + t[::-1, None] * direction - zig[::-1, None] * normal
    head_centre = centre - 0.5 * length * direction
    head = _ellipse(head_centre, width * 0.8, width * 1.5, math.degrees(math.atan2(*direction)))
    return [_Shape(np.concatenate([left, right]), 0.92, width), _Shape(head, 1.0, width)]


def _plate(bone: _LongBone, tc: float, rng: np.random.Generator) -> list[_Shape]:
    """A plate along the shaft with a row of holes, most holding a screw across the bone."""
    w = bone.width
    half_len = rng.uniform(0.12, 0.3) * bone.length
    ta = max(0.03, tc - half_len / bone.length)
    tb = min(0.97, tc + half_len / bone.length)
    offset = rng.choice([-1.0, 1.0]) * rng.uniform(0.0, 0.5) * w
    plate_half = rng.uniform(0.55, 0.8) * w
    shapes = [_Shape(_rect_along(bone, ta, tb, offset, plate_half), 0.97, plate_half)]
    n_holes = max(2, int((tb - ta) * bone.length / (2.4 * plate_half)))
    for t in np.linspace(ta, tb, n_holes + 2)[1:-1]:
        centre = bone.axis(t) + offset * bone.normal
        if rng.random() < 0.75:
            tilt = _rot(rng.normal(0, 8)) @ bone.normal
            shapes += _screw(centre, tilt, 2.4 * w, 0.36 * w)
        else:  # an empty hole: the bone shows through
            shapes.append(_Shape(_ellipse(centre, 0.3 * plate_half, 0.3 * plate_half, 0, 12), 0.0))
    return shapes


def _hardware(scene: _Scene, rng: np.random.Generator, part: str) -> list[_Shape]:
    """Metal: a plate with screws (most), a few lone screws, or a shoulder prosthesis."""
    roll = rng.random()
    if part == "SHOULDER" and roll < 0.3:
        head, r = scene.anchors["head"], float(scene.anchors["radius"][0])
        shaft = scene.bones[0]
        ball = _ellipse(head, r * 0.95, r * 0.95, 0, 36)
        stem = _rect_along(shaft, 0.0, rng.uniform(0.35, 0.5), 0.0, shaft.width * 0.5)
        return [_Shape(ball, 1.0, r), _Shape(stem, 1.0, shaft.width)]
    index, tc = _pick_target(scene, rng, 2.0)
    bone = scene.bones[index]
    if bone.width < 0.05:  # implants have a minimum physical size: use a stouter stand-in
        bone = _LongBone(bone.start, bone.end, 0.05, bone.flare0, bone.flare1, bone.cap, bone.bow)
    if roll < 0.75:
        return _plate(bone, tc, rng)
    shapes: list[_Shape] = []
    for _ in range(int(rng.integers(2, 5))):
        t = float(np.clip(tc + rng.normal(0, 0.06), 0.05, 0.95))
        tilt = _rot(rng.uniform(-35, 35)) @ bone.normal
        shapes += _screw(bone.axis(t), tilt, 2.6 * bone.width, 0.4 * bone.width)
    return shapes


# --------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _View:
    """Maps normalised anatomy coordinates to pixels (rotation, flip, zoom, shift)."""

    width: int
    height: int
    matrix: Array
    offset: Array
    scale: float

    def __call__(self, points: Array) -> Array:
        return points @ self.matrix.T + self.offset


def _draw_view(rng: np.random.Generator, min_size: int, max_size: int) -> _View:
    width = int(rng.integers(min_size, max_size + 1))
    height = int(np.clip(round(width * rng.uniform(0.7, 1.3)), min_size, max_size))
    angle = float(np.clip(rng.normal(0, 12), -30, 30))
    if rng.random() < 0.08:
        angle += float(rng.choice([-90.0, 90.0]))
    flip = -1.0 if rng.random() < 0.5 else 1.0
    scale = rng.uniform(0.85, 1.1) * min(width, height) / 2
    matrix = scale * _rot(angle) @ np.diag([flip, 1.0])
    offset = np.array([width / 2, height / 2]) + scale * rng.normal(0, 0.06, 2)
    return _View(width, height, matrix, offset, scale)


def _bbox(points: Array, width: int, height: int, pad: int) -> tuple[int, int, int, int] | None:
    x0 = max(0, math.floor(points[:, 0].min()) - pad)
    y0 = max(0, math.floor(points[:, 1].min()) - pad)
    x1 = min(width, math.ceil(points[:, 0].max()) + pad + 1)
    y1 = min(height, math.ceil(points[:, 1].max()) + pad + 1)
    if x1 <= x0 or y1 <= y0:
        return None
    return x0, y0, x1, y1


def _rasterize_bones(shapes: list[_Shape], view: _View, medulla: float, rim: float) -> Array:
    """Sum of bone layers: attenuation adds up, so overlapping bones look denser.

    Each shape is drawn into its own bounding-box crop (cheap) with a fainter medullary
    fill and a bright cortex rim whose width follows the bone's thickness.
    """
    out = np.zeros((view.height, view.width), dtype=np.float32)
    for shape in shapes:
        if not shape.bone:
            continue
        pts = view(shape.points)
        box = _bbox(pts, view.width, view.height, 2)
        if box is None:
            continue
        x0, y0, x1, y1 = box
        layer = Image.new("L", (x1 - x0, y1 - y0), 0)
        cortex = max(1, round(rim * shape.thick * view.scale))
        flat = (pts - (x0, y0)).ravel().tolist()
        ImageDraw.Draw(layer).polygon(flat, fill=round(255 * medulla), outline=255, width=cortex)
        out[y0:y1, x0:x1] += np.asarray(layer, dtype=np.float32) * (shape.density / 255.0)
    return out


def _rasterize_tissue(shapes: list[_Shape], view: _View, thickness: float) -> Array:
    """A soft envelope around the bones (the soft-tissue haze), plus any swelling.

    A blurred, amplified bone mask reaches about ``thickness`` beyond the bone edges; it is
    much cheaper than drawing thick outlines. Swellings add density on top.
    """
    envelope = Image.new("L", (view.width, view.height), 0)
    swelling = Image.new("L", (view.width, view.height), 0)
    for shape in shapes:
        if shape.tissue:
            target = envelope if shape.bone else swelling
            ImageDraw.Draw(target).polygon(view(shape.points).ravel().tolist(), fill=255)
    px = max(2.0, thickness * view.scale)
    blurred = np.asarray(envelope.filter(ImageFilter.GaussianBlur(px * 0.6)), dtype=np.float32)
    tissue = np.clip(blurred * (2.2 / 255.0), 0.0, 1.0)
    if swelling.getbbox() is not None:
        soft = swelling.filter(ImageFilter.GaussianBlur(max(2.0, px * 0.5)))
        tissue += np.asarray(soft, dtype=np.float32) * (SWELLING / 255.0)
    return tissue


def _rasterize_metal(shapes: list[_Shape], view: _View) -> Array:
    """Metal is drawn opaque (later shapes overwrite), as 0..1 brightness."""
    layer = Image.new("L", (view.width, view.height), 0)
    draw = ImageDraw.Draw(layer)
    for shape in shapes:
        draw.polygon(view(shape.points).ravel().tolist(), fill=round(255 * shape.density))
    return np.asarray(layer, dtype=np.float32) / 255.0


def _smooth_noise(rng: np.random.Generator, width: int, height: int, cell: int) -> Array:
    """Low-frequency noise (upsampled coarse grid): trabecular texture, uneven exposure."""
    small = rng.normal(size=(max(2, height // cell), max(2, width // cell))).astype(np.float32)
    return np.asarray(
        Image.fromarray(small, mode="F").resize((width, height), Image.Resampling.BILINEAR)
    )


_GLYPHS = {
    "L": [[(0.0, 0.0), (0.0, 1.0), (0.7, 1.0)]],
    "R": [
        [(0.0, 1.0), (0.0, 0.0), (0.55, 0.0), (0.75, 0.15), (0.75, 0.35), (0.55, 0.5), (0.0, 0.5)],
        [(0.3, 0.5), (0.75, 1.0)],
    ],
}


def _draw_marker(pixels: Array, rng: np.random.Generator) -> None:
    """A lead side marker ("L"/"R") in a corner: bright, present in both classes."""
    height, width = pixels.shape
    size = rng.uniform(0.06, 0.1) * min(width, height)
    x = rng.choice([0.06 * width, width - 0.06 * width - size])
    y = rng.choice([0.06 * height, height - 0.06 * height - size])
    layer = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(layer)
    for stroke in _GLYPHS[str(rng.choice(["L", "R"]))]:
        pts = [(x + size * u, y + size * v) for u, v in stroke]
        draw.line(pts, fill=255, width=max(1, round(size / 6)))
    value = rng.uniform(160, 225)
    np.maximum(pixels, np.asarray(layer, dtype=np.float32) * (value / 255.0), out=pixels)


def _expose(bones: Array, tissue: Array, metal: Array, rng: np.random.Generator) -> Array:
    """Attenuation -> detector brightness with random exposure, contrast and gamma.

    The response saturates smoothly, so even overlapping bones stay below ~225 while metal
    sits near white, as on real films.
    """
    height, width = bones.shape
    texture = _smooth_noise(rng, width, height, max(3, width // 40))
    exposure = _smooth_noise(rng, width, height, max(8, width // 3))
    attenuation = tissue * rng.uniform(0.22, 0.4) + bones * (1.0 + 0.08 * texture)
    response = 1.0 - np.exp(-rng.uniform(1.0, 1.5) * attenuation)
    background = rng.uniform(3, 35)
    span = rng.uniform(150, 215) - background
    pixels = background + span * response * (1.0 + 0.03 * exposure)
    pixels = 255.0 * (np.clip(pixels, 0, 255) / 255.0) ** rng.uniform(0.85, 1.2)
    metal_level = rng.uniform(246, 255)
    return np.maximum(pixels, metal * metal_level).astype(np.float32)


def _finish(pixels: Array, rng: np.random.Generator) -> Image.Image:
    """Marker, blur (focal spot / scatter), quantum noise, 8-bit quantisation."""
    if rng.random() < 0.5:
        _draw_marker(pixels, rng)
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), mode="L")
    image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.4, 1.1)))
    noisy = np.asarray(image, dtype=np.float32) + rng.normal(0, rng.uniform(1.5, 6), pixels.shape)
    return Image.fromarray(np.clip(np.rint(noisy), 0, 255).astype(np.uint8), mode="L")


def _seeded(*key: int) -> np.random.Generator:
    return np.random.default_rng([int(k) for k in key])


def _site_box(shapes: list[_Shape], view: _View) -> tuple[int, int, int, int] | None:
    """Pixel box ``(x0, y0, x1, y1)`` around the abnormality's site in this view: the
    fracture's swelling, fragments and callus, or all the metal; None if out of view."""
    points = [view(s.points) for s in shapes if s.site]
    if not points:
        return None
    return _bbox(np.concatenate(points), view.width, view.height, 0)


def _render_view(
    study: _Study, view_index: int, seed: int, min_size: int, max_size: int
) -> tuple[Image.Image, tuple[int, int, int, int] | None]:
    """Draw one view of a study: same anatomy and defect for every view, new pose.

    Returns the image and the box of the abnormality's site (None for a normal study).
    """
    anat = _seeded(seed, _ANATOMY_STREAM, study.index)
    defect_rng = _seeded(seed, _DEFECT_STREAM, study.index)
    rng = _seeded(seed, _IMAGE_STREAM, study.first_image + view_index)
    mode_roll = rng.random()
    view = _draw_view(rng, min_size, max_size)
    scene = _DRAWERS[study.part](anat, rng)
    metal: list[_Shape] = []
    extra: list[_Shape] = []
    if study.defect == "fracture":
        extra = _fracture(scene, defect_rng)
    elif study.defect == "hardware":
        metal = [
            dataclasses.replace(s, site=True) for s in _hardware(scene, defect_rng, study.part)
        ]
    else:
        extra = _maybe_cast(scene, _seeded(seed, _CAST_STREAM, study.index))
    shapes = [b.shape() for b in scene.bones] + scene.blobs + extra
    bones = _rasterize_bones(shapes, view, rng.uniform(0.45, 0.62), rng.uniform(0.25, 0.4))
    tissue = _rasterize_tissue(shapes, view, scene.tissue)
    pixels = _expose(bones, tissue, _rasterize_metal(metal, view), rng)
    image = _finish(pixels, rng)
    box = _site_box(metal + extra, view) if study.defect else None
    if mode_roll < RGBA_RATE:
        return image.convert("RGBA"), box
    if mode_roll < RGBA_RATE + RGB_RATE:
        return image.convert("RGB"), box
    return image, box
