"""A real, private Orthanc PACS on loopback, for tests that must talk to an actual PACS.

(No tests here; ``tests/test_orthanc_support.py`` tests this harness.)

Why a real Orthanc rather than a mock: what breaks DICOM integrations in practice is what
a mock agrees with by construction (association negotiation, transfer syntaxes, the
multipart framing of STOW-RS and WADO-RS, QIDO's attribute selection). Debian packages
Orthanc and its DICOMweb plugin, so a test can start one in ~0.2 s (a clean stop takes
~3.5 s: stop several at once with :func:`stop_all`).

Each :func:`start_orthanc` call gives a fresh, throw-away server: its own free HTTP and
DICOM ports, its own SQLite index and storage under the ``root`` folder the caller owns
(``tmp_path``), its own JSON configuration (nothing under ``/etc/orthanc`` is read), no
authentication, and its log in ``root / "orthanc.log"`` for debugging afterwards
(:meth:`Orthanc.log_tail`). Always :meth:`Orthanc.stop` it (``try``/``finally`` or a
fixture); an ``atexit`` hook and, on Linux, a parent-death signal are only safety nets.

Typical use::

    reason = orthanc_missing_reason()
    if reason:
        pytest.skip(reason)
    pacs = start_orthanc(tmp_path / "pacs")
    try:
        orthanc_id = pacs.upload(dicom_bytes)
        ...
    finally:
        pacs.stop()

Orthanc 1.10 has no bind-address option: it listens on all interfaces. HTTP refuses
non-loopback clients (``RemoteAccessAllowed: false``); the DICOM port accepts C-ECHO and
C-STORE from anyone (``DicomAlwaysAllowStore``), which is what lets test senders reach it
without being registered first. It holds only synthetic test data and lives for one test.

The REST calls go through ``httpx`` (a dev dependency) with ``trust_env=False``, and
Orthanc runs with the proxy variables removed from its environment (its libcurl honours
``http_proxy``), so a proxy set on a developer's machine or CI never intercepts loopback.
QIDO-RS and WADO-RS go through ``dicomweb-client``, imported only when used.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
import weakref
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    import pydicom

#: The Orthanc server binary: on PATH, else Debian's location (``/usr/sbin`` is often not on
#: a non-root user's PATH). ``None`` when neither exists.
ORTHANC_BINARY: str | None = shutil.which("Orthanc") or (
    "/usr/sbin/Orthanc" if os.access("/usr/sbin/Orthanc", os.X_OK) else None
)

#: The DICOMweb plugin (QIDO-RS, WADO-RS, STOW-RS server and STOW client): Debian's package
#: ``orthanc-dicomweb``. Without it only the core REST API and DICOM would work, and every
#: caller of this harness needs DICOMweb, so its absence makes Orthanc "missing".
DICOMWEB_PLUGIN: Path | None = next(
    (
        path
        for path in (
            Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so"),
            Path("/usr/lib/orthanc/plugins/libOrthancDicomWeb.so"),
            Path("/usr/local/share/orthanc/plugins/libOrthancDicomWeb.so"),
        )
        if path.is_file()
    ),
    None,
)

#: The Python clients the harness itself uses (``dicomweb-client`` brings ``requests``).
_PYTHON_MODULES = ("httpx", "pydicom", "dicomweb_client")

#: Proxy variables stripped from Orthanc's environment (its HTTP client is libcurl).
_PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "ftp_proxy")

#: What Orthanc 1.10 logs (then exits 255) when a port it was given is taken: "The TCP port
#: of the HTTP server is privileged or already in use", the same for the DICOM server. The
#: one start failure worth retrying with fresh ports.
_PORT_IN_USE = re.compile(
    r"The TCP port of the (?:HTTP|DICOM) server is privileged or already in use"
)


@lru_cache(maxsize=1)
def orthanc_missing_reason() -> str | None:
    """Why a real Orthanc cannot run here, or ``None`` when it can.

    Tests call ``pytest.skip(reason)`` on a reason (or fail when ``CI=1``: CI images
    install Orthanc, and a silently skipped integration test there hides a broken image).
    Cached: it runs ``Orthanc --version`` once per process.
    """
    if ORTHANC_BINARY is None:
        return "Orthanc is not installed (apt-get install orthanc)"
    if DICOMWEB_PLUGIN is None:
        return "the Orthanc DICOMweb plugin is not installed (apt-get install orthanc-dicomweb)"
    missing = [name for name in _PYTHON_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        return f"Python packages missing for the Orthanc harness: {', '.join(missing)}"
    try:
        probe = subprocess.run(
            [ORTHANC_BINARY, "--version"], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{ORTHANC_BINARY} --version failed: {exc}"
    if probe.returncode != 0:
        return f"{ORTHANC_BINARY} --version exited {probe.returncode}: {probe.stderr[-500:]}"
    return None


def _free_port() -> int:
    """A TCP port free on loopback right now: bind port 0, read it, release it.

    Racy by nature (another process may take it before Orthanc does), hence the retry in
    :func:`start_orthanc`.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _child_environment() -> dict[str, str]:
    """Our environment minus the proxy variables, with loopback marked as never proxied."""
    env = {key: value for key, value in os.environ.items() if key.lower() not in _PROXY_VARIABLES}
    env["no_proxy"] = env["NO_PROXY"] = "127.0.0.1,localhost"
    return env


