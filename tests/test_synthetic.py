"""The synthetic MURA-v1.1 generator: exact layout, determinism, safety and learnability.

Every other test and the demo train on this data, so it must look to the indexer exactly
like the real dataset, and its labels must be recoverable from the pixels alone.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import training.synthetic as synthetic
from bonexr.errors import ConfigError, DataError
from bonexr.imaging import preprocess_file
from bonexr.labels import DEFAULT_BODY_PARTS, MURA_BODY_PARTS
from training.synthetic import SyntheticSummary, generate_synthetic_mura

IMAGE_RE = re.compile(
    r"^MURA-v1\.1/(train|valid)/XR_([A-Z]+)/patient(\d{5})/study(\d+)_(positive|negative)/"
    r"image(\d+)\.png$"
)
STUDY_RE = re.compile(
    r"^MURA-v1\.1/(train|valid)/XR_([A-Z]+)/patient(\d{5})/study(\d+)_(positive|negative)/,([01])$"
)
SUFFIX_LABEL = {"positive": 1, "negative": 0}


def _lines(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    assert text.endswith("\n") and "\r" not in text
    return text.splitlines()


def _on_disk(root: Path, rel: str) -> Path:
    """CSV paths start with ``MURA-v1.1/`` whatever the local folder is called."""
    return root / rel.split("/", 1)[1]


def _images_per_key(root: Path) -> Counter:
    """Count PNGs on disk per (split, part, label), independently of the CSVs."""
    counts: Counter = Counter()
    for png in root.glob("*/XR_*/patient*/study*/*.png"):
        study = png.parent.name
        counts[(png.parts[-5], png.parts[-4][3:], SUFFIX_LABEL[study.split("_")[1]])] += 1
    return counts


@pytest.fixture(scope="module")
def small_set(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, SyntheticSummary]:
    root = tmp_path_factory.mktemp("synth") / "my-local-name"
    summary = generate_synthetic_mura(root, patients_per_part=10, seed=5, progress=False)
    return root, summary


# --------------------------------------------------------------------------------------
# Layout and CSVs
# --------------------------------------------------------------------------------------


def test_top_level_layout(small_set: tuple[Path, SyntheticSummary]) -> None:
    root, summary = small_set
    assert summary.root == root
    assert sorted(p.name for p in root.iterdir()) == [
        "defect_boxes.csv",  # ours, for scoring heat maps; MURA tools ignore it
        "train",
        "train_image_paths.csv",
        "train_labeled_studies.csv",
        "valid",
        "valid_image_paths.csv",
        "valid_labeled_studies.csv",
    ]
    for split in ("train", "valid"):
        assert sorted(p.name for p in (root / split).iterdir()) == [
            f"XR_{part}" for part in sorted(DEFAULT_BODY_PARTS)
        ]
    assert not list(root.parent.glob(".*partial*")), "staging folder left behind"


def test_image_paths_csv_matches_files(small_set: tuple[Path, SyntheticSummary]) -> None:
    root, _ = small_set
    listed: set[str] = set()
    for split in ("train", "valid"):
        lines = _lines(root / f"{split}_image_paths.csv")
        assert lines and lines[0].startswith("MURA-v1.1/"), "no header, MURA prefix"
        for line in lines:
            match = IMAGE_RE.match(line)
            assert match, f"malformed image path {line!r}"
            assert match.group(1) == split
            assert _on_disk(root, line).is_file(), line
        listed.update(lines)
        assert len(lines) == len(set(lines))
    on_disk = {f"MURA-v1.1/{p.relative_to(root).as_posix()}" for p in root.rglob("*.png")}
    assert listed == on_disk


def test_labeled_studies_csv_matches_folders(small_set: tuple[Path, SyntheticSummary]) -> None:
    root, _ = small_set
    images = {
        line for split in ("train", "valid") for line in _lines(root / f"{split}_image_paths.csv")
    }
    for split in ("train", "valid"):
        lines = _lines(root / f"{split}_labeled_studies.csv")
        assert lines[0].startswith("MURA-v1.1/")
        folders = {
            f"MURA-v1.1/{p.relative_to(root).as_posix()}/"
            for p in (root / split).glob("XR_*/patient*/study*")
        }
        assert {line.split(",")[0] for line in lines} == folders
        for line in lines:
            match = STUDY_RE.match(line)
            assert match, f"malformed study line {line!r}"
            assert int(match.group(6)) == SUFFIX_LABEL[match.group(5)]
            study_path = line.split(",")[0]
            views = sorted(
                int(IMAGE_RE.match(i).group(6)) for i in images if i.startswith(study_path)
            )
            assert views == list(range(1, len(views) + 1)) and 1 <= len(views) <= 4


def test_patients_unique_and_studies_numbered(small_set: tuple[Path, SyntheticSummary]) -> None:
    root, summary = small_set
    owner: dict[int, set[tuple[str, str]]] = defaultdict(set)
    studies: dict[int, list[int]] = defaultdict(list)
    for split in ("train", "valid"):
        for line in _lines(root / f"{split}_labeled_studies.csv"):
            match = STUDY_RE.match(line)
            patient = int(match.group(3))
            owner[patient].add((match.group(1), match.group(2)))
            studies[patient].append(int(match.group(4)))
    assert all(len(keys) == 1 for keys in owner.values()), "patient id reused"
    for numbers in studies.values():
        assert sorted(numbers) == list(range(1, len(numbers) + 1)) and len(numbers) <= 3
    train_ids = [p for p, keys in owner.items() if next(iter(keys))[0] == "train"]
    valid_ids = [p for p, keys in owner.items() if next(iter(keys))[0] == "valid"]
    assert max(train_ids) < min(valid_ids), "valid patients come after train (as in MURA)"
    assert len(owner) == summary.n_patients == 10 * len(DEFAULT_BODY_PARTS)
    assert len(valid_ids) == 2 * len(DEFAULT_BODY_PARTS)  # valid_fraction 0.2


def test_summary_counts_match_disk(small_set: tuple[Path, SyntheticSummary]) -> None:
    root, summary = small_set
    assert dict(_images_per_key(root)) == summary.counts
    assert summary.n_images == sum(summary.counts.values()) == len(list(root.rglob("*.png")))
    n_studies = sum(len(_lines(root / f"{s}_labeled_studies.csv")) for s in ("train", "valid"))
    assert summary.n_studies == n_studies == sum(summary.study_counts.values())
    assert summary.seconds > 0
    text = summary.describe()
    assert "MURA-v1.1" in text and f"{summary.n_images:,} images" in text
    for part in DEFAULT_BODY_PARTS:
        assert part in text


def test_both_labels_in_every_split_and_part(small_set: tuple[Path, SyntheticSummary]) -> None:
    _, summary = small_set
    for split in ("train", "valid"):
        for part in DEFAULT_BODY_PARTS:
            assert summary.counts[(split, part, 0)] > 0 and summary.counts[(split, part, 1)] > 0


@pytest.mark.parametrize("patients_per_part", [2, 3, 4])
def test_tiny_sets_still_have_both_labels(tmp_path: Path, patients_per_part: int) -> None:
    for seed in range(3):
        summary = generate_synthetic_mura(
            tmp_path / f"s{seed}",
            patients_per_part=patients_per_part,
            body_parts=MURA_BODY_PARTS,
            seed=seed,
            progress=False,
            max_size=160,
        )
        for split in ("train", "valid"):
            for part in MURA_BODY_PARTS:
                for label in (0, 1):
                    assert summary.study_counts.get((split, part, label), 0) > 0, (
                        split,
                        part,
                        label,
                        seed,
                    )


def test_png_modes_and_sizes(small_set: tuple[Path, SyntheticSummary]) -> None:
    root, _ = small_set
    modes: Counter = Counter()
    sizes = set()
    for png in sorted(root.rglob("*.png")):
        with Image.open(png) as image:
            assert image.format == "PNG"
            modes[image.mode] += 1
            sizes.add(image.size)
            assert all(128 <= side <= 320 for side in image.size)
            pixels = np.asarray(image)
            if image.mode in ("RGB", "RGBA"):  # colour containers, gray content
                assert (pixels[..., 0] == pixels[..., 1]).all()
                assert (pixels[..., 1] == pixels[..., 2]).all()
            if image.mode == "RGBA":
                assert (pixels[..., 3] == 255).all()
            gray = pixels if pixels.ndim == 2 else pixels[..., 0]
            assert gray.dtype == np.uint8 and gray.std() > 10, "blank image"
    assert set(modes) == {"L", "RGB", "RGBA"}
    assert modes["L"] > 0.7 * sum(modes.values())
    assert len(sizes) > 20
    ratios = [w / h for w, h in sizes]
    assert min(ratios) < 0.85 and max(ratios) > 1.15


def test_size_range_is_respected(tmp_path: Path) -> None:
    generate_synthetic_mura(
        tmp_path / "d", patients_per_part=2, seed=1, min_size=64, max_size=96, progress=False
    )
    for png in (tmp_path / "d").rglob("*.png"):
        with Image.open(png) as image:
            assert all(64 <= side <= 96 for side in image.size)


def test_valid_fraction_zero_writes_empty_valid_csvs(tmp_path: Path) -> None:
    summary = generate_synthetic_mura(
        tmp_path / "d", patients_per_part=3, body_parts="hand", valid_fraction=0.0, progress=False
    )
    assert (tmp_path / "d" / "valid_image_paths.csv").read_text() == ""
    assert (tmp_path / "d" / "valid_labeled_studies.csv").read_text() == ""
    assert {split for split, _, _ in summary.counts} == {"train"}


# --------------------------------------------------------------------------------------
# Determinism
# --------------------------------------------------------------------------------------


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_same_seed_gives_identical_bytes(tmp_path: Path) -> None:
    kwargs = dict(patients_per_part=3, body_parts=("ELBOW", "WRIST"), progress=False)
    generate_synthetic_mura(tmp_path / "a", seed=7, **kwargs)
    generate_synthetic_mura(tmp_path / "b", seed=7, **kwargs)
    generate_synthetic_mura(tmp_path / "c", seed=8, **kwargs)
    a, b, c = (_tree_bytes(tmp_path / n) for n in "abc")
    assert a == b
    shared = set(a) & set(c)
    assert a != c
    pngs = [k for k in shared if k.endswith(".png")]
    assert sum(a[k] != c[k] for k in pngs) == len(pngs), "a new seed must redraw every image"


def test_images_do_not_depend_on_drawing_order(small_set: tuple[Path, SyntheticSummary]) -> None:
    """Each image is seeded from (seed, index), so re-drawing any subset in any order matches."""
    root, _ = small_set
    plan = synthetic._plan_dataset(DEFAULT_BODY_PARTS, 10, 5, 0.2)
    picks = [(study, view) for study in plan[::7] for view in range(study.n_views)][::-1]
    for study, view in picks:
        redrawn, _box = synthetic._render_view(study, view, 5, 128, 320)
        with Image.open(root / study.rel_dir / f"image{view + 1}.png") as saved:
            assert saved.mode == redrawn.mode
            np.testing.assert_array_equal(np.asarray(saved), np.asarray(redrawn))


# --------------------------------------------------------------------------------------
# Safety and argument checks
# --------------------------------------------------------------------------------------


def test_refuses_non_empty_folder(tmp_path: Path) -> None:
    root = tmp_path / "MURA-v1.1"
    root.mkdir()
    (root / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="not empty"):
        generate_synthetic_mura(root, patients_per_part=2, progress=False)
    assert [p.name for p in root.iterdir()] == ["notes.txt"]
    assert (root / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["MURA-v1.1"]


def test_refuses_a_file(tmp_path: Path) -> None:
    target = tmp_path / "dataset"
    target.write_text("x")
    with pytest.raises(DataError, match="not a folder"):
        generate_synthetic_mura(target, patients_per_part=2, progress=False)


def test_fills_an_existing_empty_folder(tmp_path: Path) -> None:
    root = tmp_path / "empty"
    root.mkdir()
    summary = generate_synthetic_mura(root, patients_per_part=2, body_parts="finger")
    assert summary.n_images > 0 and (root / "train_image_paths.csv").is_file()


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"body_parts": ("ELBOW", "KNEE")}, ConfigError),
        ({"body_parts": ()}, ConfigError),
        ({"patients_per_part": 1}, DataError),
        ({"valid_fraction": 1.0}, ConfigError),
        ({"valid_fraction": -0.1}, ConfigError),
        ({"min_size": 200, "max_size": 100}, ConfigError),
        ({"min_size": 16}, ConfigError),
    ],
)
def test_bad_arguments_fail_before_writing(tmp_path: Path, kwargs: dict, error: type) -> None:
    arguments = {"patients_per_part": 2, "progress": False, **kwargs}
    with pytest.raises(error):
        generate_synthetic_mura(tmp_path / "d", **arguments)
    assert not list(tmp_path.iterdir())


def test_interrupted_run_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = synthetic._render_view
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 5:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(synthetic, "_render_view", flaky)
    with pytest.raises(KeyboardInterrupt):
        generate_synthetic_mura(tmp_path / "d", patients_per_part=4, progress=False)
    assert not list(tmp_path.iterdir()), "no half dataset and no staging folder"


def test_all_seven_body_parts_generate(tmp_path: Path) -> None:
    root = tmp_path / "all"
    summary = generate_synthetic_mura(
        root, patients_per_part=2, body_parts=[p.lower() for p in MURA_BODY_PARTS], progress=False
    )
    assert summary.body_parts == MURA_BODY_PARTS
    for split in ("train", "valid"):
        assert sorted(p.name for p in (root / split).iterdir()) == [
            f"XR_{p}" for p in MURA_BODY_PARTS
        ]
    assert {part for _, part, _ in summary.counts} == set(MURA_BODY_PARTS)


# --------------------------------------------------------------------------------------
# Learnability: labels must be recoverable from pixels by a plain linear model
# --------------------------------------------------------------------------------------

_QUANTILES = (5, 25, 50, 75, 90, 95, 98, 99, 99.5, 99.8, 100)


def _load(root: Path, split: str, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Letterboxed pixels through the project's own preprocessing, plus part and label."""
    lines = _lines(root / f"{split}_image_paths.csv")
    pixels = np.stack([preprocess_file(_on_disk(root, line), size) for line in lines])
    parts = np.array([IMAGE_RE.match(line).group(2) for line in lines])
    labels = np.array([SUFFIX_LABEL[IMAGE_RE.match(line).group(5)] for line in lines])
    return pixels.astype(np.float32) / 255.0, parts, labels


