"""Bundle format: verification catches tampering; publishing is atomic and refuses overwrites."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from bonexr.bundle import (
    MANIFEST_NAME,
    Manifest,
    content_version,
    field_hashes,
    find_bundle,
    read_manifest,
    sha256_file,
    verify_bundle,
    verify_files,
)
from bonexr.cli import main
from bonexr.errors import BundleError
from bonexr.imaging import PREPROCESSING_ID
from harness.bundles import make_untrained_bundle


def _copy(bundle: Path, tmp_path: Path) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(bundle, target)
    return target


def test_manifest_describes_everything(untrained_bundle: Path) -> None:
    manifest = verify_bundle(untrained_bundle)
    assert manifest.body_parts == ["Elbow", "Hand", "Shoulder"]
    assert manifest.router.classes == manifest.body_parts
    assert manifest.input.size == 64 and manifest.input.preprocessing == PREPROCESSING_ID
    assert manifest.synthetic and "not for clinical use" in manifest.intended_use.lower()
    assert set(manifest.files) >= {"router.keras", "router.onnx", "hand.keras", "hand.onnx"}
    assert len(manifest.version) == 12
    assert manifest.libraries["onnxruntime"] and manifest.libraries["keras"]
    parity = manifest.training["onnx_parity_max_abs_diff"]
    assert max(parity.values()) < 1e-4


def test_tampered_file_fails_sha256(untrained_bundle: Path, tmp_path: Path) -> None:
    bundle = _copy(untrained_bundle, tmp_path)
    onnx = bundle / "hand.onnx"
    data = bytearray(onnx.read_bytes())
    data[-10] ^= 0xFF
    onnx.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"sha256 mismatch for hand\.onnx"):
        verify_bundle(bundle)


def test_missing_file_and_bad_manifest(untrained_bundle: Path, tmp_path: Path) -> None:
    bundle = _copy(untrained_bundle, tmp_path)
    (bundle / "router.onnx").unlink()
    with pytest.raises(BundleError, match=r"router\.onnx.*missing"):
        verify_bundle(bundle)
    (bundle / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(BundleError, match="cannot read"):
        read_manifest(bundle)
    raw = json.loads((untrained_bundle / MANIFEST_NAME).read_text()) | {"schema_version": 99}
    (bundle / MANIFEST_NAME).write_text(json.dumps(raw))
    with pytest.raises(BundleError, match="schema_version 99"):
        read_manifest(bundle)
    with pytest.raises(BundleError, match="does not exist"):
        read_manifest(tmp_path / "nowhere")


def test_publish_refuses_existing_bundle(untrained_bundle: Path, tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="already exists"):
        make_untrained_bundle(untrained_bundle)
    verify_bundle(untrained_bundle)  # untouched by the refused export
    models = tmp_path / "models"
    first = make_untrained_bundle(models / "first", seed=1)
    second = make_untrained_bundle(models / "second", seed=2)
    # no staging folders are left behind; find_bundle picks by name, else the newest
    assert not [p for p in models.iterdir() if p.name.startswith(".")]
    assert find_bundle(models, "first") == first
    assert find_bundle(models) == second
    assert verify_bundle(first).version != verify_bundle(second).version
    with pytest.raises(BundleError, match="no model bundle"):
        find_bundle(models, "absent")


# --------------------------------------------------------------------------- the contract


def _edit_manifest(bundle: Path, edit) -> None:
    path = bundle / MANIFEST_NAME
    raw = json.loads(path.read_text())
    edit(raw)
    path.write_text(json.dumps(raw))


def _swap_model_file(bundle: Path, target: str, source: str, *, keep_version: bool) -> None:
    """Replace ``target`` by a copy of ``source`` and re-hash it in the manifest."""
    shutil.copyfile(bundle / source, bundle / target)

    def edit(raw: dict) -> None:
        raw["files"][target] = sha256_file(bundle / target)
        if not keep_version:
            raw["version"] = content_version(raw["files"], raw.get("field_hashes"))

    _edit_manifest(bundle, edit)


CONTRACT_TAMPERING = [
    (
        "preprocessing id",
        lambda raw: raw["input"].update(preprocessing="gray8-squash-nearest-v0"),
        r"input\.preprocessing: this code prepares 'gray8-letterbox-bilinear-v1' but the "
        r"bundle was made for 'gray8-squash-nearest-v0'",
    ),
    ("channels", lambda raw: raw["input"].update(channels=3), r"input\.channels: .*1.*3"),
    (
        "value range",
        lambda raw: raw["input"].update(value_range=[0.0, 1.0]),
        r"input\.value_range: .*\(0\.0, 255\.0\).*\(0\.0, 1\.0\)",
    ),
    (
        "normalisation placement",
        lambda raw: raw["input"].update(normalization="in-preprocessing"),
        r"input\.normalization: .*'inside-model'.*'in-preprocessing'",
    ),
    (
        "input size",
        lambda raw: raw["input"].update(size=96),
        r"input\.size: manifest says 96x96x1 but the router model takes \(N, 64, 64, 1\)",
    ),
    (
        "router classes",
        lambda raw: raw["router"]["classes"].append("Wrist"),
        r"router\.classes: manifest lists 4 classes .* but the router model outputs \(N, 3\)",
    ),
]


@pytest.mark.parametrize(
    ("edit", "message"), [c[1:] for c in CONTRACT_TAMPERING], ids=[c[0] for c in CONTRACT_TAMPERING]
)
def test_contract_field_tampering_is_refused(
    untrained_bundle: Path, tmp_path: Path, edit, message: str
) -> None:
    bundle = _copy(untrained_bundle, tmp_path)
    _edit_manifest(bundle, edit)
    with pytest.raises(BundleError, match=message):
        verify_bundle(bundle)
    assert main(["verify", str(bundle)]) == 1


def test_part_model_must_output_one_probability(untrained_bundle: Path, tmp_path: Path) -> None:
    bundle = _copy(untrained_bundle, tmp_path)
    _swap_model_file(bundle, "hand.onnx", "router.onnx", keep_version=False)
    verify_files(bundle)  # hashes and version are consistent: only the shapes can tell
    with pytest.raises(BundleError, match=r"parts\.Hand: .*\(N, 1\).*outputs \(N, 3\)"):
        verify_bundle(bundle)


def test_version_is_recomputed_from_the_files(untrained_bundle: Path, tmp_path: Path) -> None:
    bundle = _copy(untrained_bundle, tmp_path)
    old = read_manifest(bundle).version
    _swap_model_file(bundle, "elbow.onnx", "hand.onnx", keep_version=True)
    with pytest.raises(BundleError, match=rf"version: manifest says '{old}' but its model files"):
        verify_bundle(bundle)


def test_verify_command_exit_codes(
    untrained_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["verify", str(untrained_bundle)]) == 0
    assert capsys.readouterr().out.startswith("ok: ")
    bundle = _copy(untrained_bundle, tmp_path)
    _edit_manifest(bundle, lambda raw: raw["input"].update(channels=3))
    assert main(["verify", str(bundle)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: input.channels")


def test_service_refuses_a_bundle_that_breaks_the_contract(
    untrained_bundle: Path, tmp_path: Path
) -> None:
    from harness.service_support import make_settings, running

    models = tmp_path / "models"
    bundle = _copy(untrained_bundle, models)
    _swap_model_file(bundle, "shoulder.onnx", "router.onnx", keep_version=False)
    settings = make_settings(bundle, tmp_path)
    with running(settings) as (client, _app):
        ready = client.get("/ready")
        assert ready.status_code == 503
        assert "parts.Shoulder" in ready.json()["detail"]
        assert "outputs (N, 3)" in ready.json()["detail"]


def test_service_refuses_a_bundle_whose_thresholds_were_edited(
    untrained_bundle: Path, tmp_path: Path
) -> None:
    from harness.service_support import make_settings, running

    bundle = _copy(untrained_bundle, tmp_path / "models")
    _edit_manifest(bundle, lambda raw: raw["parts"]["Elbow"].update(threshold=0.0))
    with running(make_settings(bundle, tmp_path)) as (client, _app):
        ready = client.get("/ready")
        assert ready.status_code == 503
        assert "fields changed since export: parts.Elbow" in ready.json()["detail"]
        upload = client.post("/upload", files={"file": ("x.png", _png(), "image/png")})
        name = upload.json()["filename"]
        assert client.post("/predict", json={"filename": name}).status_code == 503


def _png() -> bytes:
    from harness.service_support import png_bytes

    return png_bytes(40, 30, seed=3)


MALFORMED_MANIFESTS = {
    "deep nesting": b"[" * 100_000 + b"]" * 100_000,
    "huge number": b'{"schema_version": 1' + b"0" * 5000 + b"}",
    "not UTF-8": b'{"schema_version": "\xff\xfe"}',
    "over the size cap": b'{"pad": "' + b"x" * (2 << 20) + b'"}',
    "wrong types": json.dumps({"schema_version": 1, "name": 5}).encode(),
}


@pytest.mark.parametrize("kind", sorted(MALFORMED_MANIFESTS))
def test_verify_prints_one_error_line_for_a_malformed_manifest(
    untrained_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    bundle = _copy(untrained_bundle, tmp_path)
    (bundle / "manifest.json").write_bytes(MALFORMED_MANIFESTS[kind])
    assert main(["verify", str(bundle)]) == 1
    captured = capsys.readouterr()
    output = (captured.out + captured.err).strip().splitlines()
    assert len(output) == 1, output
    assert output[0].startswith("error: ") and "manifest.json" in output[0]
    assert "Traceback" not in captured.err


# ------------------------------------------------------------- version covers the answers


def _swap_router_classes(raw: dict) -> None:
    classes = raw["router"]["classes"]
    classes[0], classes[1] = classes[1], classes[0]


ANSWER_FIELD_EDITS = [
    (
        "every threshold 0",
        lambda raw: [
            spec.update(threshold=0.0, image_threshold=0.0) for spec in raw["parts"].values()
        ],
        "parts.Elbow, parts.Hand, parts.Shoulder",
    ),
    ("router classes swapped", _swap_router_classes, "router"),
    (
        "int8 marked allowed",
        lambda raw: raw["precisions"]["int8"].update(allowed=True),
        "precisions.int8",
    ),
    ("synthetic false", lambda raw: raw.update(synthetic=False), "synthetic"),
    ("intended use", lambda raw: raw.update(intended_use="anything"), "intended_use"),
]


@pytest.mark.parametrize(
    ("edit", "named"), [c[1:] for c in ANSWER_FIELD_EDITS], ids=[c[0] for c in ANSWER_FIELD_EDITS]
)
def test_an_answer_changing_edit_is_refused_and_named(
    untrained_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], edit, named: str
) -> None:
    """The edits that changed answers under an unchanged version: each is refused by
    ``bonexr verify`` and the service's loader, naming the fields that differ."""
    bundle = _copy(untrained_bundle, tmp_path)
    _edit_manifest(bundle, edit)
    with pytest.raises(BundleError, match=rf"fields changed since export: {re.escape(named)};"):
        verify_bundle(bundle)
    assert main(["verify", str(bundle)]) == 1
    assert f"fields changed since export: {named}" in capsys.readouterr().err


