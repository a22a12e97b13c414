"""POST /predict/study and the two operating points, on the random-init bundle.

The study rule itself (summed routing, mean of one part's model) is checked against
:mod:`bonexr.study` and the engine's own numbers; that training's evaluation computes the
same probabilities is the parity test's job (``tests/test_demo_bundle.py``).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from bonexr.study import route_study, study_probability
from harness.bundles import write_as_legacy
from harness.service_support import assert_error, make_settings, png_bytes, running

UNKNOWN = ["ab" * 32 + ".png", "cd" * 32 + ".png"]


def upload(client: TestClient, seed: int) -> str:
    r = client.post("/upload", files={"file": ("x.png", png_bytes(96, 80, seed=seed), "image/png")})
    assert r.status_code in (200, 201), r.text
    return str(r.json()["filename"])


def study(client: TestClient, names: list[str], **extra: object) -> dict:
    r = client.post("/predict/study", json={"filenames": names, **extra})
    assert r.status_code == 200, r.text
    return dict(r.json())


# ------------------------------------------------------------------------ the rule


def test_route_study_sums_router_probabilities() -> None:
    views = [
        {"Elbow": 0.9, "Hand": 0.1, "Shoulder": 0.0},
        {"Elbow": 0.3, "Hand": 0.35, "Shoulder": 0.35},
        {"Elbow": 0.3, "Hand": 0.4, "Shoulder": 0.3},
    ]
    assert route_study(views) == "Elbow"  # 1.5 vs 0.85: one confident view outweighs two
    assert study_probability([0.2, 0.4, 0.9]) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        route_study([])


# -------------------------------------------------------------------- the endpoint


def test_study_answer_follows_the_rule(api) -> None:
    client, app = api
    engine = app.state.services.engine
    names = [upload(client, seed) for seed in (11, 12, 13)]
    body = study(client, names, bone_type=None)
    singles = [client.post("/predict", json={"filename": n}).json() for n in names]
    part = route_study([s["bone_type_probabilities"] for s in singles])
    assert body["bone_type"] == part and body["bone_type_source"] == "router"
    # every view scored by the study part's model, the study is their mean
    pixels = [app.state.services.pixels.get(n, engine.input_size) for n in names]
    direct = engine.predict_batch(np.stack(pixels), [part] * len(names))
    for view, expected in zip(body["views"], direct, strict=True):
        assert view["abnormality_probability"] == pytest.approx(
            expected.abnormality_probability, abs=1e-6
        )
    mean = np.mean([d.abnormality_probability for d in direct])
    assert body["abnormality_probability"] == pytest.approx(mean, abs=1e-6)
    manifest = engine.manifest
    assert body["threshold"] == manifest.parts[part].threshold  # the study operating point
    assert body["result"] == ("abnormal" if mean >= body["threshold"] else "normal")
    assert [v["filename"] for v in body["views"]] == names


def test_client_bone_type_scores_every_view_with_that_part(api) -> None:
    client, _app = api
    names = [upload(client, seed) for seed in (21, 22)]
    body = study(client, names, bone_type="hand")
    assert body["bone_type"] == "Hand" and body["bone_type_source"] == "client"
    assert any("scored by the Hand model" in w for w in body["warnings"])


def test_duplicate_filenames_count_once(client: TestClient) -> None:
    name = upload(client, 31)
    body = study(client, [name, name, name])
    assert len(body["views"]) == 1
    assert "duplicate filenames were counted once" in body["warnings"]


@pytest.mark.parametrize(
    ("payload", "status", "words"),
    [
        ({"filenames": []}, 422, "at least 1"),
        ({"filenames": ["../../etc/passwd"]}, 422, "filenames"),
        ({"filenames": UNKNOWN}, 404, UNKNOWN[0]),
        ({"filenames": [f"{i:064x}.png" for i in range(9)]}, 422, "at most 8 views"),
        ({}, 422, "filenames"),
    ],
)
def test_bad_study_requests(client: TestClient, payload: dict, status: int, words: str) -> None:
    detail = assert_error(client.post("/predict/study", json=payload), status)["detail"]
    assert words in detail


def test_unknown_views_are_all_named(client: TestClient) -> None:
    known = upload(client, 41)
    detail = assert_error(
        client.post("/predict/study", json={"filenames": [known, *UNKNOWN]}), 404
    )["detail"]
    assert UNKNOWN[0] in detail and UNKNOWN[1] in detail and known not in detail


def test_unknown_bone_type_is_422(client: TestClient) -> None:
    name = upload(client, 42)
    detail = assert_error(
        client.post("/predict/study", json={"filenames": [name], "bone_type": "Wrist"}), 422
    )["detail"]
    assert "no abnormality model for 'Wrist'" in detail and "Elbow" in detail


# ---------------------------------------------------------------- operating points


def test_bundle_without_image_thresholds_still_loads_with_a_warning(
    untrained_bundle: Path, tmp_path: Path
) -> None:
    legacy = tmp_path / "models" / "legacy"
    shutil.copytree(untrained_bundle, legacy)
    manifest_path = legacy / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    for spec in manifest["parts"].values():
        spec.pop("image_threshold", None)
        spec.pop("image_threshold_rule", None)
        spec["threshold"] = 0.4
    write_as_legacy(legacy, manifest)
    settings = make_settings(legacy, tmp_path)
    with running(settings) as (client, _):
        ready = client.get("/ready").json()
        assert any("no image operating point" in w for w in ready["warnings"])
        name = upload(client, 51)
        answer = client.post("/predict", json={"filename": name}).json()
        assert answer["threshold"] == 0.4  # falls back to the study threshold
        assert any("no image operating point" in w for w in answer["warnings"])
        thresholds = client.get("/model").json()["thresholds"]["Elbow"]
        assert thresholds["image"] == thresholds["study"] == 0.4


# -------------------------------------------------------- parts without a model


@pytest.fixture(scope="module")
def wrist_first_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A router that knows Wrist (listed first) without a wrist model. A black image gets
    exactly equal router probabilities from the random-init router, so the argmax is the
    first class: Wrist."""
    from harness.bundles import make_untrained_bundle

    folder = tmp_path_factory.mktemp("wrist") / "wrist"
    return make_untrained_bundle(
        folder, input_size=64, router_parts=("WRIST", "ELBOW", "HAND", "SHOULDER")
    )


def black_png() -> bytes:
    from PIL import Image

    from harness.service_support import encode

    return encode(Image.new("L", (80, 64), 0))


def test_part_without_model_is_422_with_bone_type(wrist_first_bundle: Path, tmp_path: Path) -> None:
    settings = make_settings(wrist_first_bundle, tmp_path)
    with running(settings) as (client, app):
        assert app.state.services.engine.manifest.router.classes[0] == "Wrist"
        up = client.post("/upload", files={"file": ("x.png", black_png(), "image/png")})
        name = up.json()["filename"]
        answer = client.post("/predict", json={"filename": name})
        body = assert_error(answer, 422)
        assert body["bone_type"] == "Wrist"
        assert "no abnormality model for Wrist in bundle 'wrist'" in body["detail"]
        assert "below the floor" in body["detail"]  # the unsure-router warning stays
        study_answer = assert_error(client.post("/predict/study", json={"filenames": [name]}), 422)
        assert study_answer["bone_type"] == "Wrist"
        forced = study(client, [name], bone_type="Elbow")
        assert forced["bone_type"] == "Elbow"
