"""A real, private PostgreSQL server on loopback, for tests that need an actual database.

(No tests here; ``tests/test_postgres_support.py`` tests this harness.)

Why a real server rather than SQLite or a mock: what breaks a service backed by PostgreSQL
in practice is what a stand-in agrees with by construction (row locks and
``SELECT ... FOR UPDATE``, transaction isolation between two service instances, types,
constraint errors). Debian's ``postgresql`` package ships the server binaries under
``/usr/lib/postgresql/<major>/bin``; this harness uses only those binaries. The package's
own cluster and service (``/etc/postgresql``, ``/var/lib/postgresql``, port 5432,
``pg_ctlcluster``) are never used, nor need to be running.

Each :func:`start_postgres` call gives a fresh, throw-away server: its own ``initdb``
cluster, its own free loopback port, no password (``trust`` on the Unix socket and
``127.0.0.1`` only), settings for speed over durability (``fsync``,
``synchronous_commit`` and ``full_page_writes`` off: it holds only test data), and its
logs in the caller's ``root`` folder (``postgres.log``, ``initdb.log``), kept after
:meth:`Postgres.stop` for debugging (:meth:`Postgres.log_tail`). Tests reach it through
SQLAlchemy 2 with the psycopg 3 driver (:attr:`Postgres.url`). Typical use::

    reason = postgres_missing_reason()
    if reason:
        pytest.skip(reason)
    server = start_postgres(tmp_path / "pg")
    try:
        engine = sqlalchemy.create_engine(server.create_database("app"))
        ...
    finally:
        server.stop()

Running as root (this sandbox, CI): PostgreSQL refuses to run as root, so ``initdb`` and
``postgres`` are started with dropped privileges (``subprocess``'s ``user=``/``group=``/
``extra_groups=[]``, i.e. ``setreuid`` in the child, no ``su``/``runuser`` needed) as an
unprivileged account: ``$BONEXR_PG_OS_USER`` if set, else ``postgres`` (the account
Debian's package creates), else ``nobody``, else a ``bonexr-pg`` system user created with
``useradd --system``. Not running as root (a developer's machine), the server simply runs
as the current user.

Where the cluster lives: the data directory and the Unix socket are not under ``root``
but in a private scratch folder, ``tempfile.mkdtemp(prefix="bonexr-pg-")`` (under ``/tmp``
when dropping privileges), owned by the server account, mode 0700, removed by
:meth:`Postgres.stop`. Two reasons: pytest's ``tmp_path`` sits under
``/tmp/pytest-of-root/`` (mode 0700), which the server account cannot traverse; and a
Unix socket path must stay under ~107 bytes, which a deep ``tmp_path`` can exceed. The
logs are written through file descriptors the harness opens, so they can stay in
``root`` whoever owns it.

Stopping: :meth:`Postgres.stop` (fast shutdown, then immediate, then SIGKILL); an
``atexit`` hook stops any server a test forgot, and on Linux a parent-death signal
fast-shuts the server down if the test process dies, even by SIGKILL (its scratch folder
then stays behind in ``/tmp``: only a live process can remove it).
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import importlib
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import psycopg

#: Where Debian installs each PostgreSQL major version's server binaries.
DEBIAN_BIN_GLOB = "/usr/lib/postgresql/*/bin"

#: The binaries the harness needs (``pg_ctl`` is not run, but it is part of any complete
#: server install and handy for debugging a kept cluster by hand).
_BINARIES = ("initdb", "pg_ctl", "postgres")

#: The database superuser role (``initdb -U``), the same whichever OS account runs it.
SUPERUSER = "postgres"

#: Environment variable naming the OS account to run the server as when we are root.
OS_USER_VARIABLE = "BONEXR_PG_OS_USER"

#: Accounts tried, in order, when we are root and ``$BONEXR_PG_OS_USER`` is unset; the
#: last one is created with ``useradd --system`` if none of them exists.
_OS_USER_CANDIDATES = ("postgres", "nobody")
_CREATED_OS_USER = "bonexr-pg"

#: Settings passed as ``-c`` flags (they override the cluster's ``postgresql.conf``).
#: Durability is off on purpose: the data is throw-away. ``TimeZone`` UTC makes
#: timestamps deterministic; ``jit`` off avoids LLVM compile time on tiny queries.
SERVER_SETTINGS: dict[str, str] = {
    "listen_addresses": "127.0.0.1",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "50",
    "shared_buffers": "32MB",
    "jit": "off",
    "TimeZone": "UTC",
    "logging_collector": "off",
    "log_destination": "stderr",
    "log_line_prefix": "%m [%p] %q%u@%d ",
}

#: ``pg_hba.conf`` as the harness writes it: no password, and nothing but the Unix socket
#: and IPv4 loopback (``initdb --auth=trust`` would also allow ``::1`` and replication).
PG_HBA = (
    "# Written by harness/postgres_support.py: trust, Unix socket and 127.0.0.1 only.\n"
    "local all all trust\n"
    "host  all all 127.0.0.1/32 trust\n"
)

#: What the postmaster logs (then exits) when the port it was given is already taken:
#: the one start failure worth retrying with a fresh port.
_PORT_IN_USE = re.compile(
    r"could not bind IPv4 address .*Address already in use|"
    r"could not create any TCP/IP sockets"
)

#: Database names :meth:`Postgres.create_database` accepts: a plain identifier, so it
#: needs no escaping in a URL and fits PostgreSQL's 63-byte limit.
_DATABASE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")

#: Variables that libpq, ``initdb`` and ``postgres`` read (``PGDATA``, ``PGPORT``,
#: ``PGOPTIONS``, ...): removed from the children's environment and ignored by our own
#: connections, so a developer's settings never point the harness at another server.
_PG_VARIABLE = re.compile(r"PG[A-Z_]*")


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@lru_cache(maxsize=1)
def postgres_bin_dir() -> Path | None:
    """The newest ``/usr/lib/postgresql/<major>/bin`` holding every needed binary.

    ``$BONEXR_PG_BINDIR`` overrides the search (a non-Debian install). ``None`` if none.
    """
    override = os.environ.get("BONEXR_PG_BINDIR")
    candidates = [Path(override)] if override else []

    def major(path: Path) -> tuple[int, str]:
        name = path.parent.name
        return (int(name) if name.isdigit() else -1, name)

    candidates += sorted(map(Path, glob.glob(DEBIAN_BIN_GLOB)), key=major, reverse=True)
    for directory in candidates:
        if all(os.access(directory / name, os.X_OK) for name in _BINARIES):
            return directory
    return None


@lru_cache(maxsize=1)
def postgres_missing_reason() -> str | None:
    """Why a private PostgreSQL cannot run here, or ``None`` when it can.

    Tests call ``pytest.skip(reason)`` on a reason, or fail under CI (``CI`` set): CI
    installs the server on purpose, and a silently skipped database test there would hide
    a broken image. Cached: it imports psycopg and looks for an account once per process.
    """
    if postgres_bin_dir() is None:
        return (
            f"PostgreSQL server binaries ({', '.join(_BINARIES)}) not found under "
            f"{DEBIAN_BIN_GLOB} (apt-get install postgresql)"
        )
    try:
        importlib.import_module("psycopg")
    except ImportError as exc:
        return f"psycopg 3 is not importable ({exc}): pip install 'psycopg[binary]>=3.1'"
    if os.geteuid() == 0:
        try:
            _server_account(create=False)
        except LookupError as exc:
            if shutil.which("useradd") is None:
                return f"running as root and {exc}; useradd is missing to create one"
    return None


@dataclass(frozen=True)
class _Account:
    """The OS account the server runs as; ``drop`` is False when it is simply us."""

    name: str
    uid: int
    gid: int
    drop: bool


def _server_account(*, create: bool = True) -> _Account:
    """Who runs ``initdb`` and ``postgres``: an unprivileged account when we are root.

    PostgreSQL refuses to run as root (``"root" execution of the PostgreSQL server is not
    permitted``). Not root: the current user. Root: ``$BONEXR_PG_OS_USER``, ``postgres``,
    ``nobody``, or (``create``) a ``bonexr-pg`` system user made with ``useradd --system``.
    Raises ``LookupError`` when none exists and ``create`` is false.
    """
    if os.geteuid() != 0:
        entry = pwd.getpwuid(os.geteuid())
        return _Account(entry.pw_name, os.geteuid(), os.getegid(), drop=False)
    wanted = os.environ.get(OS_USER_VARIABLE)
    names = (wanted,) if wanted else (*_OS_USER_CANDIDATES, _CREATED_OS_USER)
    for name in names:
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        if entry.pw_uid == 0:
            raise LookupError(f"{name} is root; PostgreSQL needs an unprivileged account")
        return _Account(entry.pw_name, entry.pw_uid, entry.pw_gid, drop=True)
    if wanted or not create:
        raise LookupError(f"no unprivileged account to run PostgreSQL as (tried {names})")
    subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
         _CREATED_OS_USER],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    entry = pwd.getpwnam(_CREATED_OS_USER)
    return _Account(entry.pw_name, entry.pw_uid, entry.pw_gid, drop=True)


def _free_port() -> int:
    """A TCP port free on loopback right now: bind port 0, read it, release it.

    Racy by nature (another process may take it before the postmaster binds it), hence
    the retry in :func:`start_postgres`.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _child_environment(home: Path) -> dict[str, str]:
    """Our environment without libpq's ``PG*`` variables, in the C locale."""
    env = {key: value for key, value in os.environ.items() if not _PG_VARIABLE.fullmatch(key)}
    env.update(LC_ALL="C", LANG="C", HOME=str(home))
    return env