def _gradient(pixels: np.ndarray) -> np.ndarray:
    gy, gx = np.gradient(pixels, axis=(1, 2))
    return np.hypot(gx, gy)


def _pixel_features(pixels: np.ndarray) -> np.ndarray:
    """Raw pixels and their gradient magnitudes: enough to tell anatomies apart."""
    n = len(pixels)
    return np.concatenate([pixels.reshape(n, -1), _gradient(pixels).reshape(n, -1)], axis=1)


def _global_features(pixels: np.ndarray) -> np.ndarray:
    """Position-free summaries: quantiles of intensity, gradient and local contrast.

    A defect sits anywhere, so a linear model on raw pixel positions cannot see it; these
    image-wide statistics can (metal is brighter than any bone, breaks and casts add edges).
    """
    padded = np.pad(pixels, ((0, 0), (1, 1), (1, 1)), mode="edge")
    h, w = pixels.shape[1:]
    local_mean = sum(padded[:, i : i + h, j : j + w] for i in range(3) for j in range(3)) / 9
    contrast = pixels - local_mean
    maps = (pixels, _gradient(pixels), contrast, -contrast)
    flat = [m.reshape(len(pixels), -1) for m in maps]
    return np.concatenate([np.percentile(f, _QUANTILES, axis=1).T for f in flat], axis=1)


