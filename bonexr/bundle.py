"""The model-bundle format: one reader and one writer for training and serving.

A bundle is a folder ``models/<name>/`` holding ``manifest.json`` plus the files it lists
(Keras models, their ONNX exports, ``split.csv``, the report and plots). The manifest
records the sha256 of every file; :func:`load_bundle` refuses a bundle whose files do not
match, and :func:`publish_bundle` makes a bundle appear atomically (built in a temporary
sibling folder, renamed into place), so an interrupted export never leaves a half bundle
that looks valid.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError, field_validator

from bonexr.atomic import current_umask, write_json_atomic
from bonexr.contract import ROUTER, check_input_contract, check_model_io, onnx_file_io
from bonexr.errors import BundleError
from bonexr.imaging import PREPROCESSING_ID
from bonexr.labels import model_key

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"

INTENDED_USE = (
    "Research and triage aid for adult upper-extremity radiographs (MURA study types). "
    "It flags studies that may be abnormal (MURA 'positive': fracture, hardware, "
    "degenerative or other findings) for earlier review. It is not a diagnosis and not a "
    "medical device; every result must be reviewed by a qualified reader."
)
SYNTHETIC_USE = (
    "DEMO ONLY: trained on procedurally generated synthetic images, not on radiographs. "
    "Not for clinical use of any kind."
)


class InputSpec(BaseModel):
    """How pixels must be prepared for the models (see :mod:`bonexr.imaging`)."""

    size: int = Field(gt=0, description="Square side in pixels the models take.")
    channels: int = Field(1, description="Channels fed to the model (replicated to 3 inside).")
    preprocessing: str = Field(PREPROCESSING_ID, description="Recipe id of bonexr.imaging.")
    dtype: str = "float32"
    value_range: tuple[float, float] = (0.0, 255.0)
    normalization: str = Field("inside-model", description="Backbone normalisation location.")


class ModelFiles(BaseModel):
    """One trained model in both formats."""

    keras: str
    onnx: str | None = None
    backbone: str


class RouterSpec(ModelFiles):
    classes: list[str] = Field(description="Body parts in output order.")


class HeatmapSpec(BaseModel):
    """A part model's heat map: a second ONNX output, computed in the same pass."""

    method: Literal["cam"] = Field(
        "cam", description="Class activation map of the global-pooling head."
    )
    output: int = Field(1, ge=1, description="Index of the ONNX output holding the map.")
    grid: tuple[int, int] = Field(description="(rows, cols) of the map at the model input.")


class PartSpec(ModelFiles):
    """A body part's abnormality model and its two operating points, both chosen on the
    validation split: one for single images (``/predict``), one for the mean over a study's
    views (``/predict/study``, MURA's unit)."""

    threshold: float = Field(
        ge=0.0, le=1.0, description="Study operating point: threshold on the views' mean."
    )
    threshold_rule: str = "youden-j-on-validation-study-level"
    image_threshold: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="Image operating point; None in bundles written before it existed "
        "(the study threshold is then used, with a warning).",
    )
    image_threshold_rule: str | None = None
    heatmap: HeatmapSpec | None = Field(
        None, description="Where the ONNX model outputs its heat map; None: no heat maps."
    )

    @property
    def single_image_threshold(self) -> float:
        """The threshold for one image: its own when the bundle has one."""
        return self.threshold if self.image_threshold is None else self.image_threshold


class PrecisionSpec(BaseModel):
    """A reduced precision measured on the bundle's own test split at export."""

    allowed: bool = Field(description="Within the accuracy gate; only then may it serve.")
    runtime: str = Field(description="The runtime that was measured (e.g. openvino).")
    reason: str = Field(description="Why allowed or not, with the figures.")
    tolerance: float = Field(
        ge=0.0, description="Largest |P - P(fp32)| allowed at load (reference check)."
    )
    measured: dict[str, Any] = Field(default_factory=dict, description="The gate's figures.")
    files: dict[str, str] = Field(
        default_factory=dict,
        description="Model name (router, elbow ...) -> the file served at this precision "
        "(an OpenVINO IR .xml with its .bin beside it); empty: the ONNX files (bf16).",
    )

    @field_validator("files")
    @classmethod
    def _inside_the_bundle(cls, files: dict[str, str]) -> dict[str, str]:
        for rel in files.values():
            path = PurePosixPath(rel)
            if path.is_absolute() or ".." in path.parts or path.suffix != ".xml":
                raise ValueError(f"{rel!r}: must be a bundle-relative .xml path")
        return files


