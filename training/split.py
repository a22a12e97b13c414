"""Patient-level train / validation / test split, stratified by body part and label.

A patient's views and studies are strongly correlated (same bones, same scanner, often the
same injury), so a patient in two splits leaks test answers into training. Every split
here is therefore made over patients, never images, with scikit-learn's
``StratifiedGroupKFold`` (groups = patients, classes = ``<body part>_<label>`` per image) so
each split keeps the dataset's mix of body parts and abnormal studies.

* ``random``: 10 folds, one is *test*; the rest in 5 folds, one is *validation*:
  72 / 18 / 10 of the patients and images.
* ``official``: MURA's own ``valid`` folder is *test* (so results compare with published
  MURA numbers) and *validation* is carved from ``train`` by patient (one fold of 5: 18/90).

After the fold split a small repair step moves single patients between splits when a rare
body part x label stratum ended up missing from one; if that is impossible the data is too
thin and :class:`~bonexr.errors.DataError` says which stratum and how many patients it has.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from bonexr.errors import ConfigError, DataError
from bonexr.labels import LABEL_NAMES
from training.config import SPLIT_MODES, check_choice
from training.dataset import normalize_part_column
from training.io import write_csv_atomic

SPLITS: tuple[str, ...] = ("train", "validation", "test")
DEFAULT_FRACTIONS: tuple[float, float, float] = (0.72, 0.18, 0.10)

#: Columns of a split CSV (``split_source`` is added when the index has it).
SPLIT_COLUMNS: tuple[str, ...] = (
    "path",
    "rel_path",
    "patient_id",
    "study_id",
    "body_part",
    "label",
    "split",
)
#: What a split file holds: no absolute ``path``, so it travels with a bundle and works
#: on any machine; :func:`read_split` rebuilds ``path`` from the dataset root.
SPLIT_FILE_COLUMNS: tuple[str, ...] = tuple(c for c in SPLIT_COLUMNS if c != "path")

#: How far the fractions realised with 1/k folds may stray from the requested ones.
_FRACTION_TOLERANCE = 0.02


# --------------------------------------------------------------------------- public API


def split_by_patient(
    index: pd.DataFrame,
    *,
    mode: str = "random",
    seed: int = 0,
    fractions: tuple[float, float, float] = DEFAULT_FRACTIONS,
) -> pd.DataFrame:
    """Return a copy of ``index`` with a ``split`` column (one of :data:`SPLITS`).

    No patient is in two splits; every split holds every body part with both labels; the
    result depends only on the rows and ``seed``, not their order. ``fractions`` are
    (train, validation, test) and are realised as one fold of ``round(1 / test)`` and one of
    ``round((train + validation) / validation)``; in ``official`` mode the test fraction is
    whatever MURA's ``valid`` holds.
    """
    check_choice("split mode", mode, SPLIT_MODES)
    frame = _prepared(index, need_source=mode == "official")
    seed = _check_seed(seed)
    k_test, k_val = _fold_counts(fractions)
    _check_both_labels(frame)
    if mode == "random":
        _check_strata(frame, minimum=len(SPLITS), where="the dataset", into=SPLITS)
        split, movable = _random_split(frame, k_test, k_val, seed), SPLITS
    else:
        split, movable = _official_split(frame, k_val, seed), ("train", "validation")
    split = _repair_coverage(frame, split, movable)
    out = index.copy()
    out["split"] = pd.Series(split, index=frame["_row"].to_numpy()).sort_index().to_numpy()
    return out


def assign_folds(index: pd.DataFrame, *, k: int, seed: int = 0) -> pd.Series:
    """Fold number (0..k-1) per row for k-fold cross-validation: by patient, stratified.

    Returned as an int Series aligned with ``index``; all rows of a patient share a fold.
    """
    if int(k) < 2:
        raise ConfigError(f"k-fold cross-validation needs k >= 2 (got {k})")
    frame = _prepared(index, need_source=False)
    folds_sorted = np.empty(len(frame), dtype=np.int64)
    for fold, held in enumerate(
        _folds(frame["_stratum"], frame["patient_id"], int(k), _check_seed(seed))
    ):
        folds_sorted[held] = fold
    folds = pd.Series(folds_sorted, index=frame["_row"].to_numpy()).sort_index().to_numpy()
    return pd.Series(folds, index=index.index, name="fold")


def write_split(split: pd.DataFrame, path: str | Path) -> None:
    """Write the split as CSV atomically (a crash never leaves half a split.csv behind).

    Image paths are written relative to the dataset root only (``rel_path``).
    """
    missing = [c for c in SPLIT_COLUMNS if c not in split.columns]
    if missing:
        raise DataError(f"cannot write split: missing column(s) {', '.join(missing)}")
    bad = ~split["split"].isin(SPLITS)
    if bad.any():
        raise DataError(f"cannot write split: unknown split value {split['split'][bad].iloc[0]!r}")
    columns = list(SPLIT_FILE_COLUMNS)
    columns += ["split_source"] if "split_source" in split.columns else []
    write_csv_atomic(split[columns], path)


def read_split(path: str | Path, root: str | Path) -> pd.DataFrame:
    """Read a split CSV written by :func:`write_split`, checking it can be trusted.

    ``path`` (absolute image paths) is rebuilt as ``root / rel_path``; an older split file
    that carries its own ``path`` column keeps it.

    Raises :class:`DataError` naming the file (and line) for a missing file, an unreadable
    or empty CSV, missing columns, an unknown split, label or body part, an empty path or
    patient id, a duplicated image, or a patient in two splits.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"split file {path} does not exist (create it with `bonexr split`)")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(f"split file {path} is not a readable CSV: {exc}") from exc
    missing = [c for c in SPLIT_FILE_COLUMNS if c not in frame.columns]
    if missing:
        raise DataError(f"split file {path} lacks column(s): {', '.join(missing)}")
    if "path" not in frame.columns:
        frame.insert(0, "path", [str(Path(root, rel)) for rel in frame["rel_path"]])
    if frame.empty:
        raise DataError(f"split file {path} has no rows")
    _check_values(path, frame, "split", frame["split"].isin(SPLITS), f"one of {SPLITS}")
    _check_values(path, frame, "label", frame["label"].isin(["0", "1"]), "0 or 1")
    for column in ("rel_path", "patient_id", "study_id"):
        _check_values(path, frame, column, frame[column].str.strip() != "", "not empty")
    frame["label"] = frame["label"].astype("int64")
    frame["body_part"] = _read_parts(path, frame["body_part"])
    duplicated = frame["path"].duplicated()
    if duplicated.any():
        line = int(duplicated.to_numpy().nonzero()[0][0]) + 2
        raise DataError(f"{path}, line {line}: image {frame['path'][duplicated].iloc[0]} repeats")
    splits_per_patient = frame.groupby("patient_id")["split"].nunique()
    leaked = splits_per_patient.index[splits_per_patient > 1]
    if len(leaked):
        raise DataError(
            f"split file {path} puts {len(leaked)} patient(s) in more than one split "
            f"(e.g. {leaked[0]}); recreate it with `bonexr split`"
        )
    return frame


