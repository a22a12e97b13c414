"""Starting safely: the service refuses to listen where anyone could use it unchecked (no
API keys on a public address, a DICOM listener there with no allow-list) unless told the
network is trusted, and finds a taken port before anything slow starts (issues 37 and 38)."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from bonexr.errors import ConfigError
from service.doors.server import check_exposure, check_port
from service.settings import Settings, exposure_problems, is_loopback


def _bonexr(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BONEXR_")}
    return subprocess.run(
        [sys.executable, "-m", "bonexr.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.0.1", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.0.0.5", False),
        ("pacs.example.org", False),
    ],
)
def test_loopback_addresses(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_a_public_address_needs_keys_and_a_public_dicom_listener_an_allow_list() -> None:
    assert exposure_problems(Settings()) == []  # the default: loopback only
    open_api = exposure_problems(Settings(host="0.0.0.0"))
    assert len(open_api) == 1 and "BONEXR_API_KEYS" in open_api[0]
    assert exposure_problems(Settings(host="0.0.0.0", api_keys="ward:k-1")) == []
    # the DICOM listener follows the API's address unless told otherwise
    dicom = exposure_problems(Settings(host="0.0.0.0", api_keys="ward:k-1", dicom_port=11112))
    assert len(dicom) == 1 and "BONEXR_DICOM_ALLOWED_AETS" in dicom[0]
    assert Settings(dicom_port=11112).dicom_listen_host == "127.0.0.1"
    guarded = Settings(
        host="0.0.0.0", api_keys="ward:k-1", dicom_port=11112, dicom_allowed_aets="PACS"
    )
    assert exposure_problems(guarded) == []
    local_dicom = Settings(
        host="0.0.0.0", api_keys="ward:k-1", dicom_port=11112, dicom_host="127.0.0.1"
    )
    assert exposure_problems(local_dicom) == []


def test_insecure_starts_anyway_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(ConfigError, match="BONEXR_INSECURE=1"):
        check_exposure(Settings(host="0.0.0.0"))
    with caplog.at_level(logging.WARNING, logger="bonexr.service"):
        check_exposure(Settings(host="0.0.0.0", insecure=True))
    assert any("no API keys" in r.getMessage() for r in caplog.records)


def test_serve_on_a_public_address_without_keys_refuses_to_start(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    run = _bonexr("serve", "--host", "0.0.0.0", "--port", str(port), cwd=tmp_path)
    assert run.returncode == 2, run.stderr
    assert "refusing to start" in run.stderr and "BONEXR_API_KEYS" in run.stderr
    assert "serving on" not in run.stderr + run.stdout


def test_a_taken_port_is_found_before_the_demo_is_trained(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=f"127.0.0.1:{port}.*--port"):
            check_port(Settings(port=port))
        models = tmp_path / "models"  # empty: `run` would train the demo first
        run = _bonexr("run", "--port", str(port), "--models-dir", str(models), cwd=tmp_path)
    assert run.returncode == 2, run.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in run.stderr
    assert "training the synthetic demo" not in run.stdout
    assert not (models / "demo").exists()
    check_port(Settings(port=port))  # free again once the other server is gone
