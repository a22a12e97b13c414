"""The private-PostgreSQL harness (harness/postgres_support.py) works: start as an unprivileged
account, two databases, two SQLAlchemy engines as two "service instances", row locks with
``SELECT ... FOR UPDATE`` across them, stop (port closed, cluster removed), port retry,
start-failure reporting, and no server left behind when the test process is killed.

Tests of the harness only. Skipped where the server binaries or psycopg are missing, except
under CI (``CI`` set), where that is a failure (CI installs them on purpose).
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import postgres_support
from harness.postgres_support import (
    Postgres,
    PostgresStartError,
    postgres_missing_reason,
    start_postgres,
)
from tests.tools import in_ci

REPO = Path(__file__).resolve().parents[1]

#: Every engine here gives up on a lock after 10 s: a harness bug fails, never hangs.
LOCK_TIMEOUT = {"options": "-c lock_timeout=10000"}


def _require_postgres() -> None:
    reason = postgres_missing_reason()
    if reason is None and importlib.util.find_spec("sqlalchemy") is None:
        reason = "SQLAlchemy 2 is not installed (pip install 'sqlalchemy>=2')"
    if reason is None:
        return
    if in_ci():
        pytest.fail(f"CI must run the PostgreSQL harness tests, but: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Postgres]:
    _require_postgres()
    pg = start_postgres(tmp_path_factory.mktemp("pg"))
    try:
        yield pg
    finally:
        pg.stop()


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _process_gone(pid: int) -> bool:
    """True once ``pid`` no longer runs (a zombie counts as gone: it holds no port)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def test_server_settings_and_account(server: Postgres) -> None:
    from sqlalchemy import create_engine, text

    engine = create_engine(server.url)
    try:
        with engine.connect() as conn:
            settings: dict[str, str] = {
                name: conn.execute(text(f"SHOW {name}")).scalar_one()
                for name in (
                    "fsync",
                    "synchronous_commit",
                    "full_page_writes",
                    "max_connections",
                    "listen_addresses",
                    "server_encoding",
                    "TimeZone",
                )
            }
            user: str = conn.execute(text("SELECT current_user")).scalar_one()
            data_directory: str = conn.execute(text("SHOW data_directory")).scalar_one()
    finally:
        engine.dispose()
    assert settings == {
        "fsync": "off",
        "synchronous_commit": "off",
        "full_page_writes": "off",
        "max_connections": "50",
        "listen_addresses": "127.0.0.1",
        "server_encoding": "UTF8",
        "TimeZone": "UTC",
    }
    assert user == server.user == "postgres"
    assert Path(data_directory) == server.data_dir
    assert server.url == f"postgresql+psycopg://postgres@127.0.0.1:{server.port}/postgres"
    # PostgreSQL refuses root: under root the server runs as an unprivileged account.
    owner = Path(f"/proc/{server.process.pid}").stat().st_uid
    assert pwd.getpwuid(owner).pw_name == server.os_user
    assert owner == server.data_dir.stat().st_uid
    if os.geteuid() == 0:
        assert owner != 0
    else:
        assert owner == os.geteuid()
    assert (server.data_dir / "pg_hba.conf").read_text() == postgres_support.PG_HBA
    assert "database system is ready to accept connections" in server.log_tail()


