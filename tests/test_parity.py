"""Training/serving skew: the service answers with the training evaluation's probabilities.

The bundle is trained here; the evaluation's per-image probabilities (``test_predictions.csv``,
computed by Keras on the original files) are compared with what the running service returns
over HTTP for the same files (upload -> pixel-only PNG -> ONNX Runtime).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from service.settings import Settings
from tests.service_support import running

pytestmark = pytest.mark.slow

TOLERANCE = 1e-4


def test_service_matches_training_evaluation(trained_demo: dict, tmp_path: Path) -> None:
    bundle: Path = trained_demo["bundle"]
    evaluated = pd.read_csv(bundle / "test_predictions.csv").dropna(subset=["routed_part"])
    # every part, both labels, and some RGB/RGBA source files where the generator wrote them
    sample = evaluated.groupby(["body_part", "label"], group_keys=False).head(4)
    settings = Settings(models_dir=bundle.parent, bundle=bundle.name, upload_dir=tmp_path / "up")
    compared = 0
    with running(settings) as (client, _app):
        for row in sample.itertuples():
            data = (trained_demo["root"] / row.rel_path).read_bytes()
            upload = client.post("/upload", files={"file": ("image.png", data, "image/png")})
            assert upload.status_code in (200, 201), upload.text
            answer = client.post("/predict", json={"filename": upload.json()["filename"]}).json()
            for part, probability in answer["bone_type_probabilities"].items():
                assert probability == pytest.approx(
                    getattr(row, f"router_{part.upper()}"), abs=TOLERANCE
                )
            assert answer["bone_type"].upper() == row.routed_part
            assert answer["abnormality_probability"] == pytest.approx(
                row.prob_routed, abs=TOLERANCE
            )
            threshold = answer["threshold"]
            assert answer["result"] == ("fractured" if row.prob_routed >= threshold else "normal")
            compared += 1
    assert compared >= 18