class Manifest(BaseModel):
    """Everything a consumer needs to trust and use a bundle."""

    schema_version: int = SCHEMA_VERSION
    name: str
    version: str = ""
    created_at: str = Field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    synthetic: bool = False
    intended_use: str = INTENDED_USE
    body_parts: list[str]
    input: InputSpec
    router: RouterSpec
    parts: dict[str, PartSpec]
    metrics: dict[str, Any] = Field(default_factory=dict)
    data: dict[str, Any] = Field(default_factory=dict)
    training: dict[str, Any] = Field(default_factory=dict)
    libraries: dict[str, str] = Field(default_factory=dict)
    files: dict[str, str] = Field(default_factory=dict, description="relative path -> sha256")
    precisions: dict[str, PrecisionSpec] = Field(
        default_factory=dict,
        description="Reduced precisions measured at export (fp32 is always allowed).",
    )

    def precision_allowed(self, name: str) -> bool:
        spec = self.precisions.get(name)
        return name == "fp32" or (spec is not None and spec.allowed)

    def precision_note(self, name: str) -> str:
        spec = self.precisions.get(name)
        return spec.reason if spec else f"{name} was not measured when this bundle was exported"

    def model_files(self) -> list[str]:
        """Every model file the manifest points at (Keras, ONNX and reduced-precision IR)."""
        specs: list[ModelFiles] = [self.router, *self.parts.values()]
        variants = [
            f
            for spec in self.precisions.values()
            for xml in spec.files.values()
            for f in (xml, str(PurePosixPath(xml).with_suffix(".bin")))
        ]
        return [f for spec in specs for f in (spec.keras, spec.onnx) if f] + variants

    def served_file(self, name: str, precision: str) -> str:
        """The file model ``name`` (``router`` or a part) is served from at ``precision``."""
        spec: ModelFiles = self.router if name == ROUTER else self.parts[name]
        variants = self.precisions[precision].files if precision in self.precisions else {}
        key = ROUTER if name == ROUTER else model_key(name)
        if variants:
            if key not in variants:
                raise BundleError(f"bundle has no {precision} file for {name}")
            return variants[key]
        if not spec.onnx:
            raise BundleError(f"no ONNX export for {name} (the service runs ONNX)")
        return spec.onnx


def sha256_file(path: Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def _listed_files(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and p.name != MANIFEST_NAME and ".tmp" not in p.name
    )


def content_version(files: dict[str, str]) -> str:
    """A short id derived from the model files' hashes: same weights, same version."""
    digest = hashlib.sha256()
    for rel in sorted(files):
        if rel.endswith((".keras", ".onnx", ".xml", ".bin")):
            digest.update(f"{rel}:{files[rel]}\n".encode())
    return digest.hexdigest()[:12]


def staging_dir(destination: Path) -> Path:
    """A fresh temporary folder beside ``destination`` (same filesystem, so rename is atomic)."""
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=destination.parent, prefix=f".{destination.name}.staging-"))
    # mkdtemp makes 0700; a bundle must be readable by the service's user (e.g. a container's)
    os.chmod(staging, 0o777 & ~current_umask())
    return staging


def publish_bundle(
    staging: Path, manifest: Manifest, destination: Path, *, force: bool = False
) -> Manifest:
    """Hash the staged files, write the manifest, and move the folder into place.

    Refuses to replace an existing bundle unless ``force``; with ``force`` the old bundle is
    moved aside first and deleted only after the new one is in place.
    """
    staging, destination = Path(staging), Path(destination)
    if destination.exists() and not force:
        raise BundleError(f"{destination} already exists; pass --force to replace it")
    for rel in manifest.model_files():
        if not (staging / rel).is_file():
            raise BundleError(f"bundle is missing model file {rel}")
    files = {p.relative_to(staging).as_posix(): sha256_file(p) for p in _listed_files(staging)}
    final = manifest.model_copy(
        update={"files": files, "version": manifest.version or content_version(files)}
    )
    write_json_atomic(staging / MANIFEST_NAME, final.model_dump(mode="json"))
    backup: Path | None = None
    if destination.exists():
        backup = destination.with_name(f".{destination.name}.old-{os.getpid()}")
        os.replace(destination, backup)
    os.replace(staging, destination)
    if backup is not None:
        shutil.rmtree(backup, ignore_errors=True)
    return final


