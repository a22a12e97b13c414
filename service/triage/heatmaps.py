"""Heat maps for stored uploads: computed by the engine's normal pass, cached beside the
upload per bundle version, rendered on request.

The part models output their class activation map with the probability (one pass), so a
``/predict`` with ``"heatmap": true`` caches the map it already has; ``GET /heatmap`` for an
uncached image runs the same two-stage prediction once. The cache file
(``<upload>.cam-<bundle version>``, a few hundred bytes of JSON) goes with the upload.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
from dataclasses import dataclass

import numpy as np
from PIL import Image

from bonexr.heatmap import render_overlay, render_raw
from service.triage.services import Services

log = logging.getLogger("bonexr.service")


@dataclass(frozen=True)
class CachedCam:
    part: str
    cam: np.ndarray


def _kind(version: str) -> str:
    return f"cam-{version.lower()}"


def save_cam(services: Services, filename: str, part: str, cam: np.ndarray) -> None:
    """Cache an upload's raw CAM for the loaded bundle (best effort: a full disk only
    costs a recomputation)."""
    payload = json.dumps({"part": part, "cam": np.asarray(cam, float).round(6).tolist()})
    with contextlib.suppress(OSError, ValueError):
        services.store.write_sidecar(
            filename, _kind(services.engine.model_version), payload.encode()
        )


def load_cam(services: Services, filename: str) -> CachedCam | None:
    data = services.store.read_sidecar(filename, _kind(services.engine.model_version))
    if data is None:
        return None
    try:
        payload = json.loads(data)
        return CachedCam(str(payload["part"]), np.asarray(payload["cam"], dtype=np.float64))
    except (ValueError, KeyError, TypeError):
        return None


def draw(png: bytes, cam: np.ndarray, size: int, *, opacity: float, raw: bool) -> Image.Image:
    """The one heat-map renderer (``GET /heatmap`` and the DICOM node's captures): the
    stored image at its own size with the map blended in, or the 16-bit map alone
    (bounded memory: :func:`bonexr.heatmap.render_overlay`)."""
    with Image.open(io.BytesIO(png), formats=["PNG"]) as stored:
        if raw:
            return render_raw(stored.width, stored.height, cam, size)
        return render_overlay(stored.convert("L"), cam, size, opacity)


def render(png: bytes, cam: np.ndarray, size: int, *, opacity: float, raw: bool) -> bytes:
    """:func:`draw`, as the PNG ``GET /heatmap`` answers with."""
    picture = draw(png, cam, size, opacity=opacity, raw=raw)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()
