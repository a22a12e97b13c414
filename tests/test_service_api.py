"""The service's API contract: happy paths, metadata stripping, readiness, micro-batching."""

from __future__ import annotations

import asyncio
import io
import os
import re
import shutil
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from bonexr.imaging import decode_image, prepare_pixels
from harness.service_support import (
    FILENAME_RE,
    assert_error,
    dicom_bytes,
    jpeg_with_exif_bytes,
    make_settings,
    png_bytes,
    running,
    wait_for,
)
from service.doors.http.app import create_app

UNKNOWN = "ab" * 32 + ".png"


def upload(client: TestClient, data: bytes, name: str = "scan.png") -> httpx.Response:
    return client.post("/upload", files={"file": (name, data, "application/octet-stream")})


def stored_files(app) -> list[str]:
    return sorted(os.listdir(app.state.services.settings.upload_dir))


def test_health_and_ready(client: TestClient) -> None:
    assert client.get("/health").json() == {"status": "ok"}
    ready = client.get("/ready")
    assert ready.status_code == 200
    body = ready.json()
    assert body["status"] == "ready"
    assert body["model"]["name"] == "tiny" and body["model"]["version"]
    assert body["providers"]
    # the random-init bundle measured no bf16: fp32 whatever the CPU
    assert body["runtime"].startswith(("openvino fp32", "onnxruntime fp32"))


def test_upload_same_bytes_same_name_stored_once(api) -> None:
    client, app = api
    data = png_bytes(90, 70, seed=101)
    first = upload(client, data)
    assert first.status_code == 201, first.text
    body = first.json()
    assert re.match(FILENAME_RE, body["filename"])
    assert (body["width"], body["height"], body["format"], body["bytes"]) == (
        90,
        70,
        "PNG",
        len(data),
    )
    second = upload(client, data, name="other-name.png")
    assert second.status_code == 200
    assert second.json()["filename"] == body["filename"]
    assert stored_files(app).count(body["filename"]) == 1
    # The stored file is exactly what the name says: sha256 of its bytes.
    import hashlib

    stored = (app.state.services.settings.upload_dir / body["filename"]).read_bytes()
    assert hashlib.sha256(stored).hexdigest() + ".png" == body["filename"]
    assert len(stored) == body["stored_bytes"]


def test_predict_contract(api) -> None:
    client, app = api
    name = upload(client, png_bytes(120, 100, seed=7)).json()["filename"]
    r = client.post("/predict", json={"filename": name})
    assert r.status_code == 200, r.text
    p = r.json()
    assert set(p) == {
        "filename",
        "body_part",
        "result",
        "body_part_probabilities",
        "bone_type",  # deprecated names, answered until 0.8.0
        "bone_type_probabilities",
        "abnormality_probability",
        "threshold",
        "model",
        "heatmap_url",
        "operating_point",
        "content_score",
        "warnings",
    }
    assert p["operating_point"]["name"] == "balanced"  # a bundle without operating points
    assert p["content_score"] is None  # and without a content gate
    probs = p["bone_type_probabilities"]
    assert list(probs) == ["Elbow", "Hand", "Shoulder"]
    assert sum(probs.values()) == pytest.approx(1.0, abs=1e-5)
    assert p["bone_type"] == max(probs, key=probs.get)
    assert 0.0 <= p["abnormality_probability"] <= 1.0
    expected = "abnormal" if p["abnormality_probability"] >= p["threshold"] else "normal"
    assert p["result"] == expected
    assert p["threshold"] == 0.5
    engine = app.state.services.engine
    assert p["model"] == {
        "name": "tiny", "version": engine.model_version, "card_url": "/model/card",
    }  # fmt: skip
    # The untrained router is near uniform (below the 0.6 floor) and the bundle is synthetic.
    assert any("router is unsure" in w for w in p["warnings"])
    assert any("synthetic" in w and "not for clinical use" in w for w in p["warnings"])


def test_predict_matches_engine_on_same_pixels(api) -> None:
    client, app = api
    data = png_bytes(77, 131, seed=8)
    name = upload(client, data).json()["filename"]
    p = client.post("/predict", json={"filename": name}).json()
    engine = app.state.services.engine
    direct = engine.predict_batch(prepare_pixels(decode_image(data), engine.input_size)[None])[0]
    assert p["abnormality_probability"] == pytest.approx(direct.abnormality_probability, abs=1e-6)
    assert p["bone_type"] == direct.bone_type