def split_summary(split: pd.DataFrame) -> pd.DataFrame:
    """Images per split (rows) and (body part, normal/abnormal) (columns), plus totals.

    The ``all`` columns give images, studies and patients per split and the percentage of
    images and patients, so a 72/18/10 split can be checked at a glance.
    """
    parts = sorted(split["body_part"].unique())
    labels = split["label"].map(LABEL_NAMES).rename("label")
    counts = pd.crosstab(split["split"], [split["body_part"], labels])
    columns = pd.MultiIndex.from_product([parts, list(LABEL_NAMES.values())])
    counts = counts.reindex(index=list(SPLITS), columns=columns, fill_value=0)
    grouped = split.groupby("split")
    images = grouped.size().reindex(list(SPLITS), fill_value=0)
    patients = grouped["patient_id"].nunique().reindex(list(SPLITS), fill_value=0)
    counts[("all", "images")] = images
    if "study_id" in split.columns:
        counts[("all", "studies")] = (
            grouped["study_id"].nunique().reindex(list(SPLITS), fill_value=0)
        )
    counts[("all", "patients")] = patients
    counts[("all", "% images")] = (100 * images / max(images.sum(), 1)).round(1)
    counts[("all", "% patients")] = (100 * patients / max(patients.sum(), 1)).round(1)
    counts.index.name = "split"
    counts.columns.names = ["body_part", "label"]
    return counts


