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


#: Longest side of a drawn heat map. A map is a coarse grid (the model's last feature map)
#: and a screen shows a few thousand pixels: drawing a 7000x7000 upload at its own size
#: cost ~300 MB a request (four at once: +1,221 MB); reduced by a whole factor to at most
#: this, the same request costs a fraction (tests/test_service_memory.py).
MAX_SIDE = 2048


def reduction(width: int, height: int) -> int:
    """The whole factor that brings ``width`` x ``height`` to at most :data:`MAX_SIDE`."""
    return max(1, -(-max(width, height) // MAX_SIDE))


def draw(png: bytes, cam: np.ndarray, size: int, *, opacity: float, raw: bool) -> Image.Image:
    """The one heat-map renderer (``GET /heatmap`` and the DICOM node's captures): the
    stored image with the map blended in, or the 16-bit map alone, at the image's own size
    up to :data:`MAX_SIDE` (larger images are reduced by a whole factor first; bounded
    memory: :func:`bonexr.heatmap.render_overlay`)."""
    with Image.open(io.BytesIO(png), formats=["PNG"]) as stored:
        factor = reduction(stored.width, stored.height)
        if raw:
            width, height = -(-stored.width // factor), -(-stored.height // factor)
            return render_raw(width, height, cam, size)
        gray = stored.convert("L")
        if factor > 1:
            gray = gray.reduce(factor)
        return render_overlay(gray, cam, size, opacity)


def render(png: bytes, cam: np.ndarray, size: int, *, opacity: float, raw: bool) -> bytes:
    """:func:`draw`, as the PNG ``GET /heatmap`` answers with."""
    picture = draw(png, cam, size, opacity=opacity, raw=raw)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()