def _die_with_parent() -> None:  # pragma: no cover - runs in the forked child
    """Linux: SIGTERM Orthanc when the process that started it dies (even by SIGKILL).

    The signal is tied to the *thread* that forked, so start servers from a thread that
    outlives them (the main thread, in tests).
    """
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _dicomweb_server_entry(url: str, headers: dict[str, str] | None) -> dict[str, Any]:
    """The plugin's object form of a DICOMweb server (``Url`` must end with a slash)."""
    entry: dict[str, Any] = {"Url": url if url.endswith("/") else url + "/"}
    if headers:
        entry["HttpHeaders"] = dict(headers)
    return entry


def _flatten(item: dict[str, Any]) -> dict[str, Any]:
    """One DICOM JSON (PS3.18 F.2) object as ``{keyword: value}``, for readable asserts.

    Single values come back bare (a ``str`` for UIDs, codes and names; a number for numeric
    VRs); multiple values as a list; person names as their alphabetic form; elements
    without a value as ``None``. Tags without a dictionary keyword keep their hex tag.
    """
    from pydicom.datadict import keyword_for_tag

    flat: dict[str, Any] = {}
    for tag, element in item.items():
        keyword = keyword_for_tag(int(tag, 16)) or tag
        values = element.get("Value") or []
        if element.get("vr") == "PN":
            values = [v.get("Alphabetic", "") if isinstance(v, dict) else v for v in values]
        flat[keyword] = None if not values else values[0] if len(values) == 1 else values
    return flat


def _dicomweb_session() -> Any:
    """A ``requests`` session for ``dicomweb-client``: no proxies, and one Accept fix.

    ``dicomweb-client`` asks QIDO-RS for ``application/dicom+json, application/json``; the
    DICOMweb plugin 1.7 answers DICOM JSON anyway but logs an *error* ("Unsupported return
    MIME type") for every query, which would bury real errors in the log. Asking for
    ``application/dicom+json`` alone gets the same answer without the noise.
    """
    import requests

    class Session(requests.Session):
        def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
            if request.headers.get("Accept") == "application/dicom+json, application/json":
                request.headers["Accept"] = "application/dicom+json"
            return super().send(request, **kwargs)

    session = Session()
    session.trust_env = False  # never send loopback traffic through a proxy
    return session


#: Servers started and not yet stopped, stopped at interpreter exit if a test forgot.
_LIVE: weakref.WeakSet[Orthanc] = weakref.WeakSet()


@atexit.register
def _stop_leftovers() -> None:
    for server in list(_LIVE):
        server.stop()