# --------------------------------------------------------------------------- preparation


def _prepared(index: pd.DataFrame, *, need_source: bool) -> pd.DataFrame:
    """Checked working copy in a canonical row order, with ``_row`` and ``_stratum`` columns.

    Sorting by patient (then study and path when present) makes the split independent of
    the order the rows came in.
    """
    if index is None or len(index) == 0:
        raise DataError("cannot split an empty index (no images)")
    required = ["patient_id", "body_part", "label"] + (["split_source"] if need_source else [])
    missing = [c for c in required if c not in index.columns]
    if missing:
        raise DataError(f"the index lacks column(s) {', '.join(missing)}")
    keys = [c for c in ("patient_id", "study_id", "rel_path", "path") if c in index.columns]
    frame = index[list(dict.fromkeys([*keys, *required]))].copy()
    frame["patient_id"] = frame["patient_id"].astype(str)
    frame["label"] = frame["label"].astype("int64")
    if not frame["label"].isin(list(LABEL_NAMES)).all():
        raise DataError(f"labels must be 0 or 1, found {sorted(frame['label'].unique())}")
    frame["_row"] = np.arange(len(frame))
    frame = frame.sort_values([*keys, "_row"], kind="stable").reset_index(drop=True)
    frame["_stratum"] = frame["body_part"].astype(str) + "_" + frame["label"].astype(str)
    return frame


def _check_seed(seed: int) -> int:
    if not 0 <= int(seed) < 2**32:
        raise ConfigError(f"seed must be between 0 and 2**32 - 1 (got {seed})")
    return int(seed)


def _fold_counts(fractions: tuple[float, float, float]) -> tuple[int, int]:
    """(k for the test fold, k for the validation fold of the rest) realising ``fractions``."""
    if len(fractions) != 3 or min(fractions) <= 0 or abs(sum(fractions) - 1) > 1e-6:
        raise ConfigError(
            f"split fractions must be three positive numbers summing to 1: {fractions}"
        )
    train, val, test = fractions
    k_test = round(1 / test)
    k_val = round((train + val) / val)
    realised_test = 1 / max(k_test, 1)
    realised_val = (1 - realised_test) / max(k_val, 1)
    if (
        min(k_test, k_val) < 2
        or abs(realised_test - test) > _FRACTION_TOLERANCE
        or abs(realised_val - val) > _FRACTION_TOLERANCE
    ):
        raise ConfigError(
            f"split fractions {fractions} cannot be made from whole folds "
            "(test = 1/k of all, validation = 1/k of the rest, e.g. 0.72/0.18/0.10)"
        )
    return k_test, k_val


def _label_name(stratum: str) -> tuple[str, str]:
    part, label = stratum.rsplit("_", 1)
    return part, LABEL_NAMES[int(label)]


def _check_both_labels(frame: pd.DataFrame) -> None:
    labels = frame.groupby("body_part")["label"].unique()
    for part, values in labels.items():
        if len(values) < 2:
            raise DataError(
                f"body part {part} has only {LABEL_NAMES[int(values[0])]} images "
                f"(label {int(values[0])}); a split needs normal and abnormal studies of every "
                "part (drop it with --parts or add data)"
            )


