"""Service configuration: one pydantic-settings class, read from ``BONEXR_*`` env vars.

Every knob the service has is here; ``docs/configuration.md`` is generated from these
fields (``python -m service.doors.config_docs``; a test fails when the two differ).
"""

from __future__ import annotations

import hashlib
import ipaddress
from functools import lru_cache
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Runtime configuration of the inference service."""

    model_config = SettingsConfigDict(env_prefix="BONEXR_", env_file=None, extra="ignore")

    models_dir: Path = Field(Path("models"), description="Folder holding model bundles.")
    bundle: str | None = Field(
        None, description="Bundle name inside models_dir (or absolute path); default: newest."
    )
    upload_dir: Path = Field(Path("uploads"), description="Where uploaded images are stored.")
    upload_store: str | None = Field(
        None,
        description="Where uploads live: file:///path (a folder; default: upload_dir) or "
        "s3://bucket/prefix (any S3-compatible store; credentials and endpoint from the "
        "usual AWS_* variables, AWS_ENDPOINT_URL for a non-AWS server).",
    )
    max_upload_bytes: int = Field(20 * 1024 * 1024, gt=0, description="Upload size limit (413).")
    max_pixels: int = Field(50_000_000, gt=0, description="Pixel limit from the header (413).")
    max_decoded_mb: int = Field(
        256, gt=0, description="Decoded-memory budget per image, estimated from its header (413)."
    )
    max_url_bytes: int = Field(
        8 * 1024,
        ge=256,
        description="Request-target (URL) limit, enforced by the server (414).",
    )
    max_header_bytes: int = Field(
        64 * 1024, ge=1024, description="Request header size limit, enforced by the server (431)."
    )
    retention_hours: float | None = Field(
        None, gt=0, description="Delete uploads older than this many hours (off when unset)."
    )
    api_keys: str = Field(
        "",
        description="Comma-separated API keys for X-API-Key, each `name:key` (the name is "
        "the reader the worklist and the audit record) or a plain key (named `key-` + a "
        "short hash of it); empty disables auth.",
    )
    admin_keys: str = Field(
        "",
        description="Comma-separated key names (from api_keys) with the admin role: they read "
        "GET /audit and alone may DELETE /worklist/{id}.",
    )
    integration_keys: str = Field(
        "",
        description="Comma-separated key names (from api_keys) with the integration role (a "
        "PACS sending studies): POST /dicom-web/studies only, never the worklist, the audit "
        "or an answer (403).",
    )
    database_url: str | None = Field(
        None,
        description="The records database: sqlite:///path (one instance) or "
        "postgresql+psycopg://user:password@host/db (replicas sharing one worklist). "
        "Default: bonexr.db inside upload_dir (on the uploads volume of a container).",
    )
    record_retention_days: float | None = Field(
        None, gt=0, description="Delete study records older than this many days (off when unset)."
    )
    max_study_views: int = Field(
        8, ge=1, le=64, description="Most views one POST /predict/study may name (422 above)."
    )
    max_batch_size: int = Field(8, ge=1, le=256, description="Micro-batch size limit.")
    max_queue: int | None = Field(
        None,
        ge=1,
        description="Most predictions waiting; beyond it 429 + Retry-After. Default: what the "
        "measured throughput answers within half of predict_timeout_s.",
    )
    predict_timeout_s: float = Field(
        30.0,
        gt=0,
        le=600,
        description="Deadline of one prediction: decode, queue, inference and heat-map "
        "rendering (503 past it); the SIGTERM drain waits this long + 5 s.",
    )
    max_batch_wait_ms: float = Field(5.0, ge=0, description="Longest wait to fill a batch.")
    samples_dir: Path | None = Field(
        None,
        description="A folder of radiographs the page offers as samples to try (the first "
        "24 images by name; the attribution from a README.md or ATTRIBUTION file there or in "
        "its parent). The project ships none; `make run` sets it to FracAtlas's images when "
        "../shared/datasets/fracatlas is there.",
    )
    shadow_bundle: str | None = Field(
        None,
        description="A candidate bundle (name in models_dir, or path) that scores every "
        "recorded study in the background, never shown to a reader (docs/operations.md); "
        "refused at start unless it judges the same parts from the same pixels.",
    )
    shadow_sample_rate: float = Field(
        1.0, ge=0, le=1, description="Share of recorded studies the shadow bundle scores."
    )
    shadow_queue: int = Field(
        64,
        ge=1,
        le=10_000,
        description="Studies waiting for the shadow bundle; beyond it shadow work is dropped "
        "(counted), never live work.",
    )
    drift_reference_size: int = Field(
        200,
        ge=20,
        le=100_000,
        description="Answers (per part) the drift monitor takes as its reference once a bundle "
        "serves: the first ones (docs/operations.md).",
    )
    drift_window: int = Field(
        200,
        ge=20,
        le=100_000,
        description="The last answers (per part) compared with the reference (PSI in /metrics).",
    )
    router_confidence_floor: float = Field(
        0.6, ge=0, le=1, description="Below this top router probability a warning is added."
    )
    intra_op_threads: int = Field(0, ge=0, description="ONNX Runtime threads (0 = all cores).")
    device: str = Field("auto", description="auto | cpu | gpu (auto uses CUDA when present).")
    runtime: Literal["auto", "onnxruntime", "openvino"] = Field(
        "auto",
        description="auto: ONNX Runtime CUDA on a GPU, else OpenVINO when installed, else "
        "ONNX Runtime.",
    )
    precision: Literal["auto", "fp32", "bf16", "int8"] = Field(
        "auto",
        description="auto: the fastest precision the CPU has and the bundle allows "
        "(int8, then bf16; each allowed only by the export's gate, which never reads the "
        "test labels), else fp32.",
    )
    eligibility: Literal["enforce", "warn"] = Field(
        "enforce",
        description="enforce: an image the model was never trained to judge (a DICOM whose "
        "Modality is not CR/DX or whose BodyPartExamined is not an upper limb; any image "
        "whose content score is beyond the bundle's content-gate limit) is refused with 422 "
        "code not_eligible; warn: it is answered, with the reason in warnings.",
    )
    dicom_dir: Path | None = Field(
        None,
        description="The DICOM node's folder: received instances (as sent, content-addressed), "
        "study records and the results waiting for delivery; retention applies to it. "
        "Default: `dicom` inside upload_dir (so the uploads volume of a container holds it; "
        "the upload store ignores it).",
    )
    dicom_port: int | None = Field(
        None,
        ge=1,
        le=65535,
        description="Port of the DICOM Storage SCP (C-STORE receiver); off when unset.",
    )
    dicom_host: str | None = Field(
        None,
        description="Address the DICOM Storage SCP listens on (with dicom_port). Default: "
        "the same as host (loopback unless the service is published).",
    )
    dicom_ae_title: str = Field(
        "BONEXR", min_length=1, max_length=16, description="The node's AE title."
    )
    dicom_allowed_aets: str = Field(
        "",
        description="Comma-separated calling AE titles the SCP accepts (others: association "
        "rejected); empty accepts any.",
    )
    dicom_allowed_hosts: str = Field(
        "",
        description="Comma-separated addresses or networks (10.1.2.3, 10.1.0.0/16) that may "
        "connect to the DICOM port; any other connection is closed before it holds an "
        "association slot. Empty: any address (then dicom_allowed_aets is checked alone).",
    )
    study_settle_s: float = Field(
        10.0,
        gt=0,
        le=3600,
        description="A received study is analysed once no new instance has arrived for this long.",
    )
    max_stow_bytes: int = Field(
        512 * 1024 * 1024,
        gt=0,
        description="Largest STOW-RS request body (413); each instance is also held to "
        "max_upload_bytes.",
    )
    results_dicomweb_url: str | None = Field(
        None,
        description="STOW-RS base URL the results go to (e.g. the PACS's "
        "http://pacs:8042/dicom-web); off when unset.",
    )
    results_dicomweb_username: str | None = Field(
        None,
        description="User for HTTP basic authentication at results_dicomweb_url (with "
        "results_dicomweb_password or results_dicomweb_password_file).",
    )
    results_dicomweb_password: SecretStr | None = Field(
        None,
        description="Its password (never shown: /ready, the logs and the metrics name the "
        "URL alone). Prefer results_dicomweb_password_file where secrets are files.",
    )
    results_dicomweb_password_file: Path | None = Field(
        None,
        description="A file holding the password (a mounted Kubernetes Secret or Docker "
        "secret), read at start; its trailing newline is ignored.",
    )
    results_dicom: str | None = Field(
        None,
        description="C-STORE destination of the results as AE@host:port (e.g. "
        "ORTHANC@pacs:4242); off when unset.",
    )
    delivery_retry_s: float = Field(
        5.0, gt=0, description="First wait before a failed delivery is tried again."
    )
    delivery_retry_max_s: float = Field(
        300.0, gt=0, description="Longest wait between delivery attempts (backoff doubles)."
    )
    delivery_timeout_s: float = Field(
        30.0, gt=0, le=600, description="Network timeout of one delivery attempt."
    )
    host: str = Field(
        "127.0.0.1",
        description="Bind address (`bonexr serve --host`). A non-loopback address needs "
        "api_keys (else the service refuses to start, unless insecure).",
    )
    insecure: bool = Field(
        False,
        description="Start even where anyone on the network could use the service: on a "
        "non-loopback host with no api_keys, or a DICOM listener there with no "
        "dicom_allowed_aets (a warning is logged instead). For a network you trust alone.",
    )
    port: int = Field(8000, ge=1, le=65535, description="Port (`bonexr serve --port`).")
    log_level: str = Field("info", description="Log level: debug, info, warning, error.")

    @property
    def max_decoded_bytes(self) -> int:
        """The decoded-memory budget in bytes (``max_decoded_mb`` MiB)."""
        return self.max_decoded_mb * 2**20

    @property
    def dicom_listen_host(self) -> str:
        """Where the DICOM Storage SCP listens (``dicom_host``, else ``host``)."""
        return self.dicom_host or self.host

    def dicomweb_credentials(self) -> tuple[str, str] | None:
        """(user, password) for results_dicomweb_url, from the password or its file."""
        if self.results_dicomweb_username is None:
            return None
        if self.results_dicomweb_password_file is not None:
            password = self.results_dicomweb_password_file.read_text().rstrip("\r\n")
        else:
            password = self.results_dicomweb_password.get_secret_value()  # type: ignore[union-attr]
        return self.results_dicomweb_username, password

    @property
    def dicom_folder(self) -> Path:
        """The DICOM node's folder (``dicom_dir``, else ``dicom`` inside ``upload_dir``)."""
        return self.dicom_dir or Path(self.upload_dir) / "dicom"

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        value = value.lower()
        if value not in {"auto", "cpu", "gpu"}:
            raise ValueError("device must be auto, cpu or gpu")
        return value

    @field_validator("dicom_allowed_hosts")
    @classmethod
    def _networks(cls, value: str) -> str:
        for item in (i.strip() for i in value.split(",")):
            if item:
                try:
                    ipaddress.ip_network(item, strict=False)
                except ValueError:
                    raise ValueError(
                        f"{item!r} is not an address or network (e.g. 10.1.2.3, 10.1.0.0/16)"
                    ) from None
        return value

    @field_validator("dicom_ae_title")
    @classmethod
    def _ae_title(cls, value: str) -> str:
        return check_ae_title(value)

    @field_validator("api_keys")
    @classmethod
    def _key_names(cls, value: str) -> str:
        for item in (i.strip() for i in value.split(",")):
            name, colon, key = item.partition(":")
            if colon and (not name.strip() or not key.strip()):
                raise ValueError("each API key is name:key or a plain key (nothing empty)")
            if colon and not all(c.isalnum() or c in "-_." for c in name.strip()):
                raise ValueError(f"API key name {name.strip()!r}: letters, digits, - _ . only")
        return value

    @field_validator("results_dicom")
    @classmethod
    def _dicom_destination(cls, value: str | None) -> str | None:
        if value:
            parse_dicom_address(value)
        return value or None

    def allowed_networks(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        """The networks ``dicom_allowed_hosts`` names ([] allows any address)."""
        return [
            ipaddress.ip_network(item.strip(), strict=False)
            for item in self.dicom_allowed_hosts.split(",")
            if item.strip()
        ]

    def allowed_aet_list(self) -> list[str]:
        """The calling AE titles the SCP accepts ([] accepts any)."""
        return [check_ae_title(t) for t in self.dicom_allowed_aets.split(",") if t.strip()]

    def api_key_list(self) -> list[str]:
        """The configured keys (the secrets alone)."""
        return list(self.named_api_keys().values())

    def named_api_keys(self) -> dict[str, str]:
        """name -> key. ``name:key`` pairs; a plain key is named ``key-`` + 8 hex digits of
        its sha256 (the name is what the records and the audit show, never the key)."""
        found: dict[str, str] = {}
        for item in (i.strip() for i in self.api_keys.split(",")):
            if not item:
                continue
            name, colon, key = item.partition(":")
            if not colon:
                name, key = "key-" + hashlib.sha256(item.encode()).hexdigest()[:8], item
            found[name.strip()] = key.strip()
        return found

    def admin_key_names(self) -> set[str]:
        return {n.strip() for n in self.admin_keys.split(",") if n.strip()}

    def integration_key_names(self) -> set[str]:
        return {n.strip() for n in self.integration_keys.split(",") if n.strip()}

    @model_validator(mode="after")
    def _roles(self) -> Settings:
        """Keys checked at start: no name or key twice, every role names a key, no key
        with two roles (a mistake here would give or take access silently)."""
        items = [i.strip() for i in self.api_keys.split(",") if i.strip()]
        named = self.named_api_keys()
        if len(named) < len(items):
            raise ValueError("BONEXR_API_KEYS names a key twice: every name must be unique")
        if len(set(named.values())) < len(named):
            raise ValueError("BONEXR_API_KEYS gives two names the same key")
        for role, names in (
            ("BONEXR_ADMIN_KEYS", self.admin_key_names()),
            ("BONEXR_INTEGRATION_KEYS", self.integration_key_names()),
        ):
            unknown = sorted(names - set(named))
            if unknown and named:
                raise ValueError(f"{role} names no key in BONEXR_API_KEYS: {', '.join(unknown)}")
        both = self.admin_key_names() & self.integration_key_names()
        if both:
            raise ValueError(
                f"a key cannot be both admin and integration: {', '.join(sorted(both))}"
            )
        return self

    @model_validator(mode="after")
    def _dicomweb_credentials(self) -> Settings:
        """A user with exactly one password source, a readable file, and no second copy of
        the secret inside the URL: found at start, not at the first delivery."""
        user = self.results_dicomweb_username
        password, file = self.results_dicomweb_password, self.results_dicomweb_password_file
        if (password is not None or file is not None) and user is None:
            raise ValueError("a results_dicomweb password needs results_dicomweb_username")
        if user is not None:
            if (password is None) == (file is None):
                raise ValueError(
                    "results_dicomweb_username needs one of results_dicomweb_password and "
                    "results_dicomweb_password_file"
                )
            if file is not None and not file.is_file():
                raise ValueError(f"results_dicomweb_password_file {file} is not a readable file")
            if "@" in urlsplit(self.results_dicomweb_url or "").netloc:
                raise ValueError(
                    "results_dicomweb_url carries credentials too: give them in one place"
                )
        return self


def check_ae_title(value: str) -> str:
    """An AE title as DICOM allows it: 1-16 printable ASCII characters, no backslash."""
    title = value.strip()
    if not 1 <= len(title) <= 16 or not title.isascii() or "\\" in title:
        raise ValueError(f"{value!r} is not an AE title (1-16 ASCII characters, no backslash)")
    if not all(c.isprintable() for c in title):
        raise ValueError(f"{value!r} is not an AE title (printable characters only)")
    return title


def parse_dicom_address(value: str) -> tuple[str, str, int]:
    """``AE@host:port`` -> (AE title, host, port); a ValueError saying what is wrong."""
    ae, at, address = value.strip().partition("@")
    host, colon, port = address.rpartition(":")
    if not at or not colon or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"{value!r} is not AE@host:port (e.g. ORTHANC@pacs:4242)")
    return check_ae_title(ae), host, int(port)


