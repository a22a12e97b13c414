"""Bad input, size limits and API keys: exact statuses, JSON bodies, and the server survives."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from harness.service_support import (
    assert_error,
    assert_still_serving,
    cmyk_jpeg_bytes,
    huge_header_png,
    make_settings,
    noise,
    palette_png_bytes,
    png16_bytes,
    png_bytes,
    rgba_png_bytes,
    running,
)
from service.doors.http.body_limit import (
    MULTIPART_ALLOWANCE,
    SMALL_BODY_LIMIT,
    BodySizeLimitMiddleware,
)
from service.doors.http.security import key_matches

LIMIT = 200_000  # small byte limit for this module
UNKNOWN = "cd" * 32 + ".png"


#: Settings of this module's shared running app (the ``api`` fixture in conftest).
SERVICE_OVERRIDES = {"max_upload_bytes": LIMIT}


def upload_file(client: TestClient, data: bytes, name: str = "x.png") -> httpx.Response:
    return client.post("/upload", files={"file": (name, data, "image/png")})


def big_png() -> bytes:
    """Random noise barely compresses: well over LIMIT bytes."""
    from PIL import Image

    from harness.service_support import encode

    data = encode(Image.fromarray(noise(600, 600, seed=1), mode="L"))
    assert len(data) > LIMIT + MULTIPART_ALLOWANCE
    return data


# ---------------------------------------------------------------------- upload: bad bodies


def test_empty_body(client: TestClient) -> None:
    assert "malformed" in assert_error(client.post("/upload"), 400)["detail"]
    assert_still_serving(client)


def test_multipart_without_file_field(client: TestClient) -> None:
    r = client.post("/upload", files={"image": ("x.png", png_bytes(), "image/png")})
    assert "file" in assert_error(r, 400)["detail"]
    r = client.post("/upload", data={"file": "not a file, a plain form value"})
    assert_error(r, 400)
    assert_still_serving(client)


def test_garbled_multipart(client: TestClient) -> None:
    r = client.post(
        "/upload",
        content=b"--xyz\r\nthis is not a part\r\n",
        headers={"content-type": "multipart/form-data; boundary=xyz"},
    )
    assert_error(r, 400)
    assert_still_serving(client)


def test_zero_byte_file(client: TestClient) -> None:
    assert "empty" in assert_error(upload_file(client, b""), 422)["detail"]
    assert_still_serving(client)


def test_text_file_named_png(client: TestClient) -> None:
    r = upload_file(client, b"hello, I am definitely a PNG\n" * 10, name="scan.png")
    assert "unsupported" in assert_error(r, 415)["detail"]
    assert_still_serving(client)


def test_truncated_png(client: TestClient) -> None:
    data = png_bytes(200, 150, seed=2)
    assert_error(upload_file(client, data[: len(data) // 2]), 422)
    assert_still_serving(client)


def test_png_header_claiming_huge_dimensions(client: TestClient) -> None:
    data = huge_header_png()
    assert len(data) < 200
    assert "pixels" in assert_error(upload_file(client, data), 413)["detail"]
    assert_still_serving(client)


def test_one_pixel_image(client: TestClient) -> None:
    from PIL import Image

    from harness.service_support import encode

    assert_error(upload_file(client, encode(Image.new("L", (1, 1), 128))), 422)
    assert_still_serving(client)


@pytest.mark.parametrize(
    ("builder", "fmt"),
    [
        (png16_bytes, "PNG"),
        (rgba_png_bytes, "PNG"),
        (palette_png_bytes, "PNG"),
        (cmyk_jpeg_bytes, "JPEG"),
    ],
)
def test_unusual_but_valid_images_are_accepted(client: TestClient, builder, fmt: str) -> None:
    r = upload_file(client, builder())
    assert r.status_code in (200, 201), r.text
    assert r.json()["format"] == fmt
    p = client.post("/predict", json={"filename": r.json()["filename"]})
    assert p.status_code == 200, p.text


def test_sixteen_bit_png_uses_full_range(api) -> None:
    client, app = api
    name = upload_file(client, png16_bytes()).json()["filename"]
    from PIL import Image

    stored = Image.open(app.state.services.settings.upload_dir / name)
    assert stored.mode == "L" and stored.getextrema() == (0, 255)


# ---------------------------------------------------------------------- byte limit


def test_file_over_byte_limit_with_content_length(client: TestClient) -> None:
    r = upload_file(client, big_png())
    assert "limit" in assert_error(r, 413)["detail"]
    assert_still_serving(client)
    # Answered before routing, yet labelled with its route template.
    assert 'route="/upload",status="413"' in client.get("/metrics").text


def test_file_just_over_limit_inside_envelope_allowance(client: TestClient) -> None:
    """Body within the streaming allowance but the file part over the exact limit: 413."""
    data = b"\x89PNG\r\n\x1a\n" + b"\x00" * (LIMIT + 10)
    assert "limit" in assert_error(upload_file(client, data), 413)["detail"]


def test_chunked_body_over_limit_is_cut_off_early(api) -> None:
    """No Content-Length: the middleware counts chunks and stops reading past the limit."""
    client, app = api
    boundary = "b0undary"
    chunk = b"\x00" * 65536
    total_chunks = 200  # 13 MB if read to the end
    pulled = 0

    async def body() -> AsyncIterator[bytes]:
        nonlocal pulled
        pulled += 1
        yield (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="x.png"\r\n'
            "Content-Type: image/png\r\n\r\n"
        ).encode() + b"\x89PNG\r\n\x1a\n"
        for _ in range(total_chunks):
            pulled += 1
            yield chunk
        yield f"\r\n--{boundary}--\r\n".encode()

    async def send() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as ac:
            return await ac.post(
                "/upload",
                content=body(),
                headers={"content-type": f"multipart/form-data; boundary={boundary}"},
            )

    r = asyncio.run(send())
    assert "content-length" not in {k.lower() for k in r.request.headers}
    assert_error(r, 413)
    max_needed = (LIMIT + MULTIPART_ALLOWANCE) // len(chunk) + 2
    assert pulled <= max_needed + 1, f"read {pulled} chunks; the limit needs {max_needed}"
    assert_still_serving(client)


def test_content_length_over_limit_refused_before_reading() -> None:
    """Pure ASGI check: the app is never called and the body never read."""
    events: list[str] = []
    sent: list[dict] = []

    async def inner(scope, receive, send) -> None:
        events.append("app called")

    async def receive() -> dict:
        events.append("body read")
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    middleware = BodySizeLimitMiddleware(inner, upload_limit=1000)
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/upload",
        "headers": [(b"content-length", b"999999999")],
    }
    asyncio.run(middleware(scope, receive, send))
    assert events == []
    assert sent[0]["status"] == 413
    assert json.loads(sent[1]["body"])["detail"]


def test_small_body_limit_on_json_routes(client: TestClient) -> None:
    payload = json.dumps({"filename": UNKNOWN, "pad": "x" * (SMALL_BODY_LIMIT + 10)})
    r = client.post("/predict", content=payload, headers={"content-type": "application/json"})
    assert_error(r, 413)


# ---------------------------------------------------------------------- predict: bad bodies


def test_predict_path_traversal_filename(client: TestClient) -> None:
    body = assert_error(client.post("/predict", json={"filename": "../../etc/passwd"}), 422)
    assert body["errors"][0]["loc"] == ["body", "filename"]
    assert "passwd" not in json.dumps(body)  # the input is not echoed back
    assert_still_serving(client)


@pytest.mark.parametrize(
    "name",
    ["", "x.png", "A" * 64 + ".png", "0" * 64 + ".PNG", "0" * 64 + ".png/../x", "0" * 63 + ".png"],
)
def test_predict_other_invalid_filenames(client: TestClient, name: str) -> None:
    assert_error(client.post("/predict", json={"filename": name}), 422)


def test_predict_unknown_filename(client: TestClient) -> None:
    assert_error(client.post("/predict", json={"filename": UNKNOWN}), 404)
    assert_still_serving(client)


def test_predict_non_json_body(client: TestClient) -> None:
    r = client.post("/predict", content=b"{not json", headers={"content-type": "application/json"})
    assert "not valid JSON" in assert_error(r, 400)["detail"]
    r = client.post("/predict", content=b"filename=x", headers={"content-type": "text/plain"})
    assert_error(r, 400)
    assert_error(client.post("/predict"), 400)
    assert_error(client.post("/predict", json=["a", "list"]), 400)
    assert_still_serving(client)


def test_predict_wrong_field_types(client: TestClient) -> None:
    assert_error(client.post("/predict", json={"filename": 12}), 422)
    assert_error(client.post("/predict", json={"name": UNKNOWN}), 422)


def test_delete_invalid_names(client: TestClient) -> None:
    assert_error(client.delete("/uploads/..%2F..%2Fetc%2Fpasswd"), 404)  # not a route
    assert_error(client.delete("/uploads/passwd"), 422)
    assert_error(client.delete(f"/uploads/{UNKNOWN}"), 404)


# ---------------------------------------------------------------------- API keys


def test_api_keys(untrained_bundle: Path, tmp_path: Path) -> None:
    settings = make_settings(untrained_bundle, tmp_path, api_keys="alpha-key, beta-key")
    with running(settings) as (client, _):
        for public in ("/health", "/ready", "/metrics", "/openapi.json", "/docs"):
            assert client.get(public).status_code == 200, public
        data = png_bytes(seed=3)
        files = {"file": ("x.png", data, "image/png")}
        assert "X-API-Key" in assert_error(client.post("/upload", files=files), 401)["detail"]
        wrong = {"X-API-Key": "alpha-ke"}
        assert_error(client.post("/upload", files=files, headers=wrong), 401)
        assert_error(client.get("/rules", headers=wrong), 401)
        assert_error(client.get("/model"), 401)
        assert_error(client.post("/predict", json={"filename": UNKNOWN}), 401)
        assert_error(client.delete(f"/uploads/{UNKNOWN}"), 401)
        ok = client.post("/upload", files=files, headers={"X-API-Key": "beta-key"})
        assert ok.status_code == 201
        name = ok.json()["filename"]
        p = client.post("/predict", json={"filename": name}, headers={"X-API-Key": "alpha-key"})
        assert p.status_code == 200
        spec = client.get("/openapi.json").json()
        assert "APIKeyHeader" in spec["components"]["securitySchemes"]
        assert "401" in spec["paths"]["/upload"]["post"]["responses"]
        assert 'status="401"' in client.get("/metrics").text


def test_unauthenticated_body_is_never_read(untrained_bundle: Path, tmp_path: Path) -> None:
    settings = make_settings(untrained_bundle, tmp_path, api_keys="k")
    with running(settings, wait=False) as (_, app):
        pulled = 0

        async def body() -> AsyncIterator[bytes]:
            nonlocal pulled
            for _ in range(50):
                pulled += 1
                yield b"\x00" * 65536

        async def send() -> httpx.Response:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as ac:
                return await ac.post(
                    "/upload", content=body(), headers={"content-type": "multipart/form-data"}
                )

        assert_error(asyncio.run(send()), 401)
        assert pulled <= 1


def test_key_matching_is_exact() -> None:
    keys = [b"alpha", b"beta"]
    assert key_matches(b"beta", keys)
    assert not key_matches(b"bet", keys)
    assert not key_matches(b"betaa", keys)
    assert not key_matches(None, keys)
    assert not key_matches(b"", keys)