def _parent_death_hook() -> Callable[[], None] | None:
    """Linux: a ``preexec_fn`` that has the kernel fast-shutdown (SIGINT) the postmaster
    when the thread that started it dies, even by SIGKILL (which skips ``atexit``).

    ``prctl`` is looked up here, in the parent: the hook runs in the forked child after it
    dropped privileges (``subprocess`` calls ``preexec_fn`` after ``setreuid``, which
    matters, since a credential change clears the parent-death signal), and as
    ``postgres``/``nobody`` the child may no longer read Python's own files (a pyenv
    under ``/root``), so importing ``ctypes`` there would fail. The signal is tied to the
    *thread* that forked, so there is no hook (``None``) outside the main thread.
    """
    if not sys.platform.startswith("linux") or not _in_main_thread():
        return None
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (ImportError, OSError, AttributeError):
        return None
    sigint = int(signal.SIGINT)

    def hook() -> None:  # pragma: no cover - runs in the forked child
        prctl(1, sigint)  # PR_SET_PDEATHSIG

    return hook


def _connect(port: int, dbname: str, host: str = "127.0.0.1") -> psycopg.Connection[Any]:
    """An autocommit psycopg connection for the harness's own use.

    Every parameter is explicit, so no ``PG*`` variable of the caller's environment
    (``PGOPTIONS``, ``PGSSLMODE``, ...) fills a gap.
    """
    import psycopg

    return psycopg.connect(
        host=host,
        port=port,
        user=SUPERUSER,
        dbname=dbname,
        connect_timeout=5,
        sslmode="disable",
        options="",
        autocommit=True,
    )


