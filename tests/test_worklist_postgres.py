"""The worklist on a real PostgreSQL (Debian's, started here on loopback): what replicas need.

Two service instances on one database see one worklist; two readers reviewing one study at
the same moment, on different instances, are both recorded; records survive a restart;
migrations run once when both instances start together; a read-only database is a 503
naming it and loses nothing.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from harness.postgres_support import Postgres, postgres_missing_reason, start_postgres
from harness.service_support import assert_error, make_settings, png_bytes, running, wait_for
from service.adapters.records.database import Database
from tests.tools import missing

KEYS = "alice:key-a,bob:key-b"


@pytest.fixture(scope="module")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Postgres]:
    reason = postgres_missing_reason()
    if reason is not None:
        missing("PostgreSQL", f"apt install postgresql ({reason})")
    server = start_postgres(tmp_path_factory.mktemp("postgres"))
    yield server
    server.stop()


def _settings(bundle: Path, tmp: Path, url: str, name: str) -> Any:
    return make_settings(
        bundle, tmp / name, database_url=url, api_keys=KEYS, admin_keys="alice", eligibility="warn"
    )


def _study(client: TestClient, seed: int) -> str:
    names = [
        client.post(
            "/upload",
            files={"file": ("x.png", png_bytes(seed=seed + v))},
            headers={"X-API-Key": "key-a"},
        ).json()["filename"]
        for v in range(2)
    ]
    answer = client.post(
        "/predict/study", json={"filenames": names}, headers={"X-API-Key": "key-a"}
    )
    assert answer.status_code == 200, answer.text
    return str(answer.json()["record_id"])


def test_two_instances_on_one_postgres_share_one_worklist(
    postgres: Postgres, untrained_bundle: Path, tmp_path: Path
) -> None:
    url = postgres.create_database("shared")
    one, two = (_settings(untrained_bundle, tmp_path, url, n) for n in ("one", "two"))
    with running(one) as (a, _), running(two) as (b, _):
        first, second = _study(a, 100), _study(b, 200)
        for client in (a, b):
            listed = client.get("/worklist", headers={"X-API-Key": "key-b"}).json()
            assert {i["id"] for i in listed["items"]} == {first, second}

        # two readers, one study, the same moment, on different instances: both recorded
        barrier = threading.Barrier(2)
        answers: list[Any] = []

        def review(client: TestClient, key: str, result: str) -> None:
            barrier.wait()
            answers.append(
                client.post(
                    f"/worklist/{first}/review",
                    json={"reader_result": result},
                    headers={"X-API-Key": key},
                )
            )

        threads = [
            threading.Thread(target=review, args=(a, "key-a", "abnormal")),
            threading.Thread(target=review, args=(b, "key-b", "normal")),
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert [r.status_code for r in answers] == [200, 200]
        study = a.get(f"/worklist/{first}", headers={"X-API-Key": "key-a"}).json()
        assert sorted((r["reader"], r["reader_result"]) for r in study["reviews"]) == [
            ("alice", "abnormal"),
            ("bob", "normal"),
        ]
        assert study["status"] == "reviewed"
        audit = b.get("/audit", headers={"X-API-Key": "key-a"}).json()["items"]
        reviews = {(e["key_name"], e["study_id"]) for e in audit if e["action"] == "review"}
        assert reviews == {("alice", first), ("bob", first)}  # one audit, both instances

    # a restart of both: the records are still there
    with running(one) as (a, _):
        listed = a.get("/worklist", headers={"X-API-Key": "key-a"}).json()
        assert {i["id"] for i in listed["items"]} == {first, second}
        assert listed["counts"] == {"unread": 1, "reviewed": 1, "all": 2}
    database = Database(url)
    assert database.revision() == "0005"
    database.dispose()


def test_a_read_only_postgres_is_a_503_naming_it_and_loses_nothing(
    postgres: Postgres, untrained_bundle: Path, tmp_path: Path
) -> None:
    import psycopg

    url = postgres.create_database("readonly")
    settings = _settings(untrained_bundle, tmp_path, url, "ro")
    with running(settings) as (client, _):
        kept = _study(client, 300)
    admin = postgres.url.replace("postgresql+psycopg", "postgresql")
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute("ALTER DATABASE readonly SET default_transaction_read_only = on")
    try:
        with running(settings, wait=False) as (client, app):
            assert wait_for(lambda: app.state.services.engine.ready, timeout=60)
            ready = client.get("/ready")
            assert ready.status_code == 503
            assert "records database" in ready.json()["detail"]
            assert "read-only" in ready.json()["detail"]
            names = [
                client.post(
                    "/upload",
                    files={"file": ("x.png", png_bytes(seed=400 + v))},
                    headers={"X-API-Key": "key-a"},
                ).json()["filename"]
                for v in range(2)
            ]
            refused = client.post(
                "/predict/study", json={"filenames": names}, headers={"X-API-Key": "key-a"}
            )
            assert "records database" in assert_error(refused, 503)["detail"]
    finally:
        with psycopg.connect(admin, autocommit=True) as connection:
            connection.execute("ALTER DATABASE readonly SET default_transaction_read_only = off")
    with running(settings) as (client, _):
        listed = client.get("/worklist", headers={"X-API-Key": "key-a"}).json()
        assert [i["id"] for i in listed["items"]] == [kept]


def test_a_postgres_that_is_down_is_named_by_ready(untrained_bundle: Path, tmp_path: Path) -> None:
    from harness.service_support import free_port

    url = f"postgresql+psycopg://nobody@127.0.0.1:{free_port()}/none"
    with running(_settings(untrained_bundle, tmp_path, url, "down"), wait=False) as (client, app):
        assert wait_for(lambda: app.state.services.engine.ready, timeout=60)
        ready = client.get("/ready")
        assert ready.status_code == 503
        detail = ready.json()["detail"]
        assert "records database postgresql+psycopg://nobody@127.0.0.1" in detail
        assert client.get("/health").status_code == 200