def test_no_warning_when_router_confident(untrained_bundle: Path, tmp_path: Path) -> None:
    settings = make_settings(untrained_bundle, tmp_path, router_confidence_floor=0.0)
    with running(settings) as (client, _):
        name = upload(client, png_bytes(seed=9)).json()["filename"]
        warnings = client.post("/predict", json={"filename": name}).json()["warnings"]
    assert not any("router is unsure" in w for w in warnings)


def test_rules_png_and_json(client: TestClient) -> None:
    r = client.get("/rules")
    assert r.status_code == 200
    assert r.headers["content-type"] == "image/png"
    image = Image.open(io.BytesIO(r.content))
    image.load()
    assert image.format == "PNG"
    assert 600 <= image.width <= 2000 and 300 <= image.height <= 2000
    assert np.asarray(image.convert("L")).min() < 50  # there is dark text on it

    rules = client.get("/rules", headers={"Accept": "application/json"})
    assert rules.status_code == 200
    data = rules.json()
    assert data["accepted_formats"] == ["PNG", "JPEG", "WebP", "DICOM"]
    assert data["max_upload_bytes"] == 20 * 1024 * 1024
    assert data["max_pixels"] == 50_000_000
    assert data["body_parts"] == ["Elbow", "Hand", "Shoulder"]
    assert "hardware" in data["abnormal_means"]
    assert "medical device" in data["not_a_medical_device"]
    assert data["model"]["name"] == "tiny" and data["model_status"] == "ready"
    # q-values: PNG preferred over JSON -> PNG.
    png = client.get("/rules", headers={"Accept": "application/json;q=0.5, image/png"})
    assert png.headers["content-type"] == "image/png"


def test_rules_follow_live_settings(untrained_bundle: Path, tmp_path: Path) -> None:
    settings = make_settings(untrained_bundle, tmp_path, max_upload_bytes=12345, max_pixels=999_999)
    with running(settings) as (client, _):
        data = client.get("/rules", headers={"Accept": "application/json"}).json()
        png = client.get("/rules").content
    assert (data["max_upload_bytes"], data["max_pixels"]) == (12345, 999_999)
    with running(make_settings(untrained_bundle, tmp_path / "b")) as (client, _):
        assert client.get("/rules").content != png  # re-rendered from the other limits


def test_model_summary(client: TestClient) -> None:
    r = client.get("/model")
    assert r.status_code == 200
    m = r.json()
    assert m["name"] == "tiny" and m["version"]
    assert m["synthetic"] is True
    assert m["body_parts"] == ["Elbow", "Hand", "Shoulder"]
    point = {
        "image": 0.5,
        "image_rule": "fixed-0.5-untrained",
        "study": 0.5,
        "study_rule": "fixed-0.5-untrained",
    }
    assert m["thresholds"] == {"Elbow": point, "Hand": point, "Shoulder": point}
    # a random-init export has neither a content gate nor calibration, and says so
    assert len(m["warnings"]) == 2
    assert "has no content gate" in m["warnings"][0]
    assert "uncalibrated probabilities" in m["warnings"][1]
    assert m["content_gate"] is None and m["calibration"] == {}
    assert m["default_operating_point"] == "balanced"
    assert m["input_size"] == 64
    assert isinstance(m["metrics"], dict)
    assert "synthetic" in m["intended_use"]
    assert m["created_at"]
    # fixed thresholds, no target sensitivity: nothing to guarantee
    assert m["guarantees"] == {"Elbow": {}, "Hand": {}, "Shoulder": {}}


def test_a_bundle_without_a_model_card_says_so(client: TestClient) -> None:
    r = client.get("/model/card")
    assert r.status_code == 404 and "no model card" in r.json()["detail"]