def test_two_databases_and_two_service_instances(server: Postgres) -> None:
    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import ProgrammingError

    url_a = server.create_database("service_a")
    url_b = server.create_database("service_b")
    assert url_a == server.url_for("service_a") and url_a.endswith("/service_a")
    # Two engines on one database: two instances of a service sharing its store.
    first = create_engine(url_a, connect_args=LOCK_TIMEOUT)
    second = create_engine(url_a, connect_args=LOCK_TIMEOUT)
    other = create_engine(url_b, connect_args=LOCK_TIMEOUT)
    try:
        with first.begin() as conn:
            conn.execute(text("CREATE TABLE jobs (id serial PRIMARY KEY, name text NOT NULL)"))
            conn.execute(text("INSERT INTO jobs (name) VALUES ('one'), ('two')"))
        with second.begin() as conn:
            conn.execute(text("INSERT INTO jobs (name) VALUES ('three')"))
        with first.connect() as conn:
            names: list[str] = list(
                conn.execute(text("SELECT name FROM jobs ORDER BY id")).scalars().all()
            )
        assert names == ["one", "two", "three"]
        # The second database is separate: no such table there.
        with other.connect() as conn, pytest.raises(ProgrammingError, match="jobs"):
            conn.execute(text("SELECT * FROM jobs"))
    finally:
        for engine in (first, second, other):
            engine.dispose()


def _wait_for_lock_waiter(server: Postgres, database: str, timeout: float = 10.0) -> None:
    """Block until some session of ``database`` waits for a row lock (no sleep guessing)."""
    import psycopg

    deadline = time.monotonic() + timeout
    with psycopg.connect(
        host="127.0.0.1", port=server.port, user=server.user, dbname="postgres", autocommit=True
    ) as conn:
        while time.monotonic() < deadline:
            waiting = conn.execute(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE datname = %s AND wait_event_type = 'Lock'",
                (database,),
            ).fetchone()
            if waiting and waiting[0]:
                return
            time.sleep(0.02)
    raise AssertionError("no session started waiting for the row lock")