@dataclass(eq=False)
class Orthanc:
    """A running Orthanc: its ports, folder and process, and the calls tests need.

    Every REST helper raises ``httpx.HTTPStatusError`` on an error answer; Orthanc's body
    (``HttpDescribeErrors``) and the log (:meth:`log_tail`) say why.
    """

    http_port: int
    dicom_port: int
    aet: str
    root: Path
    process: subprocess.Popen[bytes]
    http_timeout: float = 60.0
    _client: httpx.Client | None = field(default=None, init=False, repr=False)
    _terminated: bool = field(default=False, init=False, repr=False)

    @property
    def url(self) -> str:
        """The REST API root, on loopback (the only address Orthanc answers HTTP on)."""
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb(self) -> str:
        """The DICOMweb root (QIDO-RS, WADO-RS, STOW-RS), without a trailing slash."""
        return self.url + "/dicom-web"

    @property
    def log_path(self) -> Path:
        """Orthanc's stdout and stderr (it logs to stderr), kept after :meth:`stop`."""
        return self.root / "orthanc.log"

    @property
    def client(self) -> httpx.Client:
        """An ``httpx`` client on :attr:`url` that ignores proxy variables."""
        if self._client is None:
            self._client = httpx.Client(
                base_url=self.url, trust_env=False, timeout=self.http_timeout
            )
        return self._client

    def log_tail(self, n: int = 50) -> str:
        """The last ``n`` lines of the Orthanc log: put it in assertion messages."""
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError as exc:
            return f"(no Orthanc log at {self.log_path}: {exc})"
        return "\n".join(lines[-n:])

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.client.request(method, path, **kwargs)
        if response.is_error:
            # Orthanc's own description is in the body; keep it in the exception.
            raise httpx.HTTPStatusError(
                f"{method} {path} -> {response.status_code}: {response.text[:2000]}",
                request=response.request,
                response=response,
            )
        return response.json() if response.content else {}

    def get(self, path: str) -> Any:
        """``GET`` a REST path (``/system``, ``/instances``, ...) and decode its JSON."""
        return self._json("GET", path)

    def upload(self, data: bytes) -> str:
        """Store a DICOM file through ``POST /instances``; returns its Orthanc instance id.

        "AlreadyStored" counts as success (the id is the same); anything else raises.
        """
        answer = self._json(
            "POST", "/instances", content=data, headers={"Content-Type": "application/dicom"}
        )
        if answer.get("Status") not in ("Success", "AlreadyStored"):
            raise RuntimeError(f"Orthanc refused the instance: {answer}\n{self.log_tail()}")
        return str(answer["ID"])

    def send_to_modality(
        self, modality: str, resources: list[str], *, synchronous: bool = True
    ) -> dict[str, Any]:
        """C-STORE Orthanc resources (patient/study/series/instance ids) to a modality.

        ``POST /modalities/{name}/store``. Synchronous: returns when the association is
        done, with ``InstancesCount`` and ``FailedInstancesCount``; a refused store is an
        HTTP error. Asynchronous: returns the job (``ID``, ``Path``) at once.
        """
        return dict(
            self._json(
                "POST",
                f"/modalities/{modality}/store",
                json={"Resources": list(resources), "Synchronous": synchronous},
            )
        )

    def stow_to_server(self, server: str, resources: list[str]) -> dict[str, Any]:
        """STOW-RS Orthanc resources (ids of studies, series or instances) to a server.

        ``POST /dicom-web/servers/{name}/stow``, synchronously: once it returns the remote
        end has answered every instance (a STOW failure is an HTTP error here). The answer
        is ``{"InstancesCount": "1", "NetworkSizeMB": "0"}``: plugin 1.7 writes the counts
        as strings. Each call takes ~0.5 s however small (the plugin's job polling).
        """
        return dict(
            self._json(
                "POST",
                f"/dicom-web/servers/{server}/stow",
                json={"Resources": list(resources), "Synchronous": True},
            )
        )

    def set_modality(self, name: str, aet: str, host: str, port: int) -> None:
        """Register (or replace) a DICOM modality at run time: ``PUT /modalities/{name}``.

        For peers whose port is only known once they run; the start-time equivalent is
        ``start_orthanc(modalities=...)``.
        """
        self._json("PUT", f"/modalities/{name}", json={"AET": aet, "Host": host, "Port": port})

    def set_dicomweb_server(
        self, name: str, url: str, headers: dict[str, str] | None = None
    ) -> None:
        """Register (or replace) a DICOMweb server: ``PUT /dicom-web/servers/{name}``.

        ``headers`` go with every request Orthanc makes to it (e.g. ``{"X-API-Key": ...}``).
        """
        self._json("PUT", f"/dicom-web/servers/{name}", json=_dicomweb_server_entry(url, headers))

    def _dicomweb_client(self) -> Any:
        from dicomweb_client.api import DICOMwebClient

        return DICOMwebClient(
            url=self.dicomweb, session=_dicomweb_session(), timeout=self.http_timeout
        )

    def study_instances(self, study_uid: str) -> list[dict[str, Any]]:
        """Every instance of a study, found by QIDO-RS (``dicomweb-client``).

        Each item is ``{keyword: value}`` (see :func:`_flatten`) with at least
        ``SOPInstanceUID``, ``SOPClassUID``, ``SeriesInstanceUID``, ``Modality`` and
        ``SeriesDescription`` (asked for with ``includefield``: the last two are series
        attributes, not returned by an instance query otherwise). Empty for an unknown study.
        """
        fields = ["SeriesDescription", "Modality", "SeriesNumber", "InstanceNumber"]
        items = self._dicomweb_client().search_for_instances(
            study_instance_uid=study_uid, fields=fields
        )
        return [_flatten(item) for item in items]

    def retrieve_instance(self, study_uid: str, series_uid: str, sop_uid: str) -> pydicom.Dataset:
        """One instance by WADO-RS (``dicomweb-client``), as a pydicom dataset."""
        dataset: pydicom.Dataset = self._dicomweb_client().retrieve_instance(
            study_uid, series_uid, sop_uid
        )
        return dataset

    def terminate(self) -> None:
        """Ask Orthanc to shut down (SIGTERM) without waiting: see :func:`stop_all`.

        Sent once only: Orthanc catches the first SIGTERM, then restores the default
        handler while it shuts down, so a second one kills it on the spot.
        """
        _LIVE.discard(self)
        if self._client is not None:
            self._client.close()
            self._client = None
        if not self._terminated and self.process.poll() is None:
            self._terminated = True
            self.process.terminate()

    def stop(self, timeout: float = 15.0) -> None:
        """Stop Orthanc: SIGTERM, wait, SIGKILL if it is still running after ``timeout``.

        A clean shutdown of Orthanc 1.10 takes about 3.5 s however idle it is (its HTTP
        server stops in ~2 s, then the DICOM server in ~1 s): stop several servers with
        :func:`stop_all` to pay that once. Idempotent; log and storage stay under
        :attr:`root`.
        """
        self.terminate()
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=timeout)


