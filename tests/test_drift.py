"""Drift monitoring (issue 39): the PSI statistic, its windows, and the alert it fires.

The statistic is checked against its known behaviour (same distribution: small; a shifted
one: past the threshold), with bounds from the spread measured over seeds; then the
service is fed a reference of radiograph-like views followed by images it was never meant
to see, the PSI it exports passes the threshold, and Prometheus's own ``promtool``
evaluates the alert rules with that measured value (``make test`` installs Debian's
prometheus package for it; without it the alert half skips, and fails under CI).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from harness.service_support import make_settings, running
from service.adapters.drift import PSI_ALERT, DriftMonitor, Signal, psi

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "deploy" / "prometheus"


def test_psi_is_small_for_one_distribution_and_large_for_a_shifted_one() -> None:
    """Over 20 seeds at the service's default windows (200 and 200): the same
    distribution stays under 0.25 (measured: max 0.19), a shift of three quarters of a
    standard deviation (+0.12 on a Beta(2, 5)) passes it (measured: min 1.0; half a
    standard deviation is not always caught: min 0.23)."""
    same, shifted = [], []
    for seed in range(20):
        rng = np.random.default_rng(seed)
        reference = rng.beta(2, 5, 200)
        same.append(psi(reference, rng.beta(2, 5, 200)))
        shifted.append(psi(reference, np.clip(rng.beta(2, 5, 200) + 0.12, 0, 1)))
    assert max(same) < PSI_ALERT, same
    assert min(shifted) > PSI_ALERT, shifted
    assert psi(np.arange(200.0), np.full(200, 500.0)) > 5  # everything in one tail bin


def test_windows_fill_before_a_figure_is_given() -> None:
    signal = Signal(reference_size=30, window=20)
    for value in range(40):
        signal.add(float(value))
    assert signal.statistic() is None and signal.status() == "not enough answers (40 of 50)"
    for value in range(10):
        signal.add(float(value))
    assert signal.statistic() is not None and signal.status() == "ready"
    monitor = DriftMonitor(reference_size=20, window=20)
    monitor.observe("probability", "Hand", float("nan"))  # never counted
    assert monitor.report() == {}


def _psi_in_metrics(text: str, part: str) -> float | None:
    found = re.search(rf'bonexr_drift_psi{{part="{part}",signal="probability"}} ([0-9.e+-]+)', text)
    return float(found.group(1)) if found else None


def _scored(client: object, image: bytes) -> None:
    upload = client.post("/upload", files={"file": ("x.png", image)})  # type: ignore[attr-defined]
    assert upload.status_code in (200, 201), upload.text  # 200: stored before
    body = {"filenames": [upload.json()["filename"]], "body_part": "Hand"}
    answer = client.post("/predict/study", json=body)  # type: ignore[attr-defined]
    assert answer.status_code == 200, answer.text


def test_images_the_model_never_saw_move_the_psi_past_its_threshold_and_fire_the_alert(
    untrained_bundle: Path, synthetic_small: Path, tmp_path: Path
) -> None:
    views = sorted(synthetic_small.rglob("*.png"))
    size = 100
    settings = make_settings(
        untrained_bundle, tmp_path, drift_reference_size=size, drift_window=size
    )
    with running(settings) as (client, _):
        for index in range(size):  # the reference: radiograph-like drawings
            _scored(client, views[index % len(views)].read_bytes())
        waiting = client.get("/metrics").text
        for index in range(size):  # then blank frames: what a broken device would send
            _scored(client, _blank(index))
        shifted = client.get("/metrics").text
    assert _psi_in_metrics(waiting, "Hand") is None  # not enough answers yet
    measured = _psi_in_metrics(shifted, "Hand")
    assert measured is not None and measured > PSI_ALERT, shifted[-2000:]

    promtool = shutil.which("promtool")
    if promtool is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is missing (Debian package prometheus)")
        pytest.skip("promtool is missing (Debian package prometheus): the alert is not evaluated")
    work = tmp_path / "rules"
    work.mkdir()
    shutil.copy(RULES / "bonexr-alerts.yml", work)
    test = (RULES / "bonexr-alerts.test.yml").read_text()
    test = test.replace("PSI_MEASURED", f"{measured:.6f}").replace("PSI_TEXT", f"{measured:.2f}")
    (work / "alerts.test.yml").write_text(test)
    checked = subprocess.run(
        [promtool, "check", "rules", "bonexr-alerts.yml"], cwd=work, capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    fired = subprocess.run(
        [promtool, "test", "rules", "alerts.test.yml"], cwd=work, capture_output=True, text=True
    )
    assert fired.returncode == 0, fired.stdout + fired.stderr


def _blank(index: int) -> bytes:
    """A flat grey frame (a detector that sent nothing), a shade per index."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("L", (96, 96), 100 + index % 20).save(buffer, format="PNG")
    return buffer.getvalue()