#: Servers started and not yet stopped, stopped at interpreter exit if a test forgot.
#: Strong references: a server whose object was dropped must still be stopped.
_LIVE: set[Postgres] = set()


@atexit.register
def _stop_leftovers() -> None:
    for server in list(_LIVE):
        if server.owner_pid == os.getpid():  # not in a forked child that exits normally
            server.stop()


class PostgresStartError(RuntimeError):
    """The server did not start; the message carries the log tail."""


@dataclass(eq=False)
class Postgres:
    """A running private PostgreSQL: where it lives, how to reach it, how to stop it."""

    #: The caller's folder: ``postgres.log`` and ``initdb.log``, kept after :meth:`stop`.
    root: Path
    port: int
    #: The Unix socket's folder (in :attr:`scratch`), for ``psql -h SOCKET_DIR``.
    socket_dir: Path
    #: The database superuser role in :attr:`url` (``postgres``).
    user: str
    #: The OS account the server runs as (``postgres``/``nobody`` under root, else us).
    os_user: str
    #: The cluster (``initdb -D``), in :attr:`scratch`.
    data_dir: Path
    #: The private folder holding :attr:`data_dir` and :attr:`socket_dir`; removed on stop.
    scratch: Path
    #: The postmaster itself (no ``pg_ctl`` in between), in a session of its own so a
    #: Ctrl-C at the terminal reaches pytest (which then stops it), not the server.
    process: subprocess.Popen[bytes]
    #: The process that started it: only that one's ``atexit`` hook stops it.
    owner_pid: int = field(default_factory=os.getpid)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _stopped: bool = field(default=False, repr=False)

    @property
    def url(self) -> str:
        """SQLAlchemy URL of the ``postgres`` database (trust auth, TCP on loopback)."""
        return self.url_for("postgres")

    def url_for(self, database: str) -> str:
        """SQLAlchemy URL (psycopg 3 driver) of one database of this server."""
        return f"postgresql+psycopg://{self.user}@127.0.0.1:{self.port}/{database}"

    @property
    def log_path(self) -> Path:
        """The postmaster's stderr (its log), kept after :meth:`stop`."""
        return self.root / "postgres.log"

    def log_tail(self, n: int = 40) -> str:
        """The last ``n`` lines of the server log: put it in assertion messages."""
        return _tail(self.log_path, n)

    def create_database(self, name: str) -> str:
        """Create an empty database ``name`` (from ``template0``) and return its URL.

        One database per test or per "service instance" keeps tests independent on one
        server: starting a server costs ~1 s, creating a database a few tens of ms.
        ``name`` must be a plain identifier (letters, digits, ``_``); an existing name
        raises psycopg's ``DuplicateDatabase``.
        """
        if not _DATABASE_NAME.fullmatch(name):
            raise ValueError(f"not a plain database identifier: {name!r}")
        from psycopg import sql

        with _connect(self.port, "postgres") as conn:
            conn.execute(
                sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(name))
            )
        return self.url_for(name)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the server and remove its cluster; safe to call twice (and from atexit).

        Fast shutdown (SIGINT: open sessions are ended, a quick checkpoint) and wait; if
        still running after ``timeout``, immediate shutdown (SIGQUIT), then SIGKILL. An
        idle server stops in ~0.03 s. The logs in :attr:`root` stay.
        """
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        _LIVE.discard(self)
        try:
            _terminate(self.process, timeout)
        finally:
            shutil.rmtree(self.scratch, ignore_errors=True)


def _tail(path: Path, n: int) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError as exc:
        return f"(no log at {path}: {exc})"
    return "\n".join(lines[-n:])


def _terminate(process: subprocess.Popen[bytes], timeout: float) -> None:
    """Fast shutdown, then immediate shutdown, then SIGKILL; always reaped.

    Only the postmaster is signalled: PostgreSQL puts each backend in its own process
    group, and every backend exits by itself once it sees the postmaster gone.
    """
    for sig, wait in ((signal.SIGINT, timeout), (signal.SIGQUIT, 10.0)):
        if process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=wait)
            return
    process.kill()
    process.wait()


def _make_scratch(account: _Account) -> Path:
    """A private folder the server account owns (mode 0700) and can reach.

    Under ``/tmp`` (world-traversable, sticky) when dropping privileges: ``$TMPDIR`` or
    pytest's ``tmp_path`` may sit in a folder only root can traverse. Short, too, so the
    socket path fits the ~107-byte limit of a Unix socket address.
    """
    base = "/tmp" if account.drop and os.path.isdir("/tmp") else None
    scratch = Path(tempfile.mkdtemp(prefix="bonexr-pg-", dir=base))
    (scratch / "socket").mkdir(mode=0o700)
    if account.drop:
        for path in (scratch, scratch / "socket"):
            os.chown(path, account.uid, account.gid)
    return scratch


def _initdb(bin_dir: Path, account: _Account, scratch: Path, root: Path, timeout: float) -> Path:
    """``initdb`` a UTF-8, C-locale cluster with superuser ``postgres`` and our pg_hba."""
    data = scratch / "data"
    command = [
        str(bin_dir / "initdb"), "-D", str(data), "-U", SUPERUSER, "--auth=trust",
        "--encoding=UTF8", "--locale=C", "--no-sync", "--no-instructions",
    ]  # fmt: skip
    log = root / "initdb.log"
    with log.open("wb") as out:
        result = subprocess.run(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=scratch,
            env=_child_environment(scratch),
            timeout=timeout,
            # Not root: None, run as we are. Root: the account, without root's groups.
            user=account.uid if account.drop else None,
            group=account.gid if account.drop else None,
            extra_groups=[] if account.drop else None,
        )
    if result.returncode != 0:
        raise PostgresStartError(
            f"initdb exited {result.returncode} (as {account.name}):\n{_tail(log, 40)}"
        )
    hba = data / "pg_hba.conf"
    hba.write_text(PG_HBA)
    if account.drop:
        os.chown(hba, account.uid, account.gid)
    return data


def _wait_ready(
    process: subprocess.Popen[bytes], port: int, socket_dir: Path, deadline: float
) -> str | None:
    """Wait until ``SELECT 1`` succeeds; the last error if the postmaster exited first.

    Polls through the server's own Unix socket, which can only be ours: polling the TCP
    port instead would, when another program took that port first, connect to *it* (and
    hang up to ``connect_timeout`` on a listener that never answers). The postmaster binds
    TCP before it creates the socket, so once the socket answers, the port is ours too,
    and a final ``SELECT 1`` over TCP checks the path tests use. Returns ``None`` once
    ready; raises ``TimeoutError`` at ``deadline``.
    """
    import psycopg

    last = "no attempt"
    while True:
        if process.poll() is not None:
            return f"postgres exited {process.returncode} (last connect error: {last})"
        try:
            for host in (str(socket_dir), "127.0.0.1"):
                with _connect(port, "postgres", host) as conn:
                    conn.execute("SELECT 1").fetchone()
            return None
        except psycopg.OperationalError as exc:
            last = str(exc).strip()
        if time.monotonic() > deadline:
            raise TimeoutError(last)
        time.sleep(0.05)


def start_postgres(root: Path, *, timeout: float = 60.0, port_attempts: int = 5) -> Postgres:
    """Start a fresh private server (``initdb`` + ``postgres``) and wait until it answers.

    ``root`` (created if missing) receives the logs; the cluster lives in a private
    scratch folder (see the module docstring for why). ``timeout`` bounds ``initdb`` and,
    separately, each wait for ``SELECT 1``. A port taken between picking it and binding it
    is retried with a fresh one, up to ``port_attempts`` times. Any other failure raises
    :class:`PostgresStartError` with the log tail, after cleaning up.
    """
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        raise PostgresStartError(postgres_missing_reason() or "PostgreSQL binaries missing")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    account = _server_account()
    scratch = _make_scratch(account)
    try:
        data = _initdb(bin_dir, account, scratch, root, timeout)
        log_path = root / "postgres.log"
        for attempt in range(1, port_attempts + 1):
            port = _free_port()
            command = [str(bin_dir / "postgres"), "-D", str(data), "-p", str(port),
                       "-c", f"unix_socket_directories={scratch / 'socket'}"]  # fmt: skip
            for key, value in SERVER_SETTINGS.items():
                command += ["-c", f"{key}={value}"]
            with log_path.open("ab") as log:  # the child keeps its own copy of the fd
                offset = log.tell()
                process = subprocess.Popen(
                    command,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    cwd=scratch,
                    env=_child_environment(scratch),
                    start_new_session=True,  # a terminal's Ctrl-C reaches pytest, not it
                    preexec_fn=_parent_death_hook(),
                    user=account.uid if account.drop else None,
                    group=account.gid if account.drop else None,
                    extra_groups=[] if account.drop else None,
                )
            server = Postgres(
                root=root,
                port=port,
                socket_dir=scratch / "socket",
                user=SUPERUSER,
                os_user=account.name,
                data_dir=data,
                scratch=scratch,
                process=process,
            )
            try:
                failure = _wait_ready(process, port, scratch / "socket", time.monotonic() + timeout)
            except TimeoutError as exc:
                _terminate(process, 10.0)
                raise PostgresStartError(
                    f"postgres did not answer SELECT 1 on port {port} within {timeout:.0f} s "
                    f"({exc}):\n{server.log_tail()}"
                ) from None
            except BaseException:
                _terminate(process, 10.0)
                raise
            if failure is None:
                _LIVE.add(server)
                return server
            _terminate(process, 10.0)
            with log_path.open("rb") as reread:
                reread.seek(offset)
                this_attempt = reread.read().decode(errors="replace")
            if not _PORT_IN_USE.search(this_attempt) or attempt == port_attempts:
                raise PostgresStartError(f"{failure}:\n{server.log_tail()}")
        raise AssertionError("unreachable")
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
