"""The triage worklist on SQLite: records, triage order, reviews, the audit, the faults.

The same API on a real PostgreSQL (two instances, one worklist) is in
``tests/test_worklist_postgres.py``.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from bonexr.errors import ConfigError
from harness.service_support import assert_error, make_settings, png_bytes, running, wait_for
from service.adapters.records.database import Database, database_url
from service.adapters.records.worklist import RecordStore, StudyEntry, ViewEntry, utcnow

KEYS = "alice:key-a,bob:key-b"
ALICE, BOB = {"X-API-Key": "key-a"}, {"X-API-Key": "key-b"}


def entry(probability: float | None, result: str | None, *, part: str = "Elbow") -> StudyEntry:
    return StudyEntry(
        source="api",
        bundle_name="b",
        bundle_version="v1",
        operating_point="triage",
        body_part=part,
        probability=probability,
        threshold=0.5,
        result=result,
        views=[ViewEntry(filename=None, probability=probability, result=result)],
        refusal=None if result else "no eligible view",
    )


@pytest.fixture
def store(tmp_path: Path) -> Iterator[RecordStore]:
    database = Database(database_url(None, tmp_path / "uploads"))
    database.upgrade()
    yield RecordStore(database)
    database.dispose()


def test_the_worklist_is_in_triage_order_and_pages_cover_it_once(store: RecordStore) -> None:
    start = utcnow()
    cases = [(0.2, "normal"), (0.9, "abnormal"), (None, None), (0.6, "abnormal"),
             (0.45, "normal"), (0.9, "abnormal"), (0.45, "normal")]  # fmt: skip
    ids = [
        store.record(entry(p, r), now=start + dt.timedelta(seconds=i))
        for i, (p, r) in enumerate(cases)
    ]
    # abnormal by probability (ties by arrival), then normal, then no finding
    expected = [ids[1], ids[5], ids[3], ids[4], ids[6], ids[0], ids[2]]
    seen, cursor = [], None
    while True:
        page = store.page("all", 2, cursor)
        seen += [s.id for s in page.studies]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == expected
    assert page.counts == {"unread": 7, "reviewed": 0, "all": 7}
    store.review(ids[1], "alice", "abnormal")
    assert [s.id for s in store.page("unread", 50).studies] == [i for i in expected if i != ids[1]]
    assert [s.id for s in store.page("reviewed", 50).studies] == [ids[1]]


def test_migrations_from_empty_and_from_the_previous_schema(tmp_path: Path) -> None:
    from sqlalchemy import inspect, text

    database = Database(f"sqlite:///{tmp_path / 'old.db'}")
    assert database.revision() is None
    database.upgrade("0001")  # the first schema, with a study written as 0.1.0 wrote it
    assert database.revision() == "0001"
    kept = "a" * 32
    with database.engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO studies (id, arrived_at, source, bundle_name, bundle_version, "
                "result, probability, warnings, status, priority_group, sort_probability) "
                "VALUES (:id, '2026-12-01 10:00:00', 'api', 'b', 'v', 'abnormal', 0.7, '[]', "
                "'unread', 0, 0.7)"
            ),
            {"id": kept},
        )
    assert "ix_studies_priority" not in {
        i["name"] for i in inspect(database.engine).get_indexes("studies")
    }
    database.upgrade()
    assert database.revision() == "0005"
    assert "ix_studies_priority" in {
        i["name"] for i in inspect(database.engine).get_indexes("studies")
    }
    columns = {c["name"] for c in inspect(database.engine).get_columns("studies")}
    assert {"replaces", "superseded_by"} <= columns
    assert [s.id for s in RecordStore(database).page().studies] == [kept]
    database.upgrade()
    database.upgrade()  # again: nothing to do
    database.dispose()


def test_an_unknown_database_scheme_is_refused_at_start_up(tmp_path: Path) -> None:
    from service.doors.http.app import create_app

    with pytest.raises(ConfigError, match="scheme 'mysql' is not supported"):
        database_url("mysql://u:p@h/db", tmp_path)
    with pytest.raises(ConfigError, match="is not a database URL"):
        database_url("not a url", tmp_path)
    settings = make_settings(tmp_path / "models" / "x", tmp_path, database_url="oracle://h/db")
    with pytest.raises(ConfigError, match="scheme 'oracle' is not supported"):
        create_app(settings)


def test_bonexr_db_upgrade_migrates_by_hand(tmp_path: Path) -> None:
    import os
    import sys

    env = {**os.environ, "BONEXR_DATABASE_URL": f"sqlite:///{tmp_path / 'cli.db'}"}
    done = subprocess.run(
        [sys.executable, "-m", "bonexr.cli", "db", "upgrade"],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "schema 0005" in done.stdout
    env["BONEXR_DATABASE_URL"] = "mysql://x"
    bad = subprocess.run(
        [sys.executable, "-m", "bonexr.cli", "db", "current"],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert bad.returncode == 2 and "not supported" in bad.stderr


# ------------------------------------------------------------------ through the API


def _study(client: TestClient, seed: int, headers: dict[str, str]) -> dict[str, Any]:
    names = []
    for view in range(2):
        upload = client.post(
            "/upload", files={"file": ("x.png", png_bytes(seed=10 * seed + view))}, headers=headers
        )
        assert upload.status_code == 201, upload.text
        names.append(upload.json()["filename"])
    answer = client.post("/predict/study", json={"filenames": names}, headers=headers)
    assert answer.status_code == 200, answer.text
    return {"names": names, **answer.json()}


@pytest.fixture
def keyed(untrained_bundle: Path, tmp_path: Path) -> Iterator[TestClient]:
    settings = make_settings(
        untrained_bundle, tmp_path, api_keys=KEYS, admin_keys="alice", eligibility="warn"
    )
    with running(settings) as (client, _app):
        yield client


def test_studies_are_recorded_listed_reviewed_and_audited(keyed: TestClient) -> None:
    client = keyed
    first, second = _study(client, 1, ALICE), _study(client, 2, ALICE)
    listed = client.get("/worklist", headers=BOB).json()
    items = listed["items"]
    assert {i["id"] for i in items} == {first["record_id"], second["record_id"]}
    probabilities = [i["abnormality_probability"] for i in items]
    assert probabilities == sorted(probabilities, reverse=True)  # same group: by probability
    by_id = {i["id"]: i for i in items}
    for answer in (first, second):
        row = by_id[answer["record_id"]]
        assert row["abnormality_probability"] == pytest.approx(answer["abnormality_probability"])
        assert row["result"] == answer["result"]
        assert row["status"] == "unread" and row["views"] == 2 and row["source"] == "api"
    assert listed["counts"] == {"unread": 2, "reviewed": 0, "all": 2}

    study = client.get(f"/worklist/{first['record_id']}", headers=BOB).json()
    assert [v["filename"] for v in study["views"]] == first["names"]
    assert study["views"][0]["heatmap_url"] == f"/heatmap/{first['names'][0]}"
    reviewed = client.post(
        f"/worklist/{first['record_id']}/review",
        json={"reader_result": "abnormal", "note": "cortical break"},
        headers=BOB,
    ).json()
    assert reviewed["status"] == "reviewed"
    again = client.post(
        f"/worklist/{first['record_id']}/review", json={"reader_result": "normal"}, headers=ALICE
    ).json()
    assert [(r["reader"], r["reader_result"]) for r in again["reviews"]] == [
        ("bob", "abnormal"),
        ("alice", "normal"),
    ]
    counts = client.get("/worklist?status=unread", headers=BOB).json()
    assert [i["id"] for i in counts["items"]] == [second["record_id"]]
    assert counts["counts"] == {"unread": 1, "reviewed": 1, "all": 2}
    assert client.get(f"/heatmap/{first['names'][0]}", headers=BOB).status_code == 200

    export = client.get("/worklist/export.csv", headers=ALICE)
    assert export.headers["content-type"].startswith("text/csv")
    lines = export.text.strip().splitlines()
    assert lines[0].startswith("study_id,arrived_at") and len(lines) == 3
    assert ",bob,abnormal," in lines[1] and "cortical break" in lines[1]

    assert_error(client.get("/audit", headers=BOB), 403)
    audit = client.get("/audit", headers=ALICE).json()["items"]
    actions = [(e["key_name"], e["action"], e["study_id"], e["outcome"]) for e in audit]
    assert ("bob", "review", first["record_id"], "ok") in actions
    assert ("alice", "review", first["record_id"], "ok") in actions
    assert ("bob", "view", first["record_id"], "ok") in actions
    assert ("bob", "list", None, "ok") in actions and ("alice", "export", None, "ok") in actions
    assert ("bob", "heatmap", first["record_id"], "ok") in actions
    assert ("bob", "audit", None, "403") in actions
    for method in ("put", "delete", "post", "patch"):  # the audit has no way to change it
        assert client.request(method, "/audit", headers=ALICE).status_code == 405
    assert "\\" not in str(audit) and "key-a" not in str(audit)  # names, never the keys


def test_bad_worklist_input_is_refused_with_the_reason(keyed: TestClient) -> None:
    client = keyed
    answer = _study(client, 3, ALICE)
    unknown = "0" * 32
    assert_error(client.get(f"/worklist/{unknown}", headers=ALICE), 404)
    assert_error(client.post(f"/worklist/{unknown}/review", json={"reader_result": "normal"},
                             headers=ALICE), 404)  # fmt: skip
    assert_error(client.delete(f"/worklist/{unknown}", headers=ALICE), 404)
    bad = client.post(
        f"/worklist/{answer['record_id']}/review", json={"reader_result": "broken"}, headers=ALICE
    )
    detail = assert_error(bad, 422)["detail"]
    assert "abnormal" in detail and "normal" in detail
    assert (
        "cursor does not parse"
        in assert_error(client.get("/worklist?cursor=%%%not-base64", headers=ALICE), 400)["detail"]
    )
    assert_error(client.get("/worklist?cursor=bm90IGpzb24", headers=ALICE), 400)
    assert_error(client.get("/worklist?status=maybe", headers=ALICE), 422)
    assert_error(client.get("/worklist/not-an-id", headers=ALICE), 422)
    assert_error(client.get("/worklist", headers={"X-API-Key": "wrong"}), 401)


def test_deleting_a_record_deletes_its_uploads(keyed: TestClient) -> None:
    client = keyed
    answer = _study(client, 4, ALICE)
    assert client.get(f"/heatmap/{answer['names'][0]}", headers=ALICE).status_code == 200
    assert client.delete(f"/worklist/{answer['record_id']}", headers=ALICE).status_code == 204
    assert_error(client.get(f"/worklist/{answer['record_id']}", headers=ALICE), 404)
    assert_error(client.get(f"/heatmap/{answer['names'][0]}", headers=ALICE), 404)
    gone = client.post("/predict/study", json={"filenames": answer["names"]}, headers=ALICE)
    assert_error(gone, 404)


def test_practice_metrics_compare_model_and_reader(keyed: TestClient) -> None:
    client = keyed
    answers = [_study(client, 10 + i, ALICE) for i in range(3)]
    model = [a["result"] for a in answers]
    readers = ["abnormal", "normal", "abnormal"]
    for answer, reader in zip(answers, readers, strict=True):
        client.post(f"/worklist/{answer['record_id']}/review",
                    json={"reader_result": reader}, headers=BOB)  # fmt: skip
    text = client.get("/metrics").text
    part = answers[0]["bone_type"]
    agree = sum(m == r for m, r in zip(model, readers, strict=True)) / 3
    assert f'bonexr_practice_reviewed_studies{{part="{part}"}} 3.0' in text
    assert f'bonexr_practice_agreement{{part="{part}"}} {agree}' in text
    sensitivity = sum(
        m == "abnormal" for m, r in zip(model, readers, strict=True) if r == "abnormal"
    )
    assert f'bonexr_practice_sensitivity{{part="{part}"}} {sensitivity / 2}' in text
    assert f'bonexr_served_probability_count{{part="{part}"}} 3.0' in text


def test_records_survive_a_restart_and_expire(untrained_bundle: Path, tmp_path: Path) -> None:
    settings = make_settings(untrained_bundle, tmp_path, eligibility="warn")
    with running(settings) as (client, _app):
        kept = _study(client, 5, {})["record_id"]
    with running(settings) as (client, app):
        assert [i["id"] for i in client.get("/worklist").json()["items"]] == [kept]
        old = app.state.services.records.record(
            entry(0.8, "abnormal"), now=utcnow() - dt.timedelta(days=40)
        )
    expiring = make_settings(
        untrained_bundle, tmp_path, eligibility="warn", record_retention_days=30
    )
    with running(expiring) as (client, _app):
        assert wait_for(lambda: old not in str(client.get("/worklist").json()), timeout=30)
        assert [i["id"] for i in client.get("/worklist").json()["items"]] == [kept]


def test_a_read_only_database_is_a_503_naming_it_and_loses_nothing(
    untrained_bundle: Path, tmp_path: Path
) -> None:
    path = tmp_path / "records.db"
    writable = make_settings(
        untrained_bundle, tmp_path, database_url=f"sqlite:///{path}", eligibility="warn"
    )
    with running(writable) as (client, _app):
        kept = _study(client, 6, {})["record_id"]
    read_only = make_settings(
        untrained_bundle,
        tmp_path,
        database_url=f"sqlite:///file:{path}?mode=ro&uri=true",
        eligibility="warn",
    )
    with running(read_only, wait=False) as (client, app):
        assert wait_for(lambda: app.state.services.engine.ready, timeout=60)
        ready = client.get("/ready")
        assert ready.status_code == 503 and "records database" in ready.json()["detail"]
        names = [client.post("/upload", files={"file": ("x.png", png_bytes(seed=70 + i))})
                 .json()["filename"] for i in range(2)]  # fmt: skip
        refused = client.post("/predict/study", json={"filenames": names})
        assert "records database" in assert_error(refused, 503)["detail"]
    with running(writable) as (client, _app):
        assert [i["id"] for i in client.get("/worklist").json()["items"]] == [kept]


def test_a_full_disk_is_a_503_naming_the_database_and_loses_nothing(
    untrained_bundle: Path, tmp_path: Path
) -> None:
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.decode()[:200]}")
    try:
        settings = make_settings(
            untrained_bundle,
            tmp_path,
            database_url=f"sqlite:///{disk / 'records.db'}",
            eligibility="warn",
        )
        with running(settings) as (client, _app):
            kept = [_study(client, 20, {})["record_id"]]
            filler = disk / "filler"
            with open(filler, "wb", buffering=0) as handle:  # the rest of the disk
                while True:
                    try:
                        handle.write(b"\0" * 4096)
                    except OSError:
                        break
            answers = []
            for i in range(40):  # until the database cannot grow
                names = [
                    client.post("/upload", files={"file": ("x.png", png_bytes(seed=200 + i))})
                    .json()["filename"],
                    client.post("/upload", files={"file": ("x.png", png_bytes(seed=400 + i))})
                    .json()["filename"],
                ]  # fmt: skip
                response = client.post("/predict/study", json={"filenames": names})
                answers.append(response)
                if response.status_code == 503:
                    break
                kept.append(response.json()["record_id"])
            assert "records database" in assert_error(answers[-1], 503)["detail"]
            filler.unlink()
            listed = {i["id"] for i in client.get("/worklist?limit=200").json()["items"]}
            assert set(kept) <= listed  # every study answered 200 is still recorded
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)


def test_the_change_token_moves_with_the_worklist_and_is_not_audited(keyed: TestClient) -> None:
    client = keyed

    def token() -> str:
        answer = client.get("/worklist/changes", headers=BOB)
        assert answer.status_code == 200
        return str(answer.json()["version"])

    empty = token()
    assert token() == empty  # nothing changed
    study = _study(client, 30, ALICE)["record_id"]
    recorded = token()
    assert recorded != empty
    client.post(f"/worklist/{study}/review", json={"reader_result": "normal"}, headers=BOB)
    reviewed = token()
    assert reviewed != recorded
    assert client.get("/worklist/changes", headers=BOB).json()["counts"] == {
        "unread": 0,
        "reviewed": 1,
        "all": 1,
    }
    client.delete(f"/worklist/{study}", headers=ALICE)  # an admin: readers may not delete
    assert token() not in (reviewed, recorded)
    actions = {e["action"] for e in client.get("/audit", headers=ALICE).json()["items"]}
    assert "list" not in actions  # polling the token never touched a study
    assert client.get("/whoami", headers=ALICE).json() == {"name": "alice", "admin": True}
    assert client.get("/whoami", headers=BOB).json() == {"name": "bob", "admin": False}


def test_a_reader_amends_a_review_and_the_earlier_one_is_kept(keyed: TestClient) -> None:
    """The probe's reader could not correct a review: both verdicts stood, neither marked.
    Now an amendment replaces the reader's own review (kept, marked), counts in the practice
    metrics in its place, is audited, and leaves another reader's review alone."""
    client = keyed
    answer = _study(client, 30, ALICE)
    record = f"/worklist/{answer['record_id']}/review"
    nothing = client.post(record, json={"reader_result": "normal", "amend": True}, headers=BOB)
    assert nothing.status_code == 404 and "no review of this study to amend" in nothing.text
    client.post(record, json={"reader_result": "normal", "note": "first look"}, headers=BOB)
    client.post(record, json={"reader_result": "abnormal"}, headers=ALICE)
    amended = client.post(
        record, json={"reader_result": "abnormal", "note": "missed it", "amend": True}, headers=BOB
    )
    assert amended.status_code == 200, amended.text
    reviews = amended.json()["reviews"]
    bob = [r for r in reviews if r["reader"] == "bob"]
    assert [r["reader_result"] for r in bob] == ["normal", "abnormal"]
    assert bob[0]["replaced_by"] == bob[1]["id"] and bob[1]["amends"] == bob[0]["id"]
    assert [r["replaced_by"] for r in reviews if r["reader"] == "alice"] == [None]
    part = answer["body_part"]
    text = client.get("/metrics").text  # the amendment counts, not the first look
    model_abnormal = answer["result"] == "abnormal"
    assert f'bonexr_practice_agreement{{part="{part}"}} {1.0 if model_abnormal else 0.0}' in text
    export = list(csv.DictReader(io.StringIO(client.get("/worklist/export.csv", headers=BOB).text)))
    rows = [r for r in export if r["study_id"] == answer["record_id"] and r["reader"] == "bob"]
    assert [(r["reader_result"], r["replaced_by"] != "") for r in rows] == [
        ("normal", True),
        ("abnormal", False),
    ]
    audit = client.get("/audit", headers=ALICE).json()["items"]
    assert any(e["action"] == "amend_review" and e["key_name"] == "bob" for e in audit)


def test_views_keep_their_names_in_upload_order(keyed: TestClient) -> None:
    client = keyed
    names = []
    for view in range(3):
        upload = client.post(
            "/upload", files={"file": ("x.png", png_bytes(seed=400 + view))}, headers=ALICE
        )
        names.append(upload.json()["filename"])
    labels = ["lateral.png", "ap.png", "oblique.png"]
    answer = client.post(
        "/predict/study", json={"filenames": names, "view_names": labels}, headers=ALICE
    ).json()
    study = client.get(f"/worklist/{answer['record_id']}", headers=ALICE).json()
    assert [v["name"] for v in study["views"]] == labels
    assert [v["filename"] for v in study["views"]] == names
    mismatch = client.post(
        "/predict/study", json={"filenames": names, "view_names": labels[:2]}, headers=ALICE
    )
    assert mismatch.status_code == 422 and "one name per filename" in mismatch.json()["detail"]