def stop_all(*servers: Orthanc | None, timeout: float = 15.0) -> None:
    """Stop several servers in parallel (SIGTERM to all, then wait for each): ~3.5 s in
    all rather than per server. ``None`` entries are skipped, for ``finally`` blocks where
    a start may have failed."""
    live = [server for server in servers if server is not None]
    for server in live:
        server.terminate()
    for server in live:
        server.stop(timeout)


def _config(
    root: Path,
    *,
    name: str,
    aet: str,
    http_port: int,
    dicom_port: int,
    modalities: dict[str, tuple[str, str, int]] | None,
    dicomweb_servers: dict[str, dict[str, Any]] | None,
    overrides: dict[str, Any] | None,
) -> dict[str, Any]:
    """The full Orthanc configuration: everything explicit, nothing from /etc/orthanc."""
    servers = {
        key: _dicomweb_server_entry(value["Url"], value.get("HttpHeaders"))
        if isinstance(value, dict) and "Url" in value
        else value
        for key, value in (dicomweb_servers or {}).items()
    }
    config: dict[str, Any] = {
        "Name": name,  # unique, so the readiness check knows it reached *this* server
        "StorageDirectory": str(root / "db"),
        "IndexDirectory": str(root / "db"),
        "StorageCompression": False,
        "Plugins": [str(DICOMWEB_PLUGIN)],
        "DicomWeb": {
            "Enable": True,
            "Root": "/dicom-web/",
            "EnableWado": True,
            "WadoRoot": "/wado",
            "Ssl": False,
            "Servers": servers,
        },
        # HTTP: loopback clients only, no users, no proxy, errors described in the body.
        "HttpServerEnabled": True,
        "HttpPort": http_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "SslEnabled": False,
        "HttpDescribeErrors": True,
        "HttpProxy": "",
        "HttpTimeout": 30,  # Orthanc as an HTTP client (STOW to a server)
        "HttpRequestTimeout": 30,  # Orthanc as an HTTP server
        "HttpThreadsCount": 10,
        "WebDavEnabled": False,
        "OrthancExplorerEnabled": False,
        # DICOM: any calling AET may store or echo; modalities are the C-STORE targets.
        "DicomServerEnabled": True,
        "DicomAet": aet,
        "DicomPort": dicom_port,
        "DicomCheckCalledAet": False,
        "DicomCheckModalityHost": False,
        "DicomAlwaysAllowEcho": True,
        "DicomAlwaysAllowStore": True,
        "DicomModalities": {
            key: [remote_aet, host, port]
            for key, (remote_aet, host, port) in (modalities or {}).items()
        },
        "DicomModalitiesInDatabase": False,
        "DicomScpTimeout": 30,
        "DicomScuTimeout": 10,
        "DicomAssociationCloseDelay": 0,  # release SCU associations at once, not 5 s later
        "DicomThreadsCount": 4,
        "UnknownSopClassAccepted": False,
        # Jobs and stability: nothing persisted between runs; studies "stable" after 1 s.
        "SaveJobs": False,
        "StableAge": 1,
        "ConcurrentJobs": 2,
        "JobsHistorySize": 10,
        "OverwriteInstances": False,
        "LuaScripts": [],
        "ExecuteLuaEnabled": False,
        "MetricsEnabled": False,
        "DeidentifyLogs": False,  # synthetic data only; readable logs matter more here
    }
    config.update(overrides or {})
    return config


