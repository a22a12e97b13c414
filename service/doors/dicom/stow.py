"""Reading a STOW-RS request body (``multipart/related; type="application/dicom"``).

The body streams through ``python-multipart``'s parser into one spooled temporary file per
part (memory stays at about one part's first megabyte whatever the study's size), and every
part is checked before any is stored: a body that is not well-formed multipart is a 400, a
part that is not ``application/dicom`` (or whose bytes are not a DICOM file) a 415, a part
over ``BONEXR_MAX_UPLOAD_BYTES`` a 413, more than :data:`MAX_PARTS` parts a 413 -- and
then nothing of the request was kept.
"""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import IO

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from service.domain.errors import (
    MalformedBodyError,
    PayloadTooLargeError,
    UnsupportedMediaTypeError,
)

DICOM = "application/dicom"
#: Parts held in memory up to this size, then on disk.
SPOOL_BYTES = 1024 * 1024
#: Most parts (instances) in one request: a study of more is sent in several requests. A
#: million tiny parts once took the server from 365 to 1,411 MiB.
MAX_PARTS = 1000
#: Most bytes of one part's headers.
MAX_PART_HEADER_BYTES = 16 * 1024


@dataclass
class _Part:
    headers: dict[str, str] = field(default_factory=dict)
    body: IO[bytes] = field(default_factory=lambda: tempfile.SpooledTemporaryFile(SPOOL_BYTES))  # noqa: SIM115 (closed by StowBody.close)
    size: int = 0


def boundary_of(content_type: str | None) -> bytes:
    """The multipart boundary of a STOW-RS request; 415 for another media type."""
    media, options = parse_options_header(content_type or "")
    if media != b"multipart/related":
        raise UnsupportedMediaTypeError(
            'STOW-RS takes multipart/related; type="application/dicom" '
            f"(got {media.decode(errors='replace')[:60] or 'no Content-Type'})"
        )
    kind = options.get(b"type")
    if kind is not None and kind.lower() != DICOM.encode():
        raise UnsupportedMediaTypeError(
            f"this STOW-RS takes application/dicom parts (type={kind.decode(errors='replace')})"
        )
    boundary = options.get(b"boundary")
    if not boundary:
        raise MalformedBodyError("multipart/related without a boundary")
    return boundary


class StowBody:
    """The checked parts of one request, spooled; :meth:`instances` reads one at a time."""

    def __init__(self, parts: list[_Part]) -> None:
        self._parts = parts

    def __len__(self) -> int:
        return len(self._parts)

    def instances(self) -> Iterator[bytes]:
        for part in self._parts:
            part.body.seek(0)
            yield part.body.read()

    def close(self) -> None:
        for part in self._parts:
            part.body.close()


def _check_header(header: list[bytes]) -> None:
    if len(header[0]) + len(header[1]) > MAX_PART_HEADER_BYTES:
        raise MalformedBodyError(f"a part header is longer than {MAX_PART_HEADER_BYTES} bytes")


async def read_parts(
    chunks: AsyncIterator[bytes], content_type: str | None, *, max_part_bytes: int
) -> StowBody:
    """Every part, each checked to be a DICOM file (see the module docstring); the caller
    closes the result."""
    boundary = boundary_of(content_type)
    parts: list[_Part] = []
    header: list[bytes] = [b"", b""]
    state = {"ended": False}

    def on_part_begin() -> None:
        if len(parts) >= MAX_PARTS:
            raise PayloadTooLargeError(
                f"more than {MAX_PARTS} parts in one STOW-RS request: send the study in several"
            )
        parts.append(_Part())

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header[0] += data[start:end]
        _check_header(header)

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header[1] += data[start:end]
        _check_header(header)

    def on_header_end() -> None:
        name = header[0].decode("latin-1").strip().lower()
        parts[-1].headers[name] = header[1].decode("latin-1").strip()
        header[0], header[1] = b"", b""

    def on_part_data(data: bytes, start: int, end: int) -> None:
        part = parts[-1]
        part.size += end - start
        if part.size > max_part_bytes:
            raise PayloadTooLargeError(
                f"part {len(parts)} is larger than the limit of {max_part_bytes:,} bytes"
            )
        part.body.write(data[start:end])

    def on_end() -> None:
        state["ended"] = True

    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": on_part_begin,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_part_data": on_part_data,
            "on_end": on_end,
        },
        max_header_count=16,
    )
    body = StowBody(parts)
    try:
        try:
            async for chunk in chunks:
                parser.write(chunk)
            parser.finalize()
        except MultipartParseError:
            raise MalformedBodyError(
                "the body is not well-formed multipart/related (boundary or part headers)"
            ) from None
        if not state["ended"] or not parts:
            raise MalformedBodyError(
                "the multipart body ended before its closing boundary" if parts else
                "the multipart body has no parts"
            )  # fmt: skip
        for number, part in enumerate(parts, 1):
            _check(number, part)
    except BaseException:
        body.close()
        raise
    return body


def _check(number: int, part: _Part) -> None:
    media, _ = parse_options_header(part.headers.get("content-type", DICOM))
    if media != DICOM.encode():
        raise UnsupportedMediaTypeError(
            f"part {number} is {media.decode(errors='replace')[:60]}, not {DICOM}; "
            "nothing of this request was stored"
        )
    part.body.seek(0)
    head = part.body.read(132)
    if len(head) < 132 or head[128:132] != b"DICM":
        raise UnsupportedMediaTypeError(
            f"part {number} is not a DICOM file (no DICM prefix); nothing of this request "
            "was stored"
        )
