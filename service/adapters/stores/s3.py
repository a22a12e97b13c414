"""The upload store on S3-compatible object storage (AWS S3, MinIO, Ceph RGW, ...).

For replicas on several hosts, which cannot share one local folder. The same guarantees as
the folder store (:class:`service.adapters.stores.folder.FileUploadStore`):

* **Content-addressed, create-if-absent, race-free**: the key is the sha256 of the bytes;
  the write is ``PutObject`` with ``If-None-Match: *`` (S3 conditional writes), so of two
  replicas storing the same image at once exactly one creates it and the other is told it
  was there (412). A re-upload restarts the object's retention clock by copying it onto
  itself (``LastModified`` is the clock, as a file's mtime is).
* **No partial objects**: a single ``PutObject`` of the whole PNG (uploads are at most
  ``BONEXR_MAX_UPLOAD_BYTES``, far below the 5 GB single-put limit) becomes visible only
  when complete; a connection lost mid-upload leaves nothing, and there are no multipart
  uploads to abort.
* **Delete** reads the object's ETag and deletes with ``If-Match`` on it, so of two
  concurrent deletes one answers "deleted" and the other "not found", as ``unlink`` does.
* **Retention**: the sweeper deletes objects older than ``BONEXR_RETENTION_HOURS`` (hours
  precision); for whole days a bucket lifecycle rule does it without the service
  (``docs/deploy.md``).

Configuration: ``BONEXR_UPLOAD_STORE=s3://bucket/prefix``; credentials, region and endpoint
come from the usual AWS variables and files (``AWS_ACCESS_KEY_ID``, ``AWS_REGION``,
``AWS_ENDPOINT_URL`` for a non-AWS server, instance roles, ...), read by boto3. Errors are
answered 503 with a message naming the store problem, never the bucket's internals.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from service.adapters.stores.base import (
    BODY_PART,
    NAME_RE,
    SIDECAR_RE,
    StoredUpload,
    sidecar_name,
    validate_name,
)
from service.domain.errors import StoreUnavailableError, TriageError, UploadNotFoundError

T = TypeVar("T")

#: Seconds a count of stored uploads (for /metrics) is reused: listing a bucket costs.
COUNT_TTL_SECONDS = 30.0
#: Seconds to open a connection and to wait for each read of an answer. Short, because a
#: hung endpoint must fail a request within its deadline (a 503 naming the store), not tie
#: up a worker thread: a read timeout bounds each wait for bytes, not a whole transfer.
CONNECT_TIMEOUT_S = 2.0
READ_TIMEOUT_S = 1.5
#: Retries after the first attempt (botocore "standard" mode: throttling, 5xx, timeouts),
#: so a call to a hung endpoint fails after about (1 + RETRIES) * READ_TIMEOUT_S plus
#: one backoff of at most a second: within /ready's 5 s and a request's deadline.
RETRIES = 1
#: Objects whose key starts with this are the readiness probe's, never uploads.
PROBE_PREFIX = ".probe-"


def parse_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/prefix`` -> (bucket, prefix ending in ``/`` or empty)."""
    if not url.startswith("s3://"):
        raise ValueError(f"not an s3:// URL: {url!r}")
    bucket, _, prefix = url[len("s3://") :].partition("/")
    if not bucket:
        raise ValueError("the S3 URL names no bucket (expected s3://bucket/prefix)")
    prefix = prefix.strip("/")
    return bucket, f"{prefix}/" if prefix else ""


def describe_s3_error(exc: Exception) -> str:
    """What went wrong with the store, in words a client or operator can act on (no keys,
    no endpoint addresses, no library names)."""
    from botocore.exceptions import (
        ClientError,
        ConnectTimeoutError,
        EndpointConnectionError,
        NoCredentialsError,
        ReadTimeoutError,
    )

    if isinstance(exc, NoCredentialsError):
        return "no S3 credentials are configured"
    if isinstance(exc, EndpointConnectionError | ConnectTimeoutError | ReadTimeoutError):
        return "the S3 endpoint cannot be reached"
    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in ("NoSuchBucket",) or (code == "404" and status == 404):
            return "the S3 bucket does not exist"
        if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken"):
            return "the S3 credentials were rejected"
        if code in ("AccessDenied", "403", "AllAccessDisabled"):
            return "the S3 credentials are not allowed to use this bucket"
        if code == "SlowDown" or status == 503:
            return "the S3 store is overloaded"
        return f"the S3 store answered an error ({code or status})"
    return f"the S3 store failed ({type(exc).__name__})"


