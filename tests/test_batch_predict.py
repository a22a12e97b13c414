"""``bonexr predict``: the service's answers, in process, over files, folders and MURA trees;
and DICOM files that render to a PNG's pixels get that PNG's prediction, through both."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom.uid import JPEG2000Lossless, RLELossless

from bonexr.cli import main
from harness.service_support import make_settings, running
from tests.dicom_support import dicom_file

TOLERANCE = 1e-4


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def radiograph(seed: int = 0) -> np.ndarray:
    """8-bit pixels spanning 0..255 (so a stretch over their own range is the identity)."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(20, 230, (72, 96), dtype=np.uint8)
    pixels[:8] = 0
    pixels[-8:] = 255
    return pixels


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels, "L").save(buffer, format="PNG")
    return buffer.getvalue()


def dicom_variants(pixels: np.ndarray) -> dict[str, bytes]:
    """DICOM files a viewer renders as exactly ``pixels``."""
    codes12 = pixels.astype(np.uint16) * 16  # 0..4080: the stretch maps it back exactly
    return {
        "mono2-8bit.dcm": dicom_file(pixels),
        "mono1-8bit.dcm": dicom_file(255 - pixels, photometric="MONOCHROME1"),
        "mono2-12bit.dcm": dicom_file(codes12, bits_stored=12),
        "mono1-12bit.dcm": dicom_file(4080 - codes12, bits_stored=12, photometric="MONOCHROME1"),
        "mono2-16bit.dcm": dicom_file(pixels.astype(np.uint16) * 257),
        # stored codes offset by the modality LUT, then a window exactly over the image
        "rescale-window.dcm": dicom_file(
            pixels.astype(np.uint16),
            RescaleSlope=1,
            RescaleIntercept=-1024,
            WindowCenter=-1024 + 127.5,
            WindowWidth=255,
            VOILUTFunction="LINEAR_EXACT",
        ),
        "rle-12bit.dcm": dicom_file(codes12, bits_stored=12, compress=RLELossless),
        "j2k-12bit.dcm": dicom_file(codes12, bits_stored=12, compress=JPEG2000Lossless),
    }


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("batch") / "images"
    folder.mkdir()
    pixels = radiograph()
    (folder / "reference.png").write_bytes(png(pixels))
    for name, data in dicom_variants(pixels).items():
        (folder / name).write_bytes(data)
    (folder / "other.png").write_bytes(png(radiograph(seed=1)))
    truncated = png(radiograph(seed=2))
    (folder / "truncated.png").write_bytes(truncated[: len(truncated) // 2])
    (folder / "notes.txt").write_text("not an image, not an image name: skipped")
    return folder


def run_predict(untrained_bundle: Path, *args: object) -> int:
    return main(
        ["predict", *map(str, args), "--models-dir", str(untrained_bundle.parent), "--quiet"]
    )


def test_dicom_variants_get_the_png_prediction_through_cli_and_service(
    untrained_bundle: Path, image_folder: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    assert run_predict(untrained_bundle, image_folder, "--out", out) == 0
    rows = {Path(r["path"]).name: r for r in read_csv(out / "images.csv")}
    errors = read_csv(out / "errors.csv")
    assert [Path(e["path"]).name for e in errors] == ["truncated.png"]
    assert "truncated" in errors[0]["reason"] or "corrupt" in errors[0]["reason"]
    assert not (out / "studies.csv").exists()  # plain folder: no studies unless asked
    assert set(rows) == {"reference.png", "other.png", *dicom_variants(radiograph())}
    # identical pixels give identical outputs (all six decimals); other pixels do not (the
    # random-init model's outputs stay near 0.5 but move with the image)
    reference = rows["reference.png"]
    assert rows["other.png"]["abnormality_probability"] != reference["abnormality_probability"]
    for name in dicom_variants(radiograph()):
        assert rows[name]["abnormality_probability"] == reference["abnormality_probability"], name
        assert rows[name]["p_Elbow"] == reference["p_Elbow"], name
    # the service, for the same files: each DICOM is stored as the very PNG pixels
    with running(make_settings(untrained_bundle, tmp_path)) as (client, _):
        stored_names = {}
        for name, row in rows.items():
            data = (image_folder / name).read_bytes()
            stored = client.post("/upload", files={"file": (name, data, "image/png")}).json()
            stored_names[name] = stored["filename"]
            answer = client.post("/predict", json={"filename": stored["filename"]}).json()
            assert answer["abnormality_probability"] == pytest.approx(
                float(row["abnormality_probability"]), abs=TOLERANCE
            )
            assert answer["bone_type"] == row["bone_type"]
            assert answer["result"] == row["result"]
        for name in dicom_variants(radiograph()):
            assert stored_names[name] == stored_names["reference.png"], name


def test_mura_tree_gives_images_and_studies_matching_the_service(
    untrained_bundle: Path, synthetic_small: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    assert run_predict(untrained_bundle, synthetic_small, "--out", out) == 0
    images = read_csv(out / "images.csv")
    studies = read_csv(out / "studies.csv")
    on_disk = sorted(synthetic_small.rglob("*.png"))
    assert len(images) == len(on_disk)
    assert len({r["path"] for r in images}) == len(images)
    assert len(studies) == len({p.parent for p in on_disk})
    with running(make_settings(untrained_bundle, tmp_path)) as (client, _):
        for study in studies[:5]:
            views = sorted(Path(study["study"]).glob("*.png"))
            names = []
            for view in views:
                files = {"file": ("x.png", view.read_bytes(), "image/png")}
                names.append(client.post("/upload", files=files).json()["filename"])
            answer = client.post("/predict/study", json={"filenames": names}).json()
            assert answer["bone_type"] == study["bone_type"]
            assert answer["abnormality_probability"] == pytest.approx(
                float(study["abnormality_probability"]), abs=TOLERANCE
            )
            assert int(study["views"]) == len(views)


def test_one_split_of_a_mura_tree_is_grouped_into_studies_as_documented(
    untrained_bundle: Path,
    synthetic_small: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """docs/api.md shows ``bonexr predict /data/MURA-v1.1/valid``; it found 0 studies."""
    split = synthetic_small / "valid"
    out = tmp_path / "out"
    assert run_predict(untrained_bundle, split, "--out", out) == 0
    studies = read_csv(out / "studies.csv")
    assert len(studies) == len({p.parent for p in split.rglob("*.png")}) > 0
    said = capsys.readouterr().out
    assert f"{len(studies)} studies:" in said and "answered" in said and "refused" in said


def test_interrupted_run_resumes_without_duplicates(
    untrained_bundle: Path, image_folder: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    assert run_predict(untrained_bundle, image_folder, "--out", out, "--chunk-size", "3") == 0
    complete = read_csv(out / "images.csv")
    # what an interruption leaves: the table as of an earlier chunk (written atomically)
    text = (out / "images.csv").read_text().splitlines(keepends=True)
    (out / "images.csv").write_text("".join(text[:4]))
    (out / "errors.csv").write_text("path,reason\n")
    assert run_predict(untrained_bundle, image_folder, "--out", out, "--resume") == 0
    resumed = read_csv(out / "images.csv")
    assert sorted(r["path"] for r in resumed) == sorted(r["path"] for r in complete)
    assert {r["path"]: r for r in resumed} == {r["path"]: r for r in complete}
    assert len(read_csv(out / "errors.csv")) == 1


def test_bad_batch_inputs_are_one_error_line(
    untrained_bundle: Path, image_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert run_predict(untrained_bundle, empty, "--out", tmp_path / "o1") == 2
    assert "error: no images found" in capsys.readouterr().err
    assert run_predict(untrained_bundle, image_folder / "notes.txt", "--out", tmp_path / "o2") == 2
    assert "is not a PNG, JPEG, WebP or DICOM file" in capsys.readouterr().err
    assert run_predict(untrained_bundle, tmp_path / "missing", "--out", tmp_path / "o3") == 2
    assert "does not exist" in capsys.readouterr().err
    out = tmp_path / "o4"
    assert run_predict(untrained_bundle, image_folder, "--out", out) == 0
    assert run_predict(untrained_bundle, image_folder, "--out", out) == 2
    assert "pass --resume" in capsys.readouterr().err


def test_only_regular_files_within_the_size_limit_are_read(
    untrained_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A FIFO named like an image (a hang before), a link to /dev/zero (read until
    MemoryError before) and a file over BONEXR_MAX_UPLOAD_BYTES go to errors.csv."""
    import os

    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "good.png").write_bytes(png(radiograph()))
    os.mkfifo(folder / "pipe.png")
    (folder / "zero.png").symlink_to("/dev/zero")
    big = png(np.random.default_rng(0).integers(0, 255, (300, 300), dtype=np.uint8))
    (folder / "big.png").write_bytes(big)
    monkeypatch.setenv("BONEXR_MAX_UPLOAD_BYTES", str(len(big) - 1))
    out = tmp_path / "out"
    assert run_predict(untrained_bundle, folder, "--out", out) == 0
    assert [Path(r["path"]).name for r in read_csv(out / "images.csv")] == ["good.png"]
    reasons = {Path(e["path"]).name: e["reason"] for e in read_csv(out / "errors.csv")}
    assert set(reasons) == {"pipe.png", "zero.png", "big.png"}
    assert "not a regular file" in reasons["pipe.png"]
    assert "not a regular file" in reasons["zero.png"]
    assert "larger than the limit" in reasons["big.png"]


def test_a_non_utf8_file_name_is_a_row_not_a_traceback(
    untrained_bundle: Path, tmp_path: Path
) -> None:
    import os

    folder = tmp_path / "in"
    folder.mkdir()
    raw = os.fsencode(folder) + b"/caf\xe9.png"
    with open(raw, "wb") as handle:
        handle.write(png(radiograph()))
    out = tmp_path / "out"
    assert run_predict(untrained_bundle, folder, "--out", out) == 0
    rows = read_csv(out / "images.csv")
    assert [Path(r["path"]).name for r in rows] == ["caf\\xe9.png"]
    assert rows[0]["result"] in ("abnormal", "normal")


def test_cells_a_spreadsheet_would_run_are_escaped(
    untrained_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("=HYPERLINK(1).png", "+1.png", "-2.png", "@SUM.png"):
        (folder / name).write_bytes(png(radiograph()))
    (folder / "=broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    out = tmp_path / "out"
    monkeypatch.chdir(folder)  # relative paths: the path cells start with the file names
    assert run_predict(untrained_bundle, ".", "--out", out) == 0
    for table in ("images.csv", "errors.csv"):
        for row in read_csv(out / table):
            for value in row.values():
                assert not value.startswith(("=", "+", "-", "@")), (table, value)
    names = sorted(r["path"] for r in read_csv(out / "images.csv"))
    assert names == ["'+1.png", "'-2.png", "'=HYPERLINK(1).png", "'@SUM.png"]
    assert [r["path"] for r in read_csv(out / "errors.csv")] == ["'=broken.png"]
    # and a resumed run reads its own escaping back: nothing is scored twice
    assert run_predict(untrained_bundle, ".", "--out", out, "--resume") == 0
    assert len(read_csv(out / "images.csv")) == 4
    assert len(read_csv(out / "errors.csv")) == 1


def test_resume_matches_files_by_resolved_path(
    untrained_bundle: Path, image_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    monkeypatch.chdir(image_folder.parent)
    assert run_predict(untrained_bundle, Path(image_folder.name), "--out", out) == 0
    first = read_csv(out / "images.csv")
    assert run_predict(untrained_bundle, image_folder.resolve(), "--out", out, "--resume") == 0
    assert len(read_csv(out / "images.csv")) == len(first)