def test_metrics_after_requests(client: TestClient) -> None:
    name = upload(client, png_bytes(seed=10)).json()["filename"]
    assert client.post("/predict", json={"filename": name}).status_code == 200
    client.get("/definitely-not-a-route")
    text = client.get("/metrics").text
    for metric in (
        "bonexr_http_requests_total",
        "bonexr_http_request_duration_seconds_bucket",
        "bonexr_queue_wait_seconds_bucket",
        "bonexr_batch_size_bucket",
        "bonexr_inference_seconds_bucket",
        "bonexr_uploads_total",
        "bonexr_uploads_stored",
        "bonexr_model_ready 1.0",
    ):
        assert metric in text, metric
    assert 'route="/predict",status="200"' in text
    assert 'model="router"' in text
    assert 'route="<unmatched>",status="404"' in text
    assert "definitely-not-a-route" not in text  # raw paths never become labels
    assert name not in text


def test_delete_then_predict_404(api) -> None:
    client, app = api
    name = upload(client, png_bytes(seed=11)).json()["filename"]
    assert client.delete(f"/uploads/{name}").status_code == 204
    assert name not in stored_files(app)
    assert_error(client.post("/predict", json={"filename": name}), 404)
    assert_error(client.delete(f"/uploads/{name}"), 404)
    assert_error(client.delete("/uploads/not-a-valid-name.png"), 422)


def test_exif_and_metadata_stripped(api) -> None:
    client, app = api
    data = jpeg_with_exif_bytes()
    assert b"DOE^JANE" in data
    r = upload(client, data, name="DOE_JANE.jpg")
    assert r.status_code == 201 and r.json()["format"] == "JPEG"
    path = app.state.services.settings.upload_dir / r.json()["filename"]
    stored = path.read_bytes()
    assert b"DOE^JANE" not in stored and b"Dr. Who" not in stored and b"secret" not in stored
    image = Image.open(path)
    assert image.format == "PNG" and image.mode == "L"
    assert not image.getexif()
    assert not {k for k in image.info if k not in ("dpi",)}, image.info
    for chunk in (b"tEXt", b"iTXt", b"zTXt", b"eXIf", b"iCCP", b"tIME"):
        assert chunk not in stored
    assert "DOE" not in " ".join(stored_files(app))


def test_dicom_upload_is_accepted_and_stripped(api) -> None:
    client, app = api
    r = upload(client, dicom_bytes(), name="scan.dcm")
    assert r.status_code == 201, r.text
    assert r.json()["format"] == "DICOM"
    stored = (app.state.services.settings.upload_dir / r.json()["filename"]).read_bytes()
    assert b"DOE^JANE" not in stored
    assert client.post("/predict", json={"filename": r.json()["filename"]}).status_code == 200


def test_unknown_route_and_wrong_method_are_json(client: TestClient) -> None:
    assert_error(client.get("/nope"), 404)
    r = client.put("/health")
    assert_error(r, 405)
    assert "GET" in r.headers["allow"]