def read_manifest(folder: Path) -> Manifest:
    """Parse ``manifest.json`` without checking file hashes."""
    folder = Path(folder)
    path = folder / MANIFEST_NAME
    if not folder.is_dir():
        raise BundleError(f"model bundle folder {folder} does not exist")
    if not path.is_file():
        raise BundleError(f"{folder} has no {MANIFEST_NAME}; it is not a model bundle")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise BundleError(f"cannot read {path}: {exc}") from exc
    if not isinstance(raw, dict) or raw.get("schema_version") != SCHEMA_VERSION:
        found = raw.get("schema_version") if isinstance(raw, dict) else None
        raise BundleError(
            f"{path}: unsupported schema_version {found!r} (expected {SCHEMA_VERSION})"
        )
    try:
        return Manifest.model_validate(raw)
    except ValidationError as exc:
        raise BundleError(f"{path} is not a valid manifest: {exc}") from exc


def verify_files(folder: Path) -> Manifest:
    """Read the manifest, check every listed file's sha256, the version and the input contract.

    Everything but the models' shapes (see :func:`verify_bundle`). The version is
    recomputed from the verified hashes: a manifest whose files were swapped and re-hashed
    cannot keep the old version string that answers and logs would carry.
    """
    folder = Path(folder)
    manifest = read_manifest(folder)
    missing_hashes = [f for f in manifest.model_files() if f not in manifest.files]
    if missing_hashes:
        raise BundleError(f"{folder}: manifest lists no sha256 for {', '.join(missing_hashes)}")
    for rel, expected in manifest.files.items():
        path = folder / rel
        if not path.is_file():
            raise BundleError(f"{folder}: file {rel} listed in the manifest is missing")
        actual = sha256_file(path)
        if actual != expected:
            raise BundleError(
                f"{folder}: sha256 mismatch for {rel} (manifest {expected[:12]}..., "
                f"file {actual[:12]}...);"
                " the bundle was modified or corrupted"
            )
    recomputed = content_version(manifest.files)
    if manifest.version != recomputed:
        raise BundleError(
            f"version: manifest says {manifest.version!r} but its model files make "
            f"{recomputed!r}; the manifest was edited"
        )
    check_input_contract(manifest)
    return manifest


def verify_bundle(folder: Path) -> Manifest:
    """Everything :func:`verify_files` checks, plus each ONNX model's input and output shape.

    Opens each ONNX model in ONNX Runtime to read its shapes; a service that opens the
    models anyway calls :func:`verify_files` and then
    :func:`bonexr.contract.check_model_io` with its own sessions' shapes.
    """
    folder = Path(folder)
    manifest = verify_files(folder)
    specs: dict[str, ModelFiles] = {ROUTER: manifest.router, **manifest.parts}
    io = {name: onnx_file_io(folder / spec.onnx) for name, spec in specs.items() if spec.onnx}
    check_model_io(manifest, io)
    return manifest


def find_bundle(models_dir: Path, name: str | None = None) -> Path:
    """Resolve the bundle folder: ``models_dir/name``, or the only/newest bundle there."""
    models_dir = Path(models_dir)
    if name:
        candidate = Path(name) if Path(name).is_absolute() else models_dir / name
        if not (candidate / MANIFEST_NAME).is_file():
            raise BundleError(f"no model bundle at {candidate}")
        return candidate
    bundles = sorted(
        (p for p in models_dir.glob("*/" + MANIFEST_NAME) if not p.parent.name.startswith(".")),
        key=lambda p: p.stat().st_mtime,
    )
    if not bundles:
        raise BundleError(f"no model bundle found in {models_dir}")
    return bundles[-1].parent
