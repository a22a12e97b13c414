"""The S3 upload store against a real S3-compatible server on loopback (moto in server mode,
with signature checking on): the folder store's guarantees hold across two service
instances sharing one bucket, and every store problem is a clear 503, never a 500."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from bonexr.imaging import decode_image, encode_png
from harness.service_support import assert_error, make_settings, png_bytes, running
from service.adapters.stores.factory import open_store
from service.adapters.stores.s3 import S3UploadStore, parse_s3_url
from service.domain.errors import StoreUnavailableError, UploadNotFoundError

boto3 = pytest.importorskip("boto3")
pytest.importorskip("moto")

BUCKET = "bonexr-uploads"
REGION = "us-east-1"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("the S3 server did not start")


@pytest.fixture(scope="module")
def s3_server() -> Iterator[dict[str, str]]:
    """moto's S3 server in its own process, checking request signatures: the first four
    calls (bucket, IAM user, policy, key) are unauthenticated, every later one must be
    signed with the key made here."""
    port = _free_port()
    env = dict(os.environ, INITIAL_NO_AUTH_ACTION_COUNT="4")
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for_port(port)
        endpoint = f"http://127.0.0.1:{port}"
        setup = {
            "endpoint_url": endpoint,
            "region_name": REGION,
            "aws_access_key_id": "AKIAIOSFODNN7EXAMPLE",
            "aws_secret_access_key": "setup",
        }
        boto3.client("s3", **setup).create_bucket(Bucket=BUCKET)
        iam = boto3.client("iam", **setup)
        iam.create_user(UserName="bonexr")
        policy = {"Effect": "Allow", "Action": "s3:*", "Resource": "*"}
        iam.put_user_policy(
            UserName="bonexr",
            PolicyName="uploads",
            PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [policy]}),
        )
        key = iam.create_access_key(UserName="bonexr")["AccessKey"]
        yield {
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_REGION": REGION,
            "AWS_ACCESS_KEY_ID": key["AccessKeyId"],
            "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"],
        }
    finally:
        process.terminate()
        process.wait(10)


@pytest.fixture
def aws_env(s3_server: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The usual AWS variables pointing at the loopback server (what boto3 reads)."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_CONFIG_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    for name, value in s3_server.items():
        monkeypatch.setenv(name, value)
    return s3_server


def bucket_keys(env: dict[str, str], prefix: str) -> set[str]:
    client = boto3.client(
        "s3",
        endpoint_url=env["AWS_ENDPOINT_URL"],
        region_name=REGION,
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
    )
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return {item["Key"][len(prefix) :] for page in pages for item in page.get("Contents", [])}


def stored_name(data: bytes) -> str:
    return hashlib.sha256(encode_png(decode_image(data))).hexdigest() + ".png"


def test_s3_urls_are_parsed_strictly() -> None:
    assert parse_s3_url("s3://b/a/b/") == ("b", "a/b/")
    assert parse_s3_url("s3://b") == ("b", "")
    for bad in ("s3://", "s3:///prefix", "http://b/x"):
        with pytest.raises(ValueError):
            parse_s3_url(bad)


def test_store_keeps_the_folder_stores_guarantees(aws_env: dict[str, str]) -> None:
    store = S3UploadStore(f"s3://{BUCKET}/unit")
    assert store.problem() is None
    png = png_bytes(40, 30, seed=1)
    # 16 threads store the same bytes at once: exactly one creates the object
    results: list[bool] = []
    threads = [
        threading.Thread(target=lambda: results.append(store.save(png).created)) for _ in range(16)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results.count(True) == 1 and len(results) == 16
    name = hashlib.sha256(png).hexdigest() + ".png"
    assert store.read(name) == png and store.exists(name)
    # a re-upload restarts the retention clock (LastModified), as a file's mtime
    first = store.client.head_object(Bucket=BUCKET, Key=f"unit/{name}")["LastModified"]
    time.sleep(1.1)
    assert store.save(png, body_part="ELBOW").created is False
    later = store.client.head_object(Bucket=BUCKET, Key=f"unit/{name}")["LastModified"]
    assert later > first
    assert store.body_part(name) == "ELBOW"
    assert list(store.names()) == [name] and store.count() == 1
    # retention: not yet expired, then expired (with its sidecar)
    assert store.sweep(3600) == 0
    assert store.sweep(3600, now=time.time() + 7200) == 1
    assert bucket_keys(aws_env, "unit/") == set()
    # delete: once True, then False, sidecars with it; missing objects are 404
    store.save(png, body_part="HAND")
    assert store.delete(name) is True and store.delete(name) is False
    assert bucket_keys(aws_env, "unit/") == set()
    with pytest.raises(UploadNotFoundError):
        store.read(name)


def test_two_instances_share_one_bucket_under_200_concurrent_requests(
    aws_env: dict[str, str], untrained_bundle: Path, tmp_path: Path
) -> None:
    """Uploads, predicts and deletes spread over two service instances at random: an image
    uploaded on one is predicted and deleted on the other; nothing is lost or duplicated."""
    url = f"s3://{BUCKET}/shared"
    settings = [
        make_settings(untrained_bundle, tmp_path / name, upload_store=url, max_batch_wait_ms=5)
        for name in ("a", "b")
    ]
    kept = [png_bytes(40 + i, 30 + i, seed=3000 + i) for i in range(20)]
    doomed = [png_bytes(40 + i, 50 + i, seed=4000 + i) for i in range(30)]
    kept_names = {stored_name(d) for d in kept}
    with running(settings[0]) as (client_a, app_a), running(settings[1]) as (_, app_b):
        assert client_a.get("/ready").status_code == 200

        async def scenario() -> list[tuple[str, int]]:
            rng = random.Random(0)
            clients = [
                httpx.AsyncClient(
                    transport=httpx.ASGITransport(app=app), base_url="http://t", timeout=120
                )
                for app in (app_a, app_b)
            ]

            def any_instance() -> httpx.AsyncClient:
                return rng.choice(clients)

            async def up(data: bytes) -> tuple[str, int]:
                r = await any_instance().post(
                    "/upload", files={"file": ("x.png", data, "image/png")}
                )
                assert r.status_code in (200, 201), r.text
                return r.json()["filename"], r.status_code

            async def lifecycle(data: bytes) -> str:
                name, _ = await up(data)
                r = await any_instance().post("/predict", json={"filename": name})
                assert r.status_code == 200, r.text
                r = await any_instance().delete(f"/uploads/{name}")
                assert r.status_code == 204, r.text
                return name

            jobs: list[Any] = [up(kept[i % 20]) for i in range(140)]
            jobs += [lifecycle(d) for d in doomed]
            jobs += [up(kept[i % 20]) for i in range(30)]  # 170 uploads + 30 in lifecycles
            rng.shuffle(jobs)
            try:
                results = await asyncio.gather(*jobs)
            finally:
                for client in clients:
                    await client.aclose()
            return [r for r in results if isinstance(r, tuple)]

        uploads = asyncio.run(scenario())
        assert len(uploads) == 170  # + 30 inside the lifecycles = 200 uploads
        for name in kept_names:  # created exactly once, whichever instance stored it
            codes = [code for n, code in uploads if n == name]
            assert codes.count(201) == 1, (name, codes)
        assert bucket_keys(aws_env, "shared/") == kept_names  # nothing lost, nothing left
        for app in (app_a, app_b):
            transport = httpx.ASGITransport(app=app)

            async def predict_all(t: httpx.ASGITransport = transport) -> list[int]:
                async with httpx.AsyncClient(transport=t, base_url="http://t") as c:
                    return [
                        (await c.post("/predict", json={"filename": n})).status_code
                        for n in sorted(kept_names)
                    ]

            assert set(asyncio.run(predict_all())) == {200}


@pytest.mark.parametrize(
    ("url", "env", "reason"),
    [
        ("s3://", {}, "names no bucket"),
        (f"s3://{BUCKET}/x", {"AWS_SECRET_ACCESS_KEY": "wrong"}, "credentials were rejected"),
        ("s3://no-such-bucket-here/x", {}, "bucket does not exist"),
        (f"s3://{BUCKET}/x", {"AWS_ENDPOINT_URL": "http://127.0.0.1:9"}, "cannot be reached"),
        ("ftp://host/x", {}, "must be file:///path or s3://bucket"),
    ],
)
def test_store_problems_are_503_naming_the_problem(
    aws_env: dict[str, str],
    untrained_bundle: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    url: str,
    env: dict[str, str],
    reason: str,
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = make_settings(untrained_bundle, tmp_path, upload_store=url)
    with running(settings) as (client, _):
        assert reason in assert_error(client.get("/ready"), 503)["detail"]
        data = png_bytes(40, 30, seed=5)
        upload = client.post("/upload", files={"file": ("x.png", data, "image/png")})
        assert reason in assert_error(upload, 503)["detail"]
        assert client.get("/health").status_code == 200  # alive, just not ready


class CuttingProxy(threading.Thread):
    """A TCP proxy to the S3 server that forwards the first ``limit`` bytes of each
    request and then drops both connections: a network failure mid-upload."""

    def __init__(self, target_port: int, limit: int) -> None:
        super().__init__(daemon=True)
        self.target_port, self.limit = target_port, limit
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.cut = 0

    def run(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            sent = 0
            with client, upstream:
                while sent < self.limit:
                    chunk = client.recv(min(65536, self.limit - sent))
                    if not chunk:
                        break
                    upstream.sendall(chunk)
                    sent += len(chunk)
                self.cut += 1

    def close(self) -> None:
        self.server.close()


def test_network_failure_mid_upload_is_503_and_leaves_no_object(
    aws_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    target = int(aws_env["AWS_ENDPOINT_URL"].rsplit(":", 1)[1])
    proxy = CuttingProxy(target, limit=3000)  # headers and the start of the body only
    proxy.start()
    try:
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{proxy.port}")
        store = S3UploadStore(f"s3://{BUCKET}/cut")
        big = os.urandom(200_000)
        with pytest.raises(StoreUnavailableError, match=r"upload store: .*try again later"):
            store.save(big)
        assert proxy.cut >= 1
    finally:
        proxy.close()
    assert bucket_keys(aws_env, "cut/") == set()  # no partial object became visible


def test_file_urls_select_the_folder_store(untrained_bundle: Path, tmp_path: Path) -> None:
    folder = tmp_path / "elsewhere"
    settings = make_settings(untrained_bundle, tmp_path, upload_store=f"file://{folder}")
    store = open_store(settings)
    stored = store.save(png_bytes(20, 20, seed=7))
    assert (folder / stored.filename).is_file()
    bad = make_settings(untrained_bundle, tmp_path, upload_store="file://host/x")
    assert "not a file:///absolute/path" in str(open_store(bad).problem())


class SilentEndpoint:
    """A TCP server on loopback that accepts every connection and never answers: the
    hung S3 endpoint. Counts the connections (each attempt of a call opens one)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = int(self.sock.getsockname()[1])
        self.accepted = 0
        self.held: list[socket.socket] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            self.held.append(conn)

    def close(self) -> None:
        self.sock.close()
        for conn in self.held:
            conn.close()