def test_rewriting_the_field_hashes_does_not_keep_the_version(
    untrained_bundle: Path, tmp_path: Path
) -> None:
    """Editing a threshold and its recorded hash alike still cannot keep the version."""
    bundle = _copy(untrained_bundle, tmp_path)
    old = read_manifest(bundle).version

    def edit(raw: dict) -> None:
        raw["parts"]["Elbow"]["threshold"] = 0.0
        manifest = Manifest.model_validate(raw)
        raw["field_hashes"] = field_hashes(manifest)

    _edit_manifest(bundle, edit)
    with pytest.raises(
        BundleError, match=rf"version: manifest says '{old}' but its model files and answer fields"
    ):
        verify_bundle(bundle)


def test_metrics_and_provenance_edits_keep_the_version(
    untrained_bundle: Path, tmp_path: Path
) -> None:
    """Fields that change no answer are outside the version (a report can be re-rendered)."""
    bundle = _copy(untrained_bundle, tmp_path)
    _edit_manifest(bundle, lambda raw: raw.update(metrics={"note": "re-rendered"}, data={}))
    assert verify_bundle(bundle).version == read_manifest(untrained_bundle).version


def test_a_bundle_without_field_hashes_keeps_its_files_only_version(
    untrained_bundle: Path, tmp_path: Path
) -> None:
    """Bundles exported before field hashes: their version covered the model files only,
    and still verifies that way; dropping the hashes from a newer bundle does not."""
    bundle = _copy(untrained_bundle, tmp_path)

    def legacy(raw: dict) -> None:
        raw.pop("field_hashes")
        raw["version"] = content_version(raw["files"])

    _edit_manifest(bundle, legacy)
    verify_bundle(bundle)
    newer = _copy(untrained_bundle, tmp_path / "newer")
    _edit_manifest(newer, lambda raw: raw.pop("field_hashes"))
    with pytest.raises(BundleError, match=r"version: manifest says .* its model files make"):
        verify_bundle(newer)


def test_files_outside_the_bundle_are_refused(untrained_bundle: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"someone else's file")
    bundle = _copy(untrained_bundle, tmp_path)
    (bundle / "extra.bin").symlink_to(outside)
    with pytest.raises(BundleError, match=r"extra\.bin is a symlink to a place outside the bundle"):
        verify_bundle(bundle)
    assert main(["verify", str(bundle)]) == 1

    for index, entry in enumerate(("../outside.bin", "/etc/passwd")):
        listed = _copy(untrained_bundle, tmp_path / f"listed-{index}")
        _edit_manifest(listed, lambda raw, e=entry: raw["files"].update({e: "0" * 64}))
        with pytest.raises(BundleError, match=rf"files entry '{re.escape(entry)}' is not inside"):
            verify_bundle(listed)