def _wait_ready(server: Orthanc, name: str, deadline: float) -> str | None:
    """Poll ``GET /system`` until *this* Orthanc answers; the failure text, or ``None``."""
    with httpx.Client(trust_env=False, timeout=2.0) as probe:
        while True:
            if server.process.poll() is not None:
                return f"Orthanc exited with status {server.process.returncode}"
            with contextlib.suppress(httpx.HTTPError, ValueError):
                answer = probe.get(server.url + "/system")
                if answer.status_code == 200 and answer.json().get("Name") == name:
                    return None
            if time.monotonic() > deadline:
                return "Orthanc did not answer GET /system in time"
            time.sleep(0.05)


def _spawn(root: Path, command: list[str], attempt: int) -> tuple[subprocess.Popen, int]:
    """Start Orthanc logging into ``root/orthanc.log``; the process and where its log
    of this attempt starts."""
    with (root / "orthanc.log").open("ab") as log:
        log_start = log.tell()
        log.write(f"=== attempt {attempt}: {' '.join(command)}\n".encode())
        log.flush()
        process = subprocess.Popen(
            command,
            cwd=root,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=_child_environment(),
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
    return process, log_start


def start_orthanc(
    root: Path,
    *,
    aet: str = "ORTHANC",
    modalities: dict[str, tuple[str, str, int]] | None = None,
    dicomweb_servers: dict[str, dict[str, Any]] | None = None,
    timeout: float = 60.0,
    config_overrides: dict[str, Any] | None = None,
    verbose: bool = False,
    ports: tuple[int, int] | None = None,
) -> Orthanc:
    """Start a private Orthanc with its data, config and log under ``root``; wait for it.

    ``modalities`` maps a name to ``(AET, host, port)`` (Orthanc's ``DicomModalities``
    array form) for C-STORE targets; ``dicomweb_servers`` maps a name to
    ``{"Url": ..., "HttpHeaders": {...}}`` (``DicomWeb.Servers``) for STOW targets. Peers
    started later are added with :meth:`Orthanc.set_modality` and
    :meth:`Orthanc.set_dicomweb_server`. ``config_overrides`` replaces top-level keys of
    the generated ``root / "orthanc.json"``. ``ports`` = (HTTP, DICOM) pins both (a PACS
    brought back up where it was); no retry then. ``verbose`` adds Orthanc's info-level
    messages to the log (the default is warnings and errors, plus its startup lines).

    Ports: two free loopback ports are picked per attempt; if Orthanc exits because one
    was taken meanwhile (a race with other processes or xdist workers), it is retried
    with new ports, up to 3 attempts. Ready means ``GET /system`` answers with this
    server's unique ``Name`` (so a stranger on a recycled port is never mistaken for it),
    by which time the DICOM listener and the plugin are up too (Orthanc starts them
    before HTTP). Raises ``RuntimeError`` with the log tail if it never gets there.
    """
    reason = orthanc_missing_reason()
    if reason is not None:
        raise RuntimeError(reason)
    assert ORTHANC_BINARY is not None
    root = Path(root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout
    failure = ""
    for attempt in range(1, 4):
        http_port, dicom_port = ports or (_free_port(), _free_port())
        while dicom_port == http_port and ports is None:
            dicom_port = _free_port()
        name = f"test-orthanc-{uuid.uuid4().hex[:12]}"
        config_path = root / "orthanc.json"
        config = _config(
            root,
            name=name,
            aet=aet,
            http_port=http_port,
            dicom_port=dicom_port,
            modalities=modalities,
            dicomweb_servers=dicomweb_servers,
            overrides=config_overrides,
        )
        config_path.write_text(json.dumps(config, indent=2))
        command = [ORTHANC_BINARY, *(["--verbose"] if verbose else []), str(config_path)]
        process, log_start = _spawn(root, command, attempt)
        server = Orthanc(
            http_port=http_port, dicom_port=dicom_port, aet=aet, root=root, process=process
        )
        _LIVE.add(server)
        failure_now = _wait_ready(server, name, deadline)
        if failure_now is None:
            return server
        server.stop()
        failure = failure_now
        with server.log_path.open("rb") as log:
            log.seek(log_start)
            this_attempt = log.read().decode(errors="replace")
        port_taken = process.returncode is not None and _PORT_IN_USE.search(this_attempt)
        if not port_taken or ports is not None or time.monotonic() > deadline:
            break
    raise RuntimeError(
        f"{failure} (HTTP port {http_port}, DICOM port {dicom_port}, config {config_path}); "
        f"log tail:\n{server.log_tail(50)}"
    )