def _check_strata(
    frame: pd.DataFrame,
    *,
    minimum: int,
    where: str,
    into: tuple[str, ...],
    strata: list[str] | None = None,
) -> None:
    """Each body part x label needs ``minimum`` patients so every split can get one.

    ``strata`` lists the strata that must be present (default: those in ``frame``), so a
    stratum absent from a subset is reported with 0 patients.
    """
    patients = frame.groupby("_stratum")["patient_id"].nunique()
    patients = patients.reindex(sorted(strata or patients.index), fill_value=0)
    for stratum, n in patients.items():
        if n < minimum:
            part, label = _label_name(str(stratum))
            raise DataError(
                f"body part {part} has only {n} patient(s) with {label} studies in {where}; "
                f"at least {minimum} are needed to put one in each of {', '.join(into)}"
            )


# --------------------------------------------------------------------------- the split


def _folds(strata: pd.Series, groups: pd.Series, k: int, seed: int) -> list[np.ndarray]:
    """Held-out row positions of each of ``k`` stratified patient folds."""
    n_patients = groups.nunique()
    if n_patients < k:
        raise DataError(f"only {n_patients} patient(s); splitting by patient needs at least {k}")
    if (strata.value_counts() < k).all():
        # scikit-learn refuses when *every* class is smaller than k (tiny datasets).
        return _round_robin_folds(strata, groups, k, seed)
    cv = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        # "The least populated class has only N members": handled by _repair_coverage.
        warnings.simplefilter("ignore", UserWarning)
        return [held for _, held in cv.split(np.zeros(len(strata)), strata, groups)]


def _round_robin_folds(strata: pd.Series, groups: pd.Series, k: int, seed: int) -> list[np.ndarray]:
    """Folds for tiny data: patients shuffled, ordered by their main stratum, dealt out in turn."""
    rows = pd.DataFrame({"group": groups.to_numpy(), "stratum": strata.to_numpy()})
    main = rows.groupby("group")["stratum"].agg(lambda s: s.value_counts().index[0])
    order = np.random.default_rng(seed).permutation(len(main))
    shuffled = main.iloc[order].sort_values(kind="stable")
    fold_of = pd.Series(np.arange(len(shuffled)) % k, index=shuffled.index)
    fold = rows["group"].map(fold_of).to_numpy()
    return [np.flatnonzero(fold == i) for i in range(k)]


def _holdout(frame: pd.DataFrame, k: int, seed: int) -> np.ndarray:
    """Boolean mask of one fold of ``k``: the fold whose image count is nearest ``n / k``.

    Picking by size rather than always fold 0 keeps the realised fraction close to 1/k.
    """
    folds = _folds(frame["_stratum"], frame["patient_id"], k, seed)
    target = len(frame) / k
    chosen = min(range(k), key=lambda i: (abs(len(folds[i]) - target), i))
    mask = np.zeros(len(frame), dtype=bool)
    mask[folds[chosen]] = True
    return mask


def _random_split(frame: pd.DataFrame, k_test: int, k_val: int, seed: int) -> np.ndarray:
    split = np.full(len(frame), "train", dtype=object)
    test = _holdout(frame, k_test, seed)
    split[test] = "test"
    rest = np.flatnonzero(~test)
    val = _holdout(frame.iloc[rest], k_val, seed)
    split[rest[val]] = "validation"
    return split