def test_select_for_update_across_instances(server: Postgres) -> None:
    import psycopg
    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import OperationalError

    url = server.create_database("locks")
    first = create_engine(url, connect_args=LOCK_TIMEOUT)
    second = create_engine(url, connect_args=LOCK_TIMEOUT)
    try:
        with first.begin() as conn:
            conn.execute(text("CREATE TABLE counters (id int PRIMARY KEY, value int NOT NULL)"))
            conn.execute(text("INSERT INTO counters VALUES (1, 0), (2, 0)"))

        lock_row_1 = text("SELECT value FROM counters WHERE id = 1 FOR UPDATE")
        with first.connect() as holder:
            holder.execute(lock_row_1)  # instance 1 holds row 1 (its transaction is open)
            with second.connect() as conn:
                with pytest.raises(OperationalError) as refused:
                    conn.execute(text("SELECT 1 FROM counters WHERE id = 1 FOR UPDATE NOWAIT"))
                assert isinstance(refused.value.orig, psycopg.errors.LockNotAvailable)
                conn.rollback()
                free = conn.execute(
                    text("SELECT id FROM counters ORDER BY id FOR UPDATE SKIP LOCKED")
                )
                assert free.scalars().all() == [2]
                conn.rollback()

            # A blocking FOR UPDATE on instance 2 waits for instance 1's commit, then sees
            # the committed value (READ COMMITTED re-reads the locked row).
            seen: dict[str, float] = {}

            def waiter() -> None:
                with second.begin() as conn:
                    seen["value"] = conn.execute(lock_row_1).scalar_one()
                    seen["at"] = time.monotonic()

            thread = threading.Thread(target=waiter)
            thread.start()
            _wait_for_lock_waiter(server, "locks")
            assert "value" not in seen
            holder.execute(text("UPDATE counters SET value = value + 10 WHERE id = 1"))
            released = time.monotonic()
            holder.commit()
            thread.join(timeout=15)
            assert not thread.is_alive()
        assert seen["value"] == 10 and seen["at"] >= released

        # Read-modify-write from both instances at once: the row lock loses no update.
        errors: list[BaseException] = []

        def bump(engine_index: int) -> None:
            engine = (first, second)[engine_index % 2]
            try:
                for _ in range(10):
                    with engine.begin() as conn:
                        value: int = conn.execute(lock_row_1).scalar_one()
                        conn.execute(
                            text("UPDATE counters SET value = :v WHERE id = 1"), {"v": value + 1}
                        )
            except BaseException as exc:  # reported below, in the test's thread
                errors.append(exc)

        threads = [threading.Thread(target=bump, args=(i,)) for i in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert not errors, errors
        with first.connect() as conn:
            assert conn.execute(text("SELECT value FROM counters WHERE id = 1")).scalar_one() == 70
    finally:
        first.dispose()
        second.dispose()


def test_stop_closes_port_and_removes_cluster(tmp_path: Path) -> None:
    import psycopg

    _require_postgres()
    started = time.monotonic()
    pg = start_postgres(tmp_path / "pg")
    start_s = time.monotonic() - started
    url = pg.create_database("doomed")
    session = psycopg.connect(url.replace("+psycopg", ""))  # open: fast shutdown ends it
    try:
        assert session.execute("SELECT 1").fetchone() == (1,)
        assert _port_open(pg.port)
        started = time.monotonic()
        pg.stop()
        stop_s = time.monotonic() - started
        with pytest.raises(psycopg.OperationalError):
            session.execute("SELECT 1")
    finally:
        session.close()
    pg.stop()  # a second stop is harmless
    assert pg.process.poll() is not None
    assert not _port_open(pg.port)
    assert not pg.scratch.exists()
    assert pg not in postgres_support._LIVE
    assert "database system is shut down" in pg.log_tail()
    assert (tmp_path / "pg" / "initdb.log").is_file()
    print(f"start {start_s:.2f} s, stop {stop_s:.2f} s")


def test_port_taken_before_bind_is_retried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _require_postgres()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        real = postgres_support._free_port
        ports = iter([busy])
        monkeypatch.setattr(postgres_support, "_free_port", lambda: next(ports, None) or real())
        pg = start_postgres(tmp_path / "pg")
        try:
            assert pg.port != busy
            assert "Address already in use" in pg.log_path.read_text()
        finally:
            pg.stop()


def test_start_failure_reports_the_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _require_postgres()
    settings = {**postgres_support.SERVER_SETTINGS, "max_connections": "not-a-number"}
    monkeypatch.setattr(postgres_support, "SERVER_SETTINGS", settings)
    scratches: list[Path] = []
    make_scratch = postgres_support._make_scratch

    def recording(account: postgres_support._Account) -> Path:
        scratches.append(make_scratch(account))
        return scratches[-1]

    monkeypatch.setattr(postgres_support, "_make_scratch", recording)
    with pytest.raises(PostgresStartError, match="max_connections") as failure:
        start_postgres(tmp_path / "pg")
    assert "postgres exited" in str(failure.value)  # and the log tail says why
    assert len(scratches) == 1 and not scratches[0].exists()  # its cluster was removed


_ORPHAN = """
import sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[2])
from harness.postgres_support import start_postgres
pg = start_postgres(Path(sys.argv[1]))
print(pg.process.pid, pg.port, pg.scratch, flush=True)
time.sleep(120)
"""


def test_killed_test_process_leaves_no_server(tmp_path: Path) -> None:
    """SIGKILL skips atexit: the parent-death signal must still shut the server down."""
    _require_postgres()
    child = subprocess.Popen(
        [sys.executable, "-c", _ORPHAN, str(tmp_path / "pg"), str(REPO)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    line = child.stdout.readline().split()
    assert len(line) == 3, "the child did not start a server"
    pid, port, scratch = int(line[0]), int(line[1]), Path(line[2])
    try:
        assert _port_open(port)
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
        deadline = time.monotonic() + 15
        while not _process_gone(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _process_gone(pid), "postgres outlived the killed test process"
        assert not _port_open(port)
    finally:
        if not _process_gone(pid):
            os.kill(pid, signal.SIGKILL)
        child.kill()
        child.wait()
        # What a killed process cannot do: remove its scratch folder (the cluster).
        shutil.rmtree(scratch, ignore_errors=True)
