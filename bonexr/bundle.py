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
from pathlib import Path, PurePosixPath

from pydantic import ValidationError

from bonexr.atomic import current_umask, write_json_atomic
from bonexr.contract import check_input_contract, check_model_io, onnx_file_io
from bonexr.errors import BundleError
from bonexr.labels import ROUTER
from bonexr.manifest import (
    INTENDED_USE,
    MANIFEST_NAME,
    SCHEMA_VERSION,
    SYNTHETIC_USE,
    HeatmapSpec,
    InputSpec,
    Manifest,
    ModelFiles,
    PartSpec,
    PrecisionSpec,
    RouterSpec,
)

__all__ = [
    "INTENDED_USE",
    "MANIFEST_NAME",
    "SCHEMA_VERSION",
    "SYNTHETIC_USE",
    "HeatmapSpec",
    "InputSpec",
    "Manifest",
    "ModelFiles",
    "PartSpec",
    "PrecisionSpec",
    "RouterSpec",
]


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


def field_hashes(manifest: Manifest) -> dict[str, str]:
    """sha256 (16 hex digits) of each answer-changing field's canonical JSON."""
    return {
        name: hashlib.sha256(
            json.dumps(value, sort_keys=True, separators=(",", ":")).encode()
        ).hexdigest()[:16]
        for name, value in manifest.answer_fields().items()
    }


def content_version(files: dict[str, str], fields: dict[str, str] | None = None) -> str:
    """A short id over the model files' hashes and the answer-changing fields' hashes:
    same weights and same answer rules, same version; anything else, another version.

    Without ``fields`` (bundles exported before field hashes existed) it covers the model
    files only, as those bundles' versions were computed.
    """
    digest = hashlib.sha256()
    for rel in sorted(files):
        if rel.endswith((".keras", ".onnx", ".xml", ".bin")):
            digest.update(f"{rel}:{files[rel]}\n".encode())
    for name in sorted(fields or {}):
        digest.update(f"field {name}:{(fields or {})[name]}\n".encode())
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
    fields = field_hashes(manifest)
    final = manifest.model_copy(
        update={"files": files, "field_hashes": fields, "version": content_version(files, fields)}
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


#: What a serving-only copy keeps besides the ONNX models and the manifest: the model card
#: and the report (the plots stay in the run folder: a ResNet50 router leaves no room for
#: them under the shipped bundle's 100 MB).
SERVING_DOCUMENTS: tuple[str, ...] = ("MODEL_CARD.md", "report.md", "report.json")


def serving_copy(source: Path, destination: Path, *, force: bool = False) -> Manifest:
    """Publish the serving files of a verified bundle as a new bundle: the ONNX models,
    the model card and the report; no plots, no Keras files and no reduced-precision
    variant files (a reduced precision without files, bf16, stays as measured; one whose
    files are left out is marked not allowed, saying why). The answer fields that change
    get a new version, as any export does; the models' answers are the same."""
    source, destination = Path(source), Path(destination)
    manifest = verify_bundle(source)
    staging = staging_dir(destination)
    try:
        keep = [spec.onnx for spec in (manifest.router, *manifest.parts.values()) if spec.onnx]
        keep += [d for d in SERVING_DOCUMENTS if (source / d).is_file()]
        for rel in keep:
            (staging / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source / rel, staging / rel)
        precisions = {
            name: spec
            if not spec.files
            else spec.model_copy(
                update={
                    "allowed": False,
                    "files": {},
                    "reason": f"not shipped in this serving copy (size); at export: {spec.reason}",
                }
            )
            for name, spec in manifest.precisions.items()
        }
        slim = manifest.model_copy(
            update={
                "router": manifest.router.model_copy(update={"keras": None}),
                "parts": {
                    p: spec.model_copy(update={"keras": None}) for p, spec in manifest.parts.items()
                },
                "precisions": precisions,
            }
        )
        return publish_bundle(staging, slim, destination, force=force)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


#: A manifest is a few kilobytes; anything past this is not one (and is not parsed).
MAX_MANIFEST_BYTES = 1 << 20


def _parse_manifest_json(path: Path) -> object:
    """The manifest's JSON, or a :class:`BundleError` with one line saying why not.

    Why every case is caught here: ``json`` raises ``RecursionError`` for deep nesting,
    ``ValueError`` for an integer literal past Python's digit limit and
    ``UnicodeDecodeError`` for bytes that are not UTF-8; each would otherwise reach
    ``bonexr verify`` or the service's loader as a traceback.
    """
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_MANIFEST_BYTES + 1)
    except OSError as exc:
        raise BundleError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if len(data) > MAX_MANIFEST_BYTES:
        raise BundleError(f"cannot read {path}: over {MAX_MANIFEST_BYTES} bytes, not a manifest")
    try:
        return json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise BundleError(f"cannot read {path}: not UTF-8 text (byte {exc.start})") from exc
    except RecursionError as exc:
        raise BundleError(f"cannot read {path}: JSON nested too deeply") from exc
    except ValueError as exc:  # JSONDecodeError, or a number past the digit limit
        first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise BundleError(f"cannot read {path}: not valid JSON: {first_line}") from exc


