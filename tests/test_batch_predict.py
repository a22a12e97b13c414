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
from tests.dicom_support import dicom_file
from tests.service_support import make_settings, running

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
