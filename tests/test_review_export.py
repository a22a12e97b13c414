"""``bonexr export-reviews`` (issue 39): the readers' verdicts become a labels CSV that the
training reads, with the stored images; disagreements are set aside, who reviewed what is
written down, and the export is audited."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

from harness.service_support import make_settings, png_bytes, running

KEYS = "alice:key-a,bob:key-b"
ALICE, BOB = {"X-API-Key": "key-a"}, {"X-API-Key": "key-b"}


def _study(client: object, seed: int) -> dict:
    names = []
    for view in range(2):
        upload = client.post(  # type: ignore[attr-defined]
            "/upload", files={"file": ("x.png", png_bytes(seed=seed * 10 + view))}, headers=ALICE
        )
        names.append(upload.json()["filename"])
    answer = client.post("/predict/study", json={"filenames": names}, headers=ALICE)  # type: ignore[attr-defined]
    return {"names": names, **answer.json()}


def test_reviews_export_as_training_labels(untrained_bundle: Path, tmp_path: Path) -> None:
    from training.readers import read_labels_csv

    settings = make_settings(
        untrained_bundle, tmp_path, api_keys=KEYS, admin_keys="alice", eligibility="warn"
    )
    with running(settings) as (client, _):
        agreed, disputed, amended, unread = (_study(client, s) for s in (1, 2, 3, 4))

        def review(study: dict, headers: dict, result: str, **extra: object) -> None:
            url = f"/worklist/{study['record_id']}/review"
            reply = client.post(url, json={"reader_result": result, **extra}, headers=headers)
            assert reply.status_code == 200, reply.text

        review(agreed, ALICE, "abnormal")
        review(agreed, BOB, "abnormal")
        review(disputed, ALICE, "abnormal")
        review(disputed, BOB, "normal")
        review(amended, BOB, "abnormal")
        review(amended, BOB, "normal", amend=True)  # the amendment is the verdict
        del unread  # never reviewed: not exported

    out = tmp_path / "export"
    env = {
        "BONEXR_UPLOAD_DIR": str(settings.upload_dir),
        "BONEXR_MODELS_DIR": str(settings.models_dir),
        "PATH": "/usr/bin:/bin",
    }
    run = subprocess.run(
        [sys.executable, "-m", "bonexr.cli", "export-reviews", "--out", str(out), "--by", "qa"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert "3 reviewed studies -> 4 labelled images" in run.stdout
    read = read_labels_csv(out / "labels.csv")  # what `bonexr train labels.csv` reads
    by_study = read.rows.groupby("study_id")["label"].agg(set).to_dict()
    assert by_study == {agreed["record_id"]: {1}, amended["record_id"]: {0}}
    assert read.skipped["missing_on_disk"] == []
    with (out / "disagreements.csv").open() as handle:
        (dispute,) = csv.DictReader(handle)
    assert dispute["study_id"] == disputed["record_id"]
    assert dispute["readers"] == "alice;bob" and dispute["reader_results"] == "abnormal;normal"
    with (out / "reviews.csv").open() as handle:
        reviews = {row["study_id"]: row for row in csv.DictReader(handle)}
    assert reviews[amended["record_id"]]["reader_results"] == "normal"  # bob's amendment
    again = subprocess.run(
        [sys.executable, "-m", "bonexr.cli", "export-reviews", "--out", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert again.returncode == 2 and "already holds an export" in again.stderr
    with running(settings) as (client, _):
        audit = client.get("/audit", headers=ALICE).json()["items"]
    assert any(e["action"] == "export_reviews" and e["key_name"] == "qa" for e in audit)
