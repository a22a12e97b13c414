"""The folder store's rules for derived files: nothing outlives its upload, the body part
reflects the latest upload, and counting never fails (``/metrics``)."""

from __future__ import annotations

import threading
from pathlib import Path

from harness.service_support import make_settings, png_bytes, running
from service.adapters.stores.base import BODY_PART, SIDECAR_RE
from service.adapters.stores.folder import FileUploadStore

TRIALS = 300


def sidecars(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if SIDECAR_RE.fullmatch(p.name))


def test_a_delete_racing_a_sidecar_write_never_leaves_an_orphan(tmp_path: Path) -> None:
    """Many trials of a delete and a heat-map write started together on two threads: after
    both, either the upload and its sidecar are gone, or (the write saw no upload) nothing
    was written. Every interleaving of the two must end without a sidecar."""
    store = FileUploadStore(tmp_path / "uploads")
    png = png_bytes(16, 16, seed=7)
    for trial in range(TRIALS):
        name = store.save(png).filename
        barrier = threading.Barrier(2)
        kind = f"cam-v{trial}"
        threads = [
            threading.Thread(target=_write_sidecar, args=(store, barrier, name, kind)),
            threading.Thread(target=_delete, args=(store, barrier, name)),
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not store.exists(name)
        assert sidecars(store.directory) == [], f"orphan after trial {trial}"


def _write_sidecar(
    store: FileUploadStore, barrier: threading.Barrier, name: str, kind: str
) -> None:
    barrier.wait()
    store.write_sidecar(name, kind, b"{}")


def _delete(store: FileUploadStore, barrier: threading.Barrier, name: str) -> None:
    barrier.wait()
    store.delete(name)


def test_a_sidecar_is_not_written_for_a_missing_upload(tmp_path: Path) -> None:
    store = FileUploadStore(tmp_path)
    name = store.save(png_bytes(8, 8, seed=1)).filename
    assert store.write_sidecar(name, "cam-x", b"1") is True
    assert store.delete(name) is True
    assert store.write_sidecar(name, "cam-x", b"1") is False
    assert sidecars(tmp_path) == []


def test_the_sweep_removes_orphan_sidecars(tmp_path: Path) -> None:
    """A crash between publishing a sidecar and re-checking its upload leaves an orphan."""
    store = FileUploadStore(tmp_path)
    name = store.save(png_bytes(8, 8, seed=2)).filename
    (tmp_path / f"{'a' * 64}.png.cam-v1").write_bytes(b"{}")  # no such upload
    store.write_sidecar(name, "cam-v1", b"{}")
    assert store.sweep(None) == 0
    assert sidecars(tmp_path) == [f"{name}.cam-v1"]


def test_the_body_part_reflects_the_latest_upload(tmp_path: Path) -> None:
    """Same pixels uploaded as a DICOM naming the body part, then as a plain PNG: the
    record is cleared (the current sender did not say which part), then set again."""
    store = FileUploadStore(tmp_path)
    png = png_bytes(8, 8, seed=3)
    name = store.save(png, body_part="ELBOW").filename
    assert store.body_part(name) == "ELBOW"
    assert store.save(png).created is False
    assert store.body_part(name) is None
    assert store.read_sidecar(name, BODY_PART) is None
    store.save(png, body_part="HAND")
    assert store.body_part(name) == "HAND"


def test_counting_survives_the_folder_being_replaced_by_a_file(tmp_path: Path) -> None:
    folder = tmp_path / "uploads"
    folder.write_bytes(b"not a folder")
    store = FileUploadStore(folder)
    assert store.count() == 0 and list(store.names()) == []
    assert store.sweep(1.0) == 0
    assert store.problem() is not None


def test_metrics_answer_when_the_upload_folder_is_a_file(
    untrained_bundle: Path, tmp_path: Path
) -> None:
    """The upload gauge is computed at scrape time; a folder replaced by a file (a broken
    volume mount) must not turn ``/metrics`` into a 500."""
    settings = make_settings(untrained_bundle, tmp_path)
    with running(settings) as (client, _):
        folder = settings.upload_dir
        for child in folder.iterdir():
            child.unlink()
        folder.rmdir()
        folder.write_bytes(b"a file where the folder was")
        response = client.get("/metrics")
        assert response.status_code == 200
        assert "bonexr_uploads_stored 0.0" in response.text