def _point_at(endpoint: SilentEndpoint, monkeypatch: pytest.MonkeyPatch) -> None:
    """AWS settings that send every S3 call to ``endpoint``."""
    for name, value in {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{endpoint.port}",
        "AWS_REGION": REGION,
        "AWS_ACCESS_KEY_ID": "AKIAIOSFODNN7EXAMPLE",
        "AWS_SECRET_ACCESS_KEY": "unused",
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    }.items():
        monkeypatch.setenv(name, value)


def test_a_hung_endpoint_fails_each_call_after_bounded_retries(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An endpoint that accepts connections and never answers: every store call fails with
    the store-unavailable error after exactly 1 + retries attempts (short read timeouts),
    instead of hanging a worker thread; ``count`` (for /metrics) still answers."""
    endpoint = SilentEndpoint()
    try:
        _point_at(endpoint, monkeypatch)
        store = S3UploadStore(
            f"s3://{BUCKET}/hung", connect_timeout=0.2, read_timeout=0.2, retries=1
        )
        name = "0" * 64 + ".png"
        for call in (lambda: store.read(name), lambda: store.save(png_bytes(8, 8, seed=1))):
            before = endpoint.accepted
            with pytest.raises(StoreUnavailableError, match="cannot be reached"):
                call()
            assert endpoint.accepted - before == 2  # the first attempt and 1 retry
        assert "cannot be reached" in (store.problem() or "")
        assert store.count() == 0
    finally:
        endpoint.close()


def test_a_hung_endpoint_never_holds_up_health_model_or_metrics(
    monkeypatch: pytest.MonkeyPatch, untrained_bundle: Path, tmp_path: Path
) -> None:
    """45 uploads wait on an endpoint that never answers; meanwhile ``/health``, ``/model``
    and ``/metrics`` answer (while uploads are still waiting: nothing of theirs runs in
    the threadpool the hung store calls fill), ``/ready`` is a 503 naming the store, and
    every upload ends as a 503 naming it, none lost to a 500."""
    endpoint = SilentEndpoint()
    try:
        _point_at(endpoint, monkeypatch)
        settings = make_settings(untrained_bundle, tmp_path, upload_store=f"s3://{BUCKET}/hung")
        with running(settings) as (client, _), ThreadPoolExecutor(45) as pool:
            uploads = [
                pool.submit(
                    client.post,
                    "/upload",
                    files={"file": ("x.png", png_bytes(40, 30, seed=i), "image/png")},
                )
                for i in range(45)
            ]
            while endpoint.accepted < 10:  # store calls are hanging now
                threading.Event().wait(0.01)
            for path in ("/health", "/model", "/metrics"):
                assert client.get(path).status_code == 200, path
            assert not all(upload.done() for upload in uploads)
            assert "cannot be reached" in assert_error(client.get("/ready"), 503)["detail"]
            for upload in uploads:
                assert "cannot be reached" in assert_error(upload.result(), 503)["detail"]
    finally:
        endpoint.close()