class S3UploadStore:
    """Uploads as objects ``<prefix><sha256>.png`` (sidecars ``<...>.png.<kind>``).

    Thread-safe: boto3 clients are, and every operation is one or two requests.
    """

    def __init__(
        self,
        url: str,
        client: Any | None = None,
        *,
        connect_timeout: float = CONNECT_TIMEOUT_S,
        read_timeout: float = READ_TIMEOUT_S,
        retries: int = RETRIES,
    ) -> None:
        self.url = url
        self.timeouts = (connect_timeout, read_timeout)
        self.retries = retries
        self.bucket, self.prefix = parse_s3_url(url)
        self._client = client
        self._lock = threading.Lock()
        self._count: tuple[float, int] | None = None

    # ---------------------------------------------------------------- plumbing

    @property
    def client(self) -> Any:
        """The boto3 client, made on first use (so a broken store still lets /ready say so)."""
        with self._lock:
            if self._client is None:
                import boto3
                from botocore.config import Config

                config = Config(
                    connect_timeout=self.timeouts[0],
                    read_timeout=self.timeouts[1],
                    retries={"max_attempts": self.retries, "mode": "standard"},
                )
                # a session of its own: credentials and endpoint are read from the
                # environment now, not from whatever boto3's default session cached
                self._client = boto3.session.Session().client("s3", config=config)
            return self._client

    def _key(self, name: str) -> str:
        return self.prefix + name

    def _call(self, operation: Callable[[], T]) -> T:
        """Run one S3 operation; any failure becomes a 503 naming the store problem."""
        try:
            return operation()
        except TriageError:
            raise
        except Exception as exc:
            raise StoreUnavailableError(
                f"upload store: {describe_s3_error(exc)}; try again later"
            ) from exc

    @staticmethod
    def _code(exc: Exception) -> str:
        response = getattr(exc, "response", None) or {}
        return str(response.get("Error", {}).get("Code", ""))

    # ------------------------------------------------------------ the interface

    validate_name = staticmethod(validate_name)

    def ensure(self) -> None:
        """Nothing to create: the bucket is the operator's (it must exist)."""

    def problem(self) -> str | None:
        """Why uploads would fail now (for ``/ready``): writes and deletes a probe object,
        since reading a bucket says nothing about permission to write to it."""
        key = self._key(f"{PROBE_PREFIX}{uuid.uuid4().hex}")
        try:
            self.client.put_object(Bucket=self.bucket, Key=key, Body=b"")
            self.client.delete_object(Bucket=self.bucket, Key=key)
        except Exception as exc:
            return f"upload store: {describe_s3_error(exc)}"
        return None

    def save(self, png: bytes, *, body_part: str | None = None) -> StoredUpload:
        """Store ``png`` under its sha256 unless it is there (then restart its retention
        clock); with the DICOM body part as a sidecar when given."""
        name = hashlib.sha256(png).hexdigest() + ".png"
        stored = self._call(lambda: self._save(name, png))
        if body_part:
            self.write_sidecar(name, BODY_PART, body_part.encode())
        else:  # the record reflects the latest upload (see UploadStore)
            self._delete_key(self._key(sidecar_name(name, BODY_PART)))
        return stored

    def _save(self, name: str, png: bytes) -> StoredUpload:
        from botocore.exceptions import ClientError

        key = self._key(name)
        for _ in range(5):
            try:
                self.client.put_object(
                    Bucket=self.bucket,
                    Key=key,
                    Body=png,
                    ContentType="image/png",
                    IfNoneMatch="*",
                )
                self._count = None
                return StoredUpload(name, created=True, size=len(png))
            except ClientError as exc:
                if self._code(exc) not in ("PreconditionFailed", "ConditionalRequestConflict"):
                    raise
            try:  # already stored: restart its retention clock
                self.client.copy_object(
                    Bucket=self.bucket,
                    Key=key,
                    CopySource={"Bucket": self.bucket, "Key": key},
                    MetadataDirective="REPLACE",
                    ContentType="image/png",
                    Metadata={"stored": str(int(time.time()))},
                )
                return StoredUpload(name, created=False, size=len(png))
            except ClientError as exc:
                if self._code(exc) not in ("NoSuchKey", "404"):
                    raise
                # deleted between the two calls (a concurrent delete or sweep): write again
        raise StoreUnavailableError("upload store: the object kept disappearing while stored")

    def body_part(self, filename: str) -> str | None:
        data = self.read_sidecar(filename, BODY_PART)
        return data.decode(errors="replace")[:32] if data else None

    def write_sidecar(self, filename: str, kind: str, data: bytes) -> bool:
        """Write ``<filename>.<kind>`` (a whole-object put: atomic) if the upload exists,
        and keep it only if the upload still exists after the put: :meth:`delete` removes
        the upload before listing its sidecars, so whichever order a delete and this write
        interleave in, one of them removes the sidecar (S3 is strongly consistent).
        False when the upload is gone. Raises like a write."""
        key = self._key(sidecar_name(filename, kind))
        if not self.exists(filename):
            return False
        self._call(lambda: self.client.put_object(Bucket=self.bucket, Key=key, Body=data))
        if self.exists(filename):
            return True
        self._delete_key(key)
        return False

    def read_sidecar(self, filename: str, kind: str) -> bytes | None:
        key = self._key(sidecar_name(filename, kind))
        try:
            return bytes(self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read())
        except Exception:
            return None

    def read(self, filename: str) -> bytes:
        key = self._key(validate_name(filename))

        def get() -> bytes:
            from botocore.exceptions import ClientError

            try:
                return bytes(self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read())
            except ClientError as exc:
                if self._code(exc) in ("NoSuchKey", "404"):
                    raise UploadNotFoundError("no upload with that filename") from None
                raise

        return self._call(get)

    def exists(self, filename: str) -> bool:
        key = self._key(validate_name(filename))

        def head() -> bool:
            from botocore.exceptions import ClientError

            try:
                self.client.head_object(Bucket=self.bucket, Key=key)
                return True
            except ClientError as exc:
                if self._code(exc) in ("NoSuchKey", "404", "NotFound"):
                    return False
                raise

        return self._call(head)

    def delete(self, filename: str) -> bool:
        """Remove an upload and its sidecars; False when it did not exist. Of concurrent
        deletes of one upload exactly one answers True (``If-Match`` on its ETag)."""
        name = validate_name(filename)
        key = self._key(name)

        def remove() -> bool:
            from botocore.exceptions import ClientError

            existed = True
            try:  # the upload first, then its sidecars (see write_sidecar)
                etag = self.client.head_object(Bucket=self.bucket, Key=key)["ETag"]
                self.client.delete_object(Bucket=self.bucket, Key=key, IfMatch=etag)
            except ClientError as exc:
                if self._code(exc) not in ("NoSuchKey", "404", "NotFound", "PreconditionFailed"):
                    raise
                existed = False
            for sidecar in self._list(self._key(name + ".")):
                with contextlib.suppress(ClientError):
                    self.client.delete_object(Bucket=self.bucket, Key=sidecar["Key"])
            self._count = None
            return existed

        return self._call(remove)

    def _delete_key(self, key: str) -> None:
        self._call(lambda: self.client.delete_object(Bucket=self.bucket, Key=key))

    def _list(self, prefix: str) -> Iterator[dict[str, Any]]:
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            yield from page.get("Contents", [])

    def names(self) -> Iterator[str]:
        """Stored upload names (sidecars, probes and foreign objects are ignored)."""
        for item in self._call(lambda: list(self._list(self.prefix))):
            name = item["Key"][len(self.prefix) :]
            if NAME_RE.fullmatch(name):
                yield name

    def count(self) -> int:
        """Stored uploads, reused for ``COUNT_TTL_SECONDS`` (a bucket listing is not free);
        the last count (or 0) when the store cannot be listed: ``/metrics`` never fails."""
        cached = self._count
        if cached is not None and time.monotonic() - cached[0] < COUNT_TTL_SECONDS:
            return cached[1]
        try:
            total = sum(1 for _ in self.names())
        except StoreUnavailableError:
            return cached[1] if cached else 0
        self._count = (time.monotonic(), total)
        return total

    def sweep(self, max_age_seconds: float | None, *, now: float | None = None) -> int:
        """Delete uploads older than ``max_age_seconds``, sidecars whose upload is gone and
        probe objects left by a crash; returns the uploads removed."""
        now = time.time() if now is None else now
        objects = self._call(lambda: list(self._list(self.prefix)))
        names = {item["Key"][len(self.prefix) :]: item for item in objects}
        removed, gone = 0, set()
        for name, item in names.items():
            age = now - item["LastModified"].timestamp()
            expired = bool(NAME_RE.fullmatch(name)) and (
                max_age_seconds is not None and age > max_age_seconds
            )
            if expired or (name.startswith(PROBE_PREFIX) and age > 3600):
                self._delete_key(item["Key"])
                if expired:
                    removed += 1
                    gone.add(name)
        for name, item in names.items():
            sidecar = SIDECAR_RE.fullmatch(name)
            if sidecar and (sidecar.group(1) in gone or sidecar.group(1) not in names):
                self._delete_key(item["Key"])
        if removed:
            self._count = None
        return removed
