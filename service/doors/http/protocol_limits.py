"""Request-line and header size limits, enforced by the HTTP server before the app runs.

uvicorn's httptools protocol buffers a request's URL and headers without any bound, so a
100 MB header is read into memory and the request is then served normally. Limits in an
ASGI middleware come too late: the app only sees a request once its headers are complete.
So the limits live in a small subclass of uvicorn's own protocol class, handed to uvicorn
as ``http=`` (see :func:`limited_http_protocol`):

* a request target longer than ``max_url_bytes`` gets **414 URI Too Long**;
* headers totalling more than ``max_header_bytes``, or a request head still incomplete
  after that many bytes, get **431 Request Header Fields Too Large**.

Both answer with the service's usual JSON ``{"detail": ...}`` body and close the
connection; at most one network read (asyncio reads up to 256 KiB) past the limit is held.
"""

from __future__ import annotations

import json
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

REASONS = {414: b"URI Too Long", 431: b"Request Header Fields Too Large"}


class _HeadTooLarge(Exception):
    """Raised from a parser callback to stop parsing (the status is kept on the protocol)."""


def limit_detail(status: int, limit: int) -> str:
    what = "request target (URL)" if status == 414 else "request headers"
    return f"{what} too large: the limit is {limit:,} bytes"


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with bounded request lines and headers."""

    max_url_bytes = 8 * 1024
    max_header_bytes = 64 * 1024

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True
        self._head_bytes = 0  # bytes received while the head is incomplete (a bound)
        self._header_bytes = 0  # exact size of the headers parsed so far
        self._refusal: int | None = None

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        self._head_bytes = 0
        self._header_bytes = 0

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        if len(self.url) > self.max_url_bytes:
            self._refusal = 414
            raise _HeadTooLarge(414)  # uvicorn turns a callback error into send_400_response

    def on_header(self, name: bytes, value: bytes) -> None:
        super().on_header(name, value)
        self._header_bytes += len(name) + len(value) + 4  # ": " and CRLF
        if self._header_bytes > self.max_header_bytes:
            self._refusal = 431
            raise _HeadTooLarge(431)

    def on_headers_complete(self) -> None:
        self._in_head = False
        super().on_headers_complete()

    def send_400_response(self, msg: str) -> None:
        if self._refusal is not None:
            self._refuse(self._refusal)
        else:
            super().send_400_response(msg)

    def data_received(self, data: bytes) -> None:
        if self._in_head:
            self._head_bytes += len(data)
        super().data_received(data)
        if self.transport.is_closing():
            return
        if self._in_head and self._head_bytes > self.max_header_bytes:
            # Still inside the head: no header seen yet means the URL itself is the problem.
            self._refuse(414 if not self.headers and self.url else 431)

    def _refuse(self, status: int) -> None:
        limit = self.max_url_bytes if status == 414 else self.max_header_bytes
        body = json.dumps({"detail": limit_detail(status, limit)}).encode()
        head = [f"HTTP/1.1 {status} ".encode() + REASONS[status] + b"\r\n"]
        for name, value in self.server_state.default_headers:
            head.append(name + b": " + value + b"\r\n")
        head.append(b"content-type: application/json\r\n")
        head.append(f"content-length: {len(body)}\r\n".encode())
        head.append(b"connection: close\r\n\r\n")
        self.transport.write(b"".join(head) + body)
        self.transport.close()


def limited_http_protocol(
    max_url_bytes: int, max_header_bytes: int
) -> type[LimitedHttpToolsProtocol]:
    """A protocol class for ``uvicorn.run(http=...)`` with these limits."""
    return type(
        "LimitedHttpToolsProtocol",
        (LimitedHttpToolsProtocol,),
        {"max_url_bytes": max_url_bytes, "max_header_bytes": max_header_bytes},
    )