def test_openapi_documents_every_error(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    assert "ErrorResponse" in spec["components"]["schemas"]
    expected = {
        ("post", "/upload"): {"400", "413", "415", "422"},
        ("post", "/predict"): {"400", "404", "422", "503"},
        ("delete", "/uploads/{filename}"): {"404", "422"},
        ("get", "/model"): {"503"},
        ("get", "/ready"): {"503"},
    }
    for (method, path), codes in expected.items():
        responses = spec["paths"][path][method]["responses"]
        assert codes <= set(responses), (path, set(responses))
        for code in codes:
            ref = responses[code]["content"]["application/json"]["schema"]["$ref"]
            assert ref.endswith("/ErrorResponse")
    predict = spec["components"]["schemas"]["PredictionResponse"]
    for name, prop in predict["properties"].items():
        if name != "model":
            assert prop.get("description"), name
    assert "image/png" in spec["paths"]["/rules"]["get"]["responses"]["200"]["content"]
    assert client.get("/docs").status_code == 200


def test_predict_before_bundle_loaded_is_503(untrained_bundle: Path, tmp_path: Path) -> None:
    app = create_app(make_settings(untrained_bundle, tmp_path))
    client = TestClient(app)  # not a context manager: lifespan (and loading) never runs
    assert client.get("/health").status_code == 200
    body = assert_error(client.get("/ready"), 503)
    assert "not loaded" in body["detail"]
    assert (
        "not loaded"
        in assert_error(client.post("/predict", json={"filename": UNKNOWN}), 503)["detail"]
    )
    assert_error(client.get("/model"), 503)
    rules = client.get("/rules", headers={"Accept": "application/json"}).json()
    assert rules["model"] is None and rules["body_parts"] == []


def test_tampered_bundle_is_not_ready(untrained_bundle: Path, tmp_path: Path) -> None:
    models = tmp_path / "models"
    shutil.copytree(untrained_bundle, models / "tiny")
    onnx = models / "tiny" / "router.onnx"
    data = bytearray(onnx.read_bytes())
    data[len(data) // 2] ^= 0xFF
    onnx.write_bytes(bytes(data))
    settings = make_settings(untrained_bundle, tmp_path, models_dir=models)
    with running(settings) as (client, _):
        assert client.get("/health").status_code == 200
        detail = assert_error(client.get("/ready"), 503)["detail"]
        assert "sha256 mismatch" in detail and "router.onnx" in detail
        assert str(tmp_path) not in detail  # server paths are not disclosed
        name = upload(client, png_bytes(seed=12)).json()["filename"]  # uploads still work
        assert (
            "sha256 mismatch"
            in assert_error(client.post("/predict", json={"filename": name}), 503)["detail"]
        )
        assert_error(client.get("/model"), 503)
        assert "bonexr_model_ready 0.0" in client.get("/metrics").text


def test_missing_bundle_is_not_ready(untrained_bundle: Path, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    settings = make_settings(untrained_bundle, tmp_path, models_dir=tmp_path / "empty")
    with running(settings) as (client, _):
        assert "no model bundle" in assert_error(client.get("/ready"), 503)["detail"]


def test_retention_sweep_on_startup(untrained_bundle: Path, tmp_path: Path) -> None:
    settings = make_settings(untrained_bundle, tmp_path, retention_hours=1.0)
    store = settings.upload_dir
    store.mkdir(parents=True)
    old, fresh = "0" * 64 + ".png", "1" * 64 + ".png"
    for name in (old, fresh, ".tmp-leftover.png"):
        (store / name).write_bytes(png_bytes(seed=13))
    two_hours_ago = os.path.getmtime(store / old) - 2 * 3600
    os.utime(store / old, (two_hours_ago, two_hours_ago))
    os.utime(store / ".tmp-leftover.png", (two_hours_ago, two_hours_ago))
    with running(settings) as (client, _):
        assert wait_for(lambda: not (store / old).exists())
        assert (store / fresh).exists()
        assert not (store / ".tmp-leftover.png").exists()
        assert 'bonexr_uploads_deleted_total{reason="retention"} 1.0' in client.get("/metrics").text


def test_micro_batching_groups_concurrent_predicts(untrained_bundle: Path, tmp_path: Path) -> None:
    settings = make_settings(untrained_bundle, tmp_path, max_batch_wait_ms=50, max_batch_size=8)
    images = [png_bytes(50 + 7 * i, 60 + 3 * i, seed=200 + i) for i in range(8)]
    with running(settings) as (client, app):
        names = [upload(client, data).json()["filename"] for data in images]

        async def predict_all() -> list[dict]:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as ac:
                responses = await asyncio.gather(
                    *(ac.post("/predict", json={"filename": n}) for n in names)
                )
            assert all(r.status_code == 200 for r in responses)
            return [r.json() for r in responses]

        results = asyncio.run(predict_all())
        metrics = app.state.services.metrics
        engine = app.state.services.engine
        sizes = metrics.registry.get_sample_value("bonexr_batch_size_sum")
        count = metrics.registry.get_sample_value("bonexr_batch_size_count")
        assert sizes == 8 and count < 8, (sizes, count)  # at least one batch held > 1 image
        assert metrics.registry.get_sample_value("bonexr_batch_size_bucket", {"le": "1.0"}) < count
        for data, result in zip(images, results, strict=True):
            pixels = prepare_pixels(decode_image(data), engine.input_size)
            single = engine.predict_batch(pixels[None])[0]
            assert result["bone_type"] == single.bone_type
            assert result["abnormality_probability"] == pytest.approx(
                single.abnormality_probability, abs=1e-5
            )
            for part, p in single.bone_type_probabilities.items():
                assert result["bone_type_probabilities"][part] == pytest.approx(p, abs=1e-5)


def test_engine_predict_batch_api(api) -> None:
    engine = api[1].state.services.engine
    size = engine.input_size
    batch = np.stack([prepare_pixels(decode_image(png_bytes(seed=s)), size) for s in range(5)])
    as_array = engine.predict_batch(batch)
    as_list = engine.predict_batch(list(batch))
    assert len(as_array) == 5
    for a, b in zip(as_array, as_list, strict=True):
        assert a.abnormality_probability == pytest.approx(b.abnormality_probability, abs=1e-6)
        assert a.result in ("abnormal", "normal")
    assert engine.predict_batch(np.zeros((0, size, size), np.uint8)) == []
    with pytest.raises(ValueError):
        engine.predict_batch(np.zeros((2, size + 1, size), np.uint8))


def test_logs_hold_no_filenames_or_client_details(
    untrained_bundle: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG")
    with running(make_settings(untrained_bundle, tmp_path)) as (client, _):
        r = upload(client, png_bytes(seed=14), name="Jane_Doe_left_elbow.png")
        name = r.json()["filename"]
        client.post("/predict", json={"filename": name})
        client.post("/predict", json={"filename": "../../etc/passwd"})
        client.delete(f"/uploads/{name}")
    text = "\n".join(
        r.getMessage() for r in caplog.records if r.name.startswith(("bonexr", "uvicorn"))
    )
    assert "POST /upload 201" in text and "DELETE /uploads/{filename} 204" in text
    for secret in (name, name[:16], "Jane_Doe", "passwd", "testclient", "127.0.0.1"):
        assert secret not in text, secret


def test_unexpected_exception_is_a_logged_json_500(
    untrained_bundle: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The last resort: a bug gives JSON 500, logged by type and stack, never by message."""
    app = create_app(make_settings(untrained_bundle, tmp_path))

    secret = "disk on fire while reading " + UNKNOWN

    def broken_read(filename: str) -> bytes:
        raise RuntimeError(secret)

    with TestClient(app) as client:  # raises in the test if anything re-raises the error
        assert app.state.services.engine.wait_until_settled(60)
        app.state.services.store.read = broken_read
        r = client.post("/predict", json={"filename": UNKNOWN})
        assert_error(r, 500)
        assert r.json()["detail"] == "internal server error"
        assert client.get("/health").status_code == 200
        assert 'route="/predict",status="500"' in client.get("/metrics").text
    assert "RuntimeError" in caplog.text
    assert UNKNOWN not in caplog.text and "disk on fire" not in caplog.text


def test_engine_refuses_after_stop(untrained_bundle: Path, tmp_path: Path) -> None:
    from service.domain.errors import NotReadyError

    with running(make_settings(untrained_bundle, tmp_path)) as (_, app):
        engine = app.state.services.engine
        size = engine.input_size
    assert engine.state == "stopped"
    with pytest.raises(NotReadyError):
        asyncio.run(engine.predict(np.zeros((size, size), np.uint8)))


@pytest.mark.parametrize(
    ("request_args", "status", "says"),
    [
        ({"json": {"filename": "../../etc/passwd"}}, 422, "use the filename POST /upload answered"),
        ({"content": b'{"filename": "x"}'}, 400, "Content-Type: application/json"),
        ({"json": {}}, 422, "filename is required"),
        ({"json": {"filename": "a" * 64 + ".png", "operating_point": 5}}, 422, "(got a number)"),
    ],
)
def test_validation_errors_are_plain_words(
    api: tuple[Any, Any], request_args: dict[str, Any], status: int, says: str
) -> None:
    """The probe met "String should match pattern '^[0-9a-f]{64}\\\\.png$'" and "Input should
    be a valid dictionary": now the field, what it must be, what came (described, never
    echoed) and what to do."""
    client, _ = api
    answer = client.post("/predict", **request_args)
    assert answer.status_code == status
    detail = answer.json()["detail"]
    assert says in detail and "should match pattern" not in detail and "passwd" not in detail
