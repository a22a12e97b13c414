"""What the routes depend on: the per-app :class:`Services` container and its dependency.

Built once per app by :func:`service.app.create_app` and kept on ``app.state``; routes
receive it as ``services: ServicesDep`` (FastAPI's full-stack template keeps its
dependencies the same way, in ``api/deps.py``).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from service.engine import InferenceEngine
from service.metrics import ServiceMetrics
from service.pixel_cache import PixelCache
from service.settings import Settings
from service.storage import UploadStore


@dataclass
class Services:
    """What the routes need."""

    settings: Settings
    store: UploadStore
    engine: InferenceEngine
    metrics: ServiceMetrics
    decode_slots: threading.BoundedSemaphore
    pixels: PixelCache


def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]