def rewrite_manifest(folder: Path, manifest: Manifest) -> Manifest:
    """Write a changed manifest into an existing bundle as a new export would: field
    hashes and version recomputed, so the bundle gets a **new version** and answers made
    under the old one stay attributable. For tools that legitimately change answer fields
    after export (the benchmarks allow a random-init bundle's reduced precisions); a hand
    edit that skips this is refused at load."""
    fields = field_hashes(manifest)
    final = manifest.model_copy(
        update={"field_hashes": fields, "version": content_version(manifest.files, fields)}
    )
    write_json_atomic(Path(folder) / MANIFEST_NAME, final.model_dump(mode="json"))
    return final


def read_manifest(folder: Path) -> Manifest:
    """Parse ``manifest.json`` without checking file hashes."""
    folder = Path(folder)
    path = folder / MANIFEST_NAME
    if not folder.is_dir():
        raise BundleError(f"model bundle folder {folder} does not exist")
    if not path.is_file():
        raise BundleError(f"{folder} has no {MANIFEST_NAME}; it is not a model bundle")
    raw = _parse_manifest_json(path)
    if not isinstance(raw, dict) or raw.get("schema_version") != SCHEMA_VERSION:
        found = raw.get("schema_version") if isinstance(raw, dict) else None
        raise BundleError(
            f"{path}: unsupported schema_version {found!r} (expected {SCHEMA_VERSION})"
        )
    try:
        return Manifest.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or '(top)'}: {error['msg']}"
            for error in exc.errors()[:5]
        )
        raise BundleError(f"{path} is not a valid manifest: {problems}") from exc


def verify_files(folder: Path) -> Manifest:
    """Read the manifest, check every listed file's place and sha256, and the input contract.

    Everything but the models' shapes and the version (see :func:`verify_bundle`, and
    :func:`check_version`, which a service that opens the models itself calls after
    checking their shapes). Files must lie inside the bundle: a ``files`` entry that is
    absolute or climbs out with ``..``, and a symlink anywhere in the bundle that resolves
    outside it, are refused, so a bundle cannot make a verifier hash or a server load
    someone else's file.
    """
    folder = Path(folder)
    manifest = read_manifest(folder)
    root = folder.resolve()
    for rel in manifest.files:
        parts = PurePosixPath(rel).parts
        if PurePosixPath(rel).is_absolute() or ".." in parts or not parts:
            raise BundleError(f"{folder}: files entry {rel!r} is not inside the bundle")
    for path in folder.rglob("*"):
        if path.is_symlink() and not path.resolve().is_relative_to(root):
            raise BundleError(
                f"{folder}: {path.relative_to(folder).as_posix()} is a symlink to a place "
                "outside the bundle"
            )
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
    check_input_contract(manifest)
    return manifest


def check_version(manifest: Manifest) -> None:
    """The version must describe this bundle: its model files and every answer-changing
    field as the export recorded them.

    An edited threshold, a reordered router class list, a precision marked allowed that
    its gate refused, ``synthetic`` flipped: each is named, and the bundle refused, because
    answers would otherwise change under an unchanged version.
    """
    recorded = manifest.field_hashes
    if recorded:
        current = field_hashes(manifest)
        changed = sorted(
            k for k in recorded.keys() | current.keys() if recorded.get(k) != current.get(k)
        )
        if changed:
            raise BundleError(
                f"fields changed since export: {', '.join(changed)}; version "
                f"{manifest.version!r} no longer describes this bundle (re-export it)"
            )
    expected = content_version(manifest.files, recorded)
    if manifest.version != expected:
        covered = "model files and answer fields" if recorded else "model files"
        raise BundleError(
            f"version: manifest says {manifest.version!r} but its {covered} make "
            f"{expected!r}; the manifest was edited"
        )


def verify_bundle(folder: Path) -> Manifest:
    """Everything :func:`verify_files` checks, each ONNX model's input and output shape,
    then :func:`check_version`.

    Opens each ONNX model in ONNX Runtime to read its shapes; a service that opens the
    models anyway calls :func:`verify_files`, :func:`bonexr.contract.check_model_io` with
    its own sessions' shapes, then :func:`check_version`.
    """
    folder = Path(folder)
    manifest = verify_files(folder)
    specs: dict[str, ModelFiles] = {ROUTER: manifest.router, **manifest.parts}
    io = {name: onnx_file_io(folder / spec.onnx) for name, spec in specs.items() if spec.onnx}
    check_model_io(manifest, io)
    check_version(manifest)
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