def _fit(features: np.ndarray, targets: np.ndarray, c: float):
    model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=5000))
    return model.fit(features, targets)


def test_both_tasks_are_learnable_by_a_linear_model(tmp_path: Path) -> None:
    root = tmp_path / "learn"
    generate_synthetic_mura(root, patients_per_part=40, seed=0, valid_fraction=0.3, progress=False)
    train32, part_train, _ = _load(root, "train", 32)
    valid32, part_valid, _ = _load(root, "valid", 32)
    router = _fit(_pixel_features(train32), part_train, c=0.05)
    accuracy = float((router.predict(_pixel_features(valid32)) == part_valid).mean())

    train64, _, y_train = _load(root, "train", 64)
    valid64, _, y_valid = _load(root, "valid", 64)
    detector = _fit(_global_features(train64), y_train, c=0.1)
    auroc = roc_auc_score(y_valid, detector.predict_proba(_global_features(valid64))[:, 1])

    print(
        f"\nlearnability: {len(y_train)} train / {len(y_valid)} valid images; "
        f"body-part accuracy {accuracy:.3f} (chance 0.33); abnormality AUROC {auroc:.3f}"
    )
    # Measured over data seeds 0-4 (this test uses seed 0; fitting is deterministic, so a
    # rerun repeats its figures exactly): body-part accuracy 0.920-0.974, abnormality AUROC
    # 0.790-0.866. Bounds sit below the worst seed by ~0.1.
    assert accuracy >= 0.8
    assert auroc >= 0.7
