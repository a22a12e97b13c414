"""What the routes depend on: the per-app :class:`~service.triage.services.Services`, the
:class:`~service.triage.predictor.Predictor`, and a ready engine.

Kept on ``app.state`` by :func:`service.doors.http.app.create_app`
(FastAPI's full-stack template keeps
its dependencies the same way, in ``api/deps.py``). Every dependency here is ``async`` and
touches no store or model: FastAPI runs a plain ``def`` dependency in the shared
threadpool, where hung store calls could starve ``/health``, ``/model`` and ``/metrics``.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from service.adapters.engine import InferenceEngine
from service.domain.errors import NotReadyError
from service.doors.dicom.node import DicomNode
from service.triage.predictor import Predictor
from service.triage.services import Services


async def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


async def get_predictor(request: Request) -> Predictor:
    predictor: Predictor = request.app.state.predictor
    return predictor


async def get_dicom_node(request: Request) -> DicomNode:
    node: DicomNode = request.app.state.dicom_node
    return node


ServicesDep = Annotated[Services, Depends(get_services)]
DicomNodeDep = Annotated[DicomNode, Depends(get_dicom_node)]
PredictorDep = Annotated[Predictor, Depends(get_predictor)]


async def ready_engine(predictor: PredictorDep) -> InferenceEngine:
    """The request's engine (its predictor's: the same bundle for the whole request, even
    across a hot swap), once its bundle is loaded; else the 503 saying why."""
    engine = predictor.engine
    if not engine.ready or engine.manifest is None:
        raise NotReadyError(engine.not_ready_reason())
    return engine


ReadyEngineDep = Annotated[InferenceEngine, Depends(ready_engine)]