@lru_cache
def get_settings() -> Settings:
    return Settings()


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable from this machine alone (127.0.0.0/8, ::1, localhost)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name: it may resolve to anything


def exposure_problems(settings: Settings) -> list[str]:
    """Why starting with ``settings`` would open the service to anyone on the network: the
    HTTP API on a non-loopback address with no API keys (the worklist, its export and
    DELETE would be open), the DICOM listener there with no calling-AE allow-list."""
    problems = []
    if not is_loopback(settings.host) and not settings.api_keys.strip():
        problems.append(
            f"the API would listen on {settings.host} with no API keys: anyone who reaches "
            "it could read, export and delete the worklist. Set BONEXR_API_KEYS (name:key,...; "
            "docs/security.md) or bind to 127.0.0.1"
        )
    if (
        settings.dicom_port is not None
        and not is_loopback(settings.dicom_listen_host)
        and not settings.dicom_allowed_aets.strip()
        and not settings.dicom_allowed_hosts.strip()
    ):
        problems.append(
            f"the DICOM listener would accept any AE on {settings.dicom_listen_host}:"
            f"{settings.dicom_port}. Set BONEXR_DICOM_ALLOWED_AETS (the PACS's AE titles), "
            "BONEXR_DICOM_ALLOWED_HOSTS (its addresses) or BONEXR_DICOM_HOST=127.0.0.1"
        )
    return problems