def _official_split(frame: pd.DataFrame, k_val: int, seed: int) -> np.ndarray:
    """MURA valid -> test; validation carved by patient from MURA train."""
    is_valid = (frame["split_source"] == "valid").to_numpy()
    if not is_valid.any():
        raise DataError(
            "--mode official needs MURA's valid/ images as the test split, but the index has "
            "none (use --mode random)"
        )
    shared = set(frame.loc[is_valid, "patient_id"]) & set(frame.loc[~is_valid, "patient_id"])
    if shared:
        raise DataError(
            f"--mode official: {len(shared)} patient(s) have images in both train/ and valid/ "
            f"(e.g. {sorted(shared)[0]}), so MURA's partition would leak (use --mode random)"
        )
    train_part = frame[~is_valid]
    if train_part.empty:
        raise DataError("--mode official needs MURA's train/ images, but the index has none")
    _check_strata(
        train_part,
        minimum=2,
        where="MURA train",
        into=("train", "validation"),
        strata=sorted(set(frame["_stratum"])),
    )
    missing = set(frame["_stratum"]) - set(frame.loc[is_valid, "_stratum"])
    if missing:
        part, label = _label_name(sorted(missing)[0])
        raise DataError(
            f"body part {part} has no {label} studies in MURA valid, so the official test "
            "split would lack them (use --mode random)"
        )
    split = np.full(len(frame), "test", dtype=object)
    rows = np.flatnonzero(~is_valid)
    split[rows] = "train"
    split[rows[_holdout(train_part, k_val, seed)]] = "validation"
    return split


def _repair_coverage(
    frame: pd.DataFrame, split: np.ndarray, movable: tuple[str, ...]
) -> np.ndarray:
    """Make every split hold every stratum by moving whole patients, or raise DataError.

    A rare stratum (say 4 abnormal humerus patients) can miss the 1-in-10 test fold. A
    patient is only taken from a split that keeps another patient of every stratum the mover
    has there, so a move never breaks coverage elsewhere; the smallest such patient moves.
    """
    split = split.copy()
    patients = frame["patient_id"].to_numpy()
    strata = frame["_stratum"].to_numpy()
    sizes = frame.groupby("patient_id").size()
    for stratum in sorted(set(strata)):
        for target in movable:
            if np.any((split == target) & (strata == stratum)):
                continue
            mover = _mover(frame, split, stratum, target, movable, sizes)
            if mover is None:
                part, label = _label_name(str(stratum))
                n = len(set(patients[strata == stratum]))
                raise DataError(
                    f"cannot give the {target} split a patient with {label} {part} studies: "
                    f"that body part has only {n} such patient(s), too few to spread over "
                    f"{', '.join(movable)} (add data or drop the part with --parts)"
                )
            split[patients == mover] = target
    return split


def _mover(
    frame: pd.DataFrame,
    split: np.ndarray,
    stratum: str,
    target: str,
    movable: tuple[str, ...],
    sizes: pd.Series,
) -> str | None:
    """The smallest patient of ``stratum`` whose move to ``target`` empties no stratum."""
    rows = pd.DataFrame(
        {"patient_id": frame["patient_id"], "stratum": frame["_stratum"], "split": split}
    )
    rows = rows[rows["split"].isin(movable) & (rows["split"] != target)]
    holders = rows.groupby(["split", "stratum"])["patient_id"].nunique()
    candidates = sorted(
        set(rows.loc[rows["stratum"] == stratum, "patient_id"]),
        key=lambda p: (int(sizes[p]), p),
    )
    for patient in candidates:
        own = rows[rows["patient_id"] == patient]
        donor = own["split"].iloc[0]
        if all(holders[(donor, s)] >= 2 for s in own["stratum"].unique()):
            return patient
    return None


def _check_values(path: Path, frame: pd.DataFrame, column: str, ok: pd.Series, want: str) -> None:
    if not ok.all():
        first = int((~ok).to_numpy().nonzero()[0][0])
        raise DataError(
            f"{path}, line {first + 2}: {column} {frame[column].iloc[first]!r} is invalid "
            f"(expected {want})"
        )


def _read_parts(path: Path, parts: pd.Series) -> pd.Series:
    lines = pd.Series(range(2, len(parts) + 2), index=parts.index)  # after the header line
    return normalize_part_column(path, parts, lines)
