"""The records database: its URL, the engine, the migrations, and whether it works now.

``BONEXR_DATABASE_URL``: SQLite (``sqlite:///path``; default ``bonexr.db`` in the upload
folder, in WAL mode so readers never wait for a writer) for one instance, PostgreSQL
(``postgresql+psycopg://user:pass@host/db``) for several replicas sharing one worklist.
Any other scheme is refused at start-up with the reason. Alembic migrations run at start-up
(``bonexr db upgrade`` runs them by hand); on PostgreSQL under an advisory lock and on SQLite
under a file lock, so replicas starting together migrate once.

Every call here blocks: callers run them in worker threads. A database that fails (down,
read-only, full) raises :class:`~service.domain.errors.RecordsUnavailableError` (503, naming it).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from bonexr.errors import ConfigError
from service.domain.errors import RecordsUnavailableError

log = logging.getLogger("bonexr.records")

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
#: PostgreSQL advisory lock id of the migrations (any constant shared by the replicas)
MIGRATION_LOCK = 0x626F6E6578
SUPPORTED = ("sqlite", "postgresql+psycopg", "postgresql")


@contextlib.contextmanager
def opened(configured: str | None, upload_dir: Path) -> Iterator[Database]:
    """The records database for one command (``bonexr db``, ``export-reviews``,
    ``shadow-report``), disposed of after it."""
    database = Database(database_url(configured, upload_dir))
    try:
        yield database
    finally:
        database.dispose()


def database_url(configured: str | None, upload_dir: Path) -> str:
    """The configured URL, checked; else the SQLite file ``bonexr.db`` in the upload folder
    (so the uploads volume of a container keeps it, and two services whose upload folders
    sit side by side never share a worklist by accident; the upload store ignores it)."""
    if not configured:
        return f"sqlite:///{Path(upload_dir).resolve() / 'bonexr.db'}"
    try:
        url = make_url(configured)
    except ArgumentError:
        raise ConfigError(
            "BONEXR_DATABASE_URL is not a database URL (e.g. sqlite:///records.db or "
            "postgresql+psycopg://user:password@host/bonexr)"
        ) from None
    if url.drivername not in SUPPORTED:
        raise ConfigError(
            f"BONEXR_DATABASE_URL scheme {url.drivername!r} is not supported: use sqlite:/// "
            "(one instance) or postgresql+psycopg:// (replicas)"
        )
    if url.drivername == "postgresql":  # the driver bonexr installs
        url = url.set(drivername="postgresql+psycopg")
    return url.render_as_string(hide_password=False)


def describe(url: str) -> str:
    """The URL without its password, for messages and logs."""
    return make_url(url).render_as_string(hide_password=True)


class Database:
    """One engine per app; sessions per unit of work."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.label = describe(url)
        self.is_sqlite = url.startswith("sqlite")
        options: dict[str, Any] = {"pool_pre_ping": True}
        if self.is_sqlite:
            options["connect_args"] = {"timeout": 15, "check_same_thread": False}
        else:
            options["connect_args"] = {"connect_timeout": 5}
            options.update(pool_size=5, max_overflow=5, pool_timeout=10)
        self.engine: Engine = create_engine(url, **options)
        if self.is_sqlite:
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextlib.contextmanager
    def session(self) -> Iterator[Session]:
        """A transaction: committed at the end, rolled back on error; a database error
        becomes the 503 that names the database."""
        try:
            with self._sessions.begin() as session:
                yield session
        except DBAPIError as exc:
            raise self.unavailable(exc) from None

    def unavailable(self, exc: SQLAlchemyError) -> RecordsUnavailableError:
        reason = str(getattr(exc, "orig", exc)).strip().splitlines()[0][:160]
        log.error("records database %s failed: %s", self.label, reason)
        return RecordsUnavailableError(f"the records database is unavailable ({reason})")

    def problem(self) -> str | None:
        """Why the database cannot be used now (for ``/ready``), or None."""
        try:
            with self.engine.connect() as connection:
                if self.is_sqlite:  # a write, rolled back: fails when read-only
                    with connection.begin() as probe:
                        connection.execute(
                            text("UPDATE alembic_version SET version_num = version_num")
                        )
                        probe.rollback()
                elif connection.execute(text("SHOW transaction_read_only")).scalar() == "on":
                    return f"records database {self.label} is read-only"
        except SQLAlchemyError as exc:
            reason = str(getattr(exc, "orig", exc)).strip().splitlines()[0][:160]
            return f"records database {self.label} is unavailable ({reason})"
        return None

    def upgrade(self, revision: str = "head") -> None:
        """Run the migrations up to ``revision`` (once, whoever else starts now)."""
        from alembic import command
        from alembic.config import Config

        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        with self._migration_lock(), self.engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, revision)

    @contextlib.contextmanager
    def _migration_lock(self) -> Iterator[None]:
        if self.is_sqlite:
            database = make_url(self.url).database or ""
            if database.startswith("file:"):  # an SQLite URI filename (uri=true)
                database = database[len("file:") :].split("?", 1)[0]
            if not database or database == ":memory:":
                yield
                return
            path = Path(database)
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(f"{path}.migrate-lock", "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                yield
            return
        with self.engine.connect() as connection:
            connection.execute(text("SELECT pg_advisory_lock(:k)"), {"k": MIGRATION_LOCK})
            try:
                yield
            finally:
                connection.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": MIGRATION_LOCK})
                connection.commit()

    def revision(self) -> str | None:
        """The schema's current migration (None: not migrated)."""
        from alembic.runtime.migration import MigrationContext

        with self.engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()

    def dispose(self) -> None:
        self.engine.dispose()


def _sqlite_pragmas(connection: Any, _record: Any) -> None:
    """WAL (readers never block on the writer), a busy wait instead of "database is locked",
    and foreign keys on (SQLite leaves them off)."""
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=15000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()
