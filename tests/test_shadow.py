"""Shadow mode (issue 39): a candidate bundle scores every recorded study in the background,
never shown to a reader; its queue drops shadow work, never live work; an incomparable
candidate is refused at start; the report compares it with the live bundle."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bonexr.errors import ConfigError
from harness.bundles import make_untrained_bundle
from harness.service_support import make_settings, png_bytes, running, wait_for
from service.domain.shadow_report import auroc, summarise


@pytest.fixture(scope="module")
def models(untrained_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("shadow-models")
    shutil.copytree(untrained_bundle, folder / "live")
    make_untrained_bundle(folder / "candidate", input_size=64, seed=1)
    return folder


def test_auroc_is_scikit_learns() -> None:
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(4)
    labels = rng.integers(0, 2, 300)
    scores = np.round(rng.random(300) + 0.3 * labels, 2)  # rounded: ties too
    assert auroc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


def test_a_candidate_that_prepares_or_judges_differently_is_refused_at_start(
    models: Path, tmp_path: Path
) -> None:
    from service.doors.http.app import create_app

    make_untrained_bundle(models / "bigger", input_size=96)
    make_untrained_bundle(models / "fewer", input_size=64, body_parts=("HAND", "ELBOW"))
    for name, reason in (("bigger", "prepares images differently"), ("fewer", "it judges")):
        settings = make_settings(
            models / "live", tmp_path / name, bundle="live", shadow_bundle=name
        )
        with pytest.raises(ConfigError, match=reason):
            create_app(settings)


def test_the_shadow_scores_every_study_unseen_and_the_report_compares(
    models: Path, tmp_path: Path
) -> None:
    settings = make_settings(models / "live", tmp_path, bundle="live", shadow_bundle="candidate")
    with running(settings) as (client, app):
        candidate = app.state.shadow.engine
        ids = []
        for seed in range(6):
            names = [
                client.post(
                    "/upload", files={"file": ("x.png", png_bytes(seed=seed * 7 + v))}
                ).json()["filename"]
                for v in range(1 + seed % 2)
            ]
            answer = client.post("/predict/study", json={"filenames": names})
            assert answer.status_code == 200, answer.text
            ids.append(answer.json()["record_id"])
        assert wait_for(lambda: client.get("/shadow").json()["studies"] == 6, 120)
        report = client.get("/shadow").json()
        shown = client.get(f"/worklist/{ids[0]}").text + client.get("/worklist").text
        metrics = client.get("/metrics").text
    assert report["configured"] and report["compared"] + report["shadow_refused"] == 6
    assert report["bundles"] == [f"candidate {candidate.model_version}"]
    assert 0 <= report["agreement"] <= 1 and report["time_ratio"] > 0
    assert report["shadow"]["status"].startswith("not enough reviews (")
    assert candidate.model_version not in shown  # never shown to a reader
    assert 'bonexr_shadow_jobs_total{outcome="answered"} 6.0' in metrics
    run = subprocess.run(
        [sys.executable, "-m", "bonexr.cli", "shadow-report"],
        env={"BONEXR_UPLOAD_DIR": str(settings.upload_dir), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert "studies scored in shadow: 6" in run.stdout and "not enough reviews" in run.stdout


def test_a_full_shadow_queue_drops_shadow_work_never_live_work(
    models: Path, tmp_path: Path
) -> None:
    from service.adapters.engine import InferenceEngine
    from service.adapters.records.shadow import ShadowStore
    from service.triage.shadow import ShadowJob, ShadowRunner

    settings = make_settings(models / "live", tmp_path, bundle="live", shadow_bundle="candidate")
    with running(settings) as (_, app):
        services = app.state.services

        async def offers(rate: float) -> list[str]:
            runner = ShadowRunner(
                services,
                InferenceEngine(settings),
                ShadowStore(services.database),
                sample_rate=rate,
                queue_size=1,
                seed=0,
            )  # never started: nothing takes jobs off its queue
            return [runner.offer(ShadowJob(f"s{i}", ("x.png",), 1.0)) for i in range(3)]

        assert asyncio.run(offers(1.0)) == ["queued", "dropped", "dropped"]
        assert asyncio.run(offers(0.0)) == ["not_sampled"] * 3


def test_the_summary_needs_enough_reviews() -> None:
    rows = [
        {
            "live_result": "abnormal" if i % 2 else "normal",
            "shadow_result": "abnormal" if i % 3 else "normal",
            "live_probability": 0.5 * (i % 2) + i / 200,  # readers' abnormal rank first
            "shadow_probability": (i % 7) / 7,
            "shadow_ms": 10.0,
            "live_ms": 20.0,
            "shadow_bundle": "c 1",
            "reader_result": "abnormal" if i % 2 else "normal",
        }
        for i in range(50)
    ]
    summary = summarise(rows)
    assert summary["live"]["auroc"] == 1.0 and summary["time_ratio"] == 0.5
    assert summarise(rows[:30])["live"]["status"] == (
        "not enough reviews (15 abnormal and 15 normal of 20 each needed)"
    )
