"""Heat maps: the CAM output of the exported models, mapped back through the letterbox,
served by GET /heatmap and cached with the upload."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from bonexr.heatmap import normalized, overlay, peak, to_image_grid
from bonexr.imaging import letterbox_geometry
from harness.bundles import write_as_exported, write_as_legacy
from harness.service_support import assert_error, encode, make_settings, noise, running


def upload(client: TestClient, width: int = 120, height: int = 80, seed: int = 0) -> str:
    data = encode(Image.fromarray(noise(width, height, seed=seed), mode="L"))
    r = client.post("/upload", files={"file": ("x.png", data, "image/png")})
    assert r.status_code in (200, 201), r.text
    return str(r.json()["filename"])


# ------------------------------------------------------------------- mapping (core)


def test_map_goes_back_through_the_letterbox() -> None:
    # a 200x100 image in a 64 px square: content rows 16..48; a 4x4 grid over the square
    assert letterbox_geometry(200, 100, 64) == (0, 16, 64, 32)
    cam = np.zeros((4, 4))
    cam[1, 3] = 5.0  # grid row 1 = square rows 16..32 = the content's top half, right edge
    heat = to_image_grid(cam, 200, 100, 64)
    assert heat.shape == (100, 200) and heat.max() <= 1.0
    x, y = peak(heat)
    assert x > 150 and y < 50, (x, y)
    # the padding is gone: grid rows 0 and 3 lie (mostly) outside the image
    assert float(heat[:, :100].max()) < 0.3


def test_normalised_map_and_overlay() -> None:
    assert normalized(np.full((3, 3), 2.0)).max() == 0.0  # flat map: nothing to show
    gray = Image.fromarray(noise(40, 30, seed=1), mode="L")
    heat = np.zeros((30, 40), np.float32)
    heat[10, 20] = 1.0
    unchanged = np.asarray(overlay(gray, heat, opacity=0.0))
    assert (unchanged == np.asarray(gray)[..., None]).all()
    blended = np.asarray(overlay(gray, heat, opacity=1.0))
    assert tuple(blended[10, 20]) == (255, 255, 160)  # the colour map's hot end
    assert (blended[0, 0] == np.asarray(gray)[0, 0]).all()  # cold: the radiograph


# ------------------------------------------------------------------ export parity


def test_onnx_heatmap_equals_keras(untrained_bundle: Path) -> None:
    import keras
    import onnxruntime as ort

    from training.models import with_cam

    manifest = json.loads((untrained_bundle / "manifest.json").read_text())
    assert manifest["parts"]["Hand"]["heatmap"] == {"method": "cam", "output": 1, "grid": [8, 8]}
    model = with_cam(keras.models.load_model(untrained_bundle / "hand.keras"))
    x = np.random.default_rng(0).uniform(0, 255, (3, 64, 64, 1)).astype(np.float32)
    keras_prob, keras_cam = (np.asarray(o) for o in model(x))
    session = ort.InferenceSession(str(untrained_bundle / "hand.onnx"))
    onnx_prob, onnx_cam = session.run(None, {session.get_inputs()[0].name: x})
    np.testing.assert_allclose(onnx_prob, keras_prob, atol=1e-5)
    np.testing.assert_allclose(onnx_cam, keras_cam, atol=1e-4)
    assert np.ptp(keras_cam) > 0  # a real map, not a constant


# ------------------------------------------------------------------------ service


def test_heatmap_overlay_raw_and_cache(api) -> None:
    client, app = api
    name = upload(client, 120, 80)
    r = client.get(f"/heatmap/{name}")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert r.headers["x-bonexr-body-part"] in {"Elbow", "Hand", "Shoulder"}
    image = Image.open(io.BytesIO(r.content))
    assert image.size == (120, 80) and image.mode == "RGB"
    folder = app.state.services.settings.upload_dir
    version = app.state.services.engine.model_version.lower()
    assert (folder / f"{name}.cam-{version}").is_file()  # cached per bundle version
    plain = Image.open(io.BytesIO(client.get(f"/heatmap/{name}?opacity=0").content))
    stored = Image.open(folder / name)
    assert (np.asarray(plain)[..., 0] == np.asarray(stored)).all()
    raw = Image.open(io.BytesIO(client.get(f"/heatmap/{name}?format=raw").content))
    assert raw.size == (120, 80) and raw.mode.startswith("I")
    assert np.asarray(raw).max() == 65535  # normalised: the hottest point is full scale
    assert client.delete(f"/uploads/{name}").status_code == 204
    assert not list(folder.glob(f"{name}.*"))  # the cache went with the upload


def test_predict_can_prepare_the_heatmap_in_the_same_pass(api) -> None:
    client, app = api
    name = upload(client, seed=3)
    answer = client.post("/predict", json={"filename": name, "heatmap": True}).json()
    assert answer["heatmap_url"] == f"/heatmap/{name}"
    version = app.state.services.engine.model_version.lower()
    cached = json.loads(
        (app.state.services.settings.upload_dir / f"{name}.cam-{version}").read_text()
    )
    assert cached["part"] == answer["bone_type"]
    assert client.get(answer["heatmap_url"]).status_code == 200
    assert client.post("/predict", json={"filename": name}).json()["heatmap_url"] is None


def test_bad_heatmap_requests(client: TestClient) -> None:
    assert_error(client.get(f"/heatmap/{'ab' * 32}.png"), 404)
    name = upload(client, seed=4)
    assert_error(client.get(f"/heatmap/{name}?opacity=2"), 422)
    assert_error(client.get(f"/heatmap/{name}?format=jpeg"), 422)
    assert_error(client.get("/heatmap/..%2F..%2Fetc%2Fpasswd"), 404)


def test_bundle_without_heatmaps_and_broken_heatmap_contract(
    untrained_bundle: Path, tmp_path: Path
) -> None:
    old = tmp_path / "models" / "old"
    shutil.copytree(untrained_bundle, old)
    manifest = json.loads((old / "manifest.json").read_text())
    for spec in manifest["parts"].values():
        spec.pop("heatmap")
    write_as_legacy(old, manifest)
    with running(make_settings(old, tmp_path)) as (client, _):
        name = upload(client, seed=5)
        assert "no heat maps" in assert_error(client.get(f"/heatmap/{name}"), 404)["detail"]
    for spec in manifest["parts"].values():
        spec["heatmap"] = {"method": "cam", "output": 1, "grid": [7, 7]}
    write_as_exported(old, manifest)
    with running(make_settings(old, tmp_path)) as (client, _):
        detail = assert_error(client.get("/ready"), 503)["detail"]
        assert "heatmap" in detail and "(N, 7, 7)" in detail and "(N, 8, 8)" in detail


@pytest.mark.parametrize("opacity", [0.0, 0.5, 1.0])
def test_opacity_is_monotone(api, opacity: float) -> None:
    client, _ = api
    name = upload(client, seed=6)
    picture = np.asarray(
        Image.open(io.BytesIO(client.get(f"/heatmap/{name}?opacity={opacity}").content)),
        dtype=float,
    )
    spread = np.abs(picture[..., 0] - picture[..., 2]).mean()  # colour only where blended
    assert (spread == 0) == (opacity == 0.0)


def test_the_map_of_an_average_and_max_head_is_its_exact_attribution() -> None:
    """The tiny backbone pools average and max: the map sums to the logit over the grid
    (nothing is spread or lost), and the max branch sits where the maximum was taken."""
    import keras

    from training.models import SplitPoolingCam, build_model, with_cam

    model = build_model("abnormality", backbone="tiny", input_size=64, weights="none")
    head = model.get_layer("probabilities")
    kernel, bias = head.get_weights()
    rng = np.random.default_rng(0)
    head.set_weights([rng.normal(size=kernel.shape).astype("float32"), bias + 0.3])
    x = rng.uniform(0, 255, (3, 64, 64, 1)).astype(np.float32)
    probability, cam = (np.asarray(o) for o in with_cam(model)(x))
    logit = np.log(probability[:, 0] / (1 - probability[:, 0]))
    np.testing.assert_allclose(cam.sum(axis=(1, 2)), logit, atol=1e-4)

    # one channel, max weight only: all of the max branch lands on the arg-max cell
    features = np.zeros((1, 5, 5, 2), np.float32)
    features[0, 3, 1, 0] = 4.0
    features[0, :, :, 1] = 1.0  # flat: shared evenly, contributes its max over the grid
    split = SplitPoolingCam(np.zeros(2), np.array([1.0, 0.5]), 0.0)
    out = np.asarray(split(keras.ops.convert_to_tensor(features)))[0]
    assert out[3, 1] == pytest.approx(4.0 + 0.5 / 25)
    assert out[0, 0] == pytest.approx(0.5 / 25) and out.sum() == pytest.approx(4.5)
