"""Request-line and header limits are enforced by the server, before the app (real uvicorn)."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn

from service.doors.http.protocol_limits import limited_http_protocol

URL_LIMIT = 4096
HEADER_LIMIT = 16 * 1024


async def _echo_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    seen = sum(len(k) + len(v) for k, v in scope["headers"])
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": str(seen).encode()})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server() -> Iterator[int]:
    port = _free_port()
    config = uvicorn.Config(
        _echo_app,
        host="127.0.0.1",
        port=port,
        http=limited_http_protocol(URL_LIMIT, HEADER_LIMIT),
        log_level="error",
        lifespan="off",
    )
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not srv.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert srv.started, "uvicorn did not start"
    yield port
    srv.should_exit = True
    thread.join(5)


def _exchange(port: int, raw: bytes) -> tuple[int, bytes]:
    """Send ``raw`` (as far as the server reads it) and return the status and body."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        with contextlib.suppress(OSError):  # the server may close before we finish sending
            sock.sendall(raw)
        data = b""
        with contextlib.suppress(OSError):
            while chunk := sock.recv(65536):
                data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, body


def test_normal_request_passes(server: int) -> None:
    status, body = _exchange(server, b"GET /ok HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert status == 200
    assert body.endswith(b"0\r\n\r\n")  # chunked, complete


def test_long_url_gets_414_with_json_detail(server: int) -> None:
    raw = b"GET /" + b"a" * (10 * URL_LIMIT) + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    status, body = _exchange(server, raw)
    assert status == 414
    assert json.loads(body)["detail"] == (
        f"request target (URL) too large: the limit is {URL_LIMIT:,} bytes"
    )


def test_huge_header_gets_431_without_reading_it_all(server: int) -> None:
    raw = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * (20 * 1024 * 1024) + b"\r\n\r\n"
    status, body = _exchange(server, raw)
    assert status == 431
    assert "request headers too large" in json.loads(body)["detail"]


def test_many_small_headers_get_431(server: int) -> None:
    headers = b"".join(b"X-H%d: v\r\n" % i for i in range(5000))
    status, _ = _exchange(server, b"GET / HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n")
    assert status == 431


def test_headers_just_under_the_limit_pass(server: int) -> None:
    value = b"v" * (HEADER_LIMIT // 2)
    raw = b"GET / HTTP/1.1\r\nHost: x\r\nX-Ok: " + value + b"\r\nConnection: close\r\n\r\n"
    status, _ = _exchange(server, raw)
    assert status == 200


def test_large_body_is_not_counted_as_header(server: int) -> None:
    body = b"z" * (4 * HEADER_LIMIT)
    raw = (
        b"POST / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    status, _ = _exchange(server, raw)
    assert status == 200
