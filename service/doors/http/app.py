"""The app factory: wires settings, storage, engine, metrics, middleware and routes.

Middleware order (outermost first) and why:

0. :class:`~service.domain.errors.LastResortMiddleware`: any escaped exception becomes a JSON 500,
   logged without its message, and goes no further.
1. :class:`~service.doors.http.access.AccessMiddleware`: times, counts and logs *every* response,
   including the 401s and 413s produced below it.
2. :class:`~service.doors.http.security.ApiKeyMiddleware`: refuses unauthenticated requests before
   any body byte is read.
3. :class:`~service.doors.http.body_limit.BodySizeLimitMiddleware`: refuses oversized bodies by
   ``Content-Length`` up front or while they stream.

The engine loads in its own thread from the lifespan, so the server answers ``/health``
at once and ``/ready`` says "loading" until the bundle is verified and warmed. A bundle that
fails verification leaves the app serving with ``/ready`` and ``/predict`` at 503.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import threading
from collections.abc import AsyncIterator

from fastapi import FastAPI

import bonexr
from bonexr.bundle import find_bundle, read_manifest
from bonexr.errors import BundleError
from service.adapters.engine import InferenceEngine
from service.adapters.memory import tune_malloc
from service.adapters.metrics import ServiceMetrics
from service.adapters.pixel_cache import PixelCache
from service.adapters.records.audit import AuditLog
from service.adapters.records.database import Database, database_url
from service.adapters.records.practice import PracticeCollector
from service.adapters.records.shadow import ShadowStore
from service.adapters.records.worklist import RecordStore, utcnow
from service.adapters.stores.factory import open_store
from service.domain.errors import TriageError
from service.doors.dicom.node import DicomNode
from service.doors.http.access import AccessMiddleware
from service.doors.http.body_limit import BodySizeLimitMiddleware
from service.doors.http.errors import LastResortMiddleware, install_error_handlers
from service.doors.http.reference_pages import add_reference_pages
from service.doors.http.routes import api_router
from service.doors.http.routes.page import static_files
from service.doors.http.security import ApiKeyMiddleware
from service.settings import Settings, get_settings
from service.triage.migration import migrate
from service.triage.predictor import Predictor
from service.triage.services import Services
from service.triage.shadow import ShadowRunner, check_compatible
from service.triage.swap import BundleSwapper

log = logging.getLogger("bonexr.service")

DESCRIPTION = """
Bone X-ray triage: a router picks the body part, that part's model scores abnormality
(*abnormal* means what the bundle was trained to flag: a fracture for FracAtlas, any
abnormality including hardware for MURA).
**Not a medical device.** Upload with `POST /upload`, classify with `POST /predict`.
Errors are always `{"detail": "..."}`.
"""


def configure_logging(level: str) -> None:
    """Give the ``bonexr`` loggers a handler when nothing else configured logging.

    uvicorn configures only its own loggers, so without this the access log and engine
    messages would be dropped; a host app or pytest that set up the root logger keeps
    its own configuration.
    """
    logger = logging.getLogger("bonexr")
    numeric = logging.getLevelName(level.upper())
    logger.setLevel(numeric if isinstance(numeric, int) else logging.DEBUG)  # "trace" -> DEBUG
    if not logging.getLogger().handlers and not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)


def retention_interval(retention_hours: float) -> float:
    """Sweep ten times per retention period, at least every 10 minutes, at most every second."""
    return max(1.0, min(600.0, retention_hours * 3600.0 / 10.0))


async def _retention_loop(services: Services, node: DicomNode | None = None) -> None:
    """Delete expired uploads (and the DICOM node's expired files) and expired study
    records on startup and then periodically (runs in the threadpool)."""
    hours = services.settings.retention_hours
    max_age = hours * 3600.0 if hours else None
    record_days = services.settings.record_retention_days
    while True:
        if record_days and services.records_migrated:
            await _expire_records(services, record_days)
        try:
            removed = await asyncio.to_thread(services.store.sweep, max_age)
            if removed:
                services.metrics.uploads_deleted.labels("retention").inc(removed)
                log.info("retention sweep removed %d upload(s)", removed)
            if max_age is not None and node is not None:
                swept = await asyncio.to_thread(node.sweep, max_age)
                if swept:
                    log.info("retention sweep removed %d DICOM node file(s)", swept)
        except (OSError, TriageError) as exc:  # a folder or bucket problem: try again later
            log.warning("retention sweep failed: %s", type(exc).__name__)
        if max_age is None and not record_days:
            return  # no retention: the startup pass only cleans stale temp files
        periods = [retention_interval(hours)] if hours else []
        periods += [retention_interval(record_days * 24)] if record_days else []
        await asyncio.sleep(min(periods))


async def _expire_records(services: Services, days: float) -> None:
    """Remove study records older than ``days`` and the uploads only they named."""
    cutoff = utcnow() - dt.timedelta(days=days)
    try:
        orphans = await asyncio.to_thread(services.records.expire, cutoff)
    except TriageError as exc:
        log.warning("record retention failed: %s", type(exc).__name__)
        return
    removed = await asyncio.to_thread(services.delete_uploads, orphans, "retention")
    if removed:
        log.info("record retention removed the uploads of expired records: %d", removed)


@contextlib.asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    services: Services = app.state.services
    try:
        await asyncio.to_thread(services.store.ensure)
    except OSError as exc:  # read-only or unmounted volume: serve, and say so in /ready
        log.error("upload store cannot be created (%s): /ready reports it", type(exc).__name__)
    await migrate(services)
    services.engine.start()
    shadow: ShadowRunner | None = app.state.shadow
    if shadow is not None:
        shadow.start()
    node: DicomNode = app.state.dicom_node
    await node.start()
    sweeper = asyncio.create_task(_retention_loop(services, node), name="bonexr-retention")
    try:
        yield
    finally:
        sweeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sweeper
        await node.stop()
        if shadow is not None:
            await shadow.stop()
        await app.state.swapper.close()
        await asyncio.to_thread(services.engine.stop)
        await asyncio.to_thread(services.database.dispose)


def shadow_runner(services: Services) -> ShadowRunner | None:
    """The shadow bundle's runner when ``BONEXR_SHADOW_BUNDLE`` names one (ConfigError, at
    start, when it is missing or not comparable with the live bundle)."""
    settings = services.settings
    if settings.shadow_bundle is None:
        return None
    candidate = read_manifest(find_bundle(settings.models_dir, settings.shadow_bundle))
    try:
        live = read_manifest(find_bundle(settings.models_dir, settings.bundle))
    except BundleError:
        live = None  # no live bundle: the engine says so in /ready
    if live is not None:
        check_compatible(live, candidate)
    engine = InferenceEngine(settings.model_copy(update={"bundle": settings.shadow_bundle}))
    return ShadowRunner(
        services,
        engine,
        ShadowStore(services.database),
        sample_rate=settings.shadow_sample_rate,
        queue_size=settings.shadow_queue,
    )


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the FastAPI app for ``settings`` (default: ``BONEXR_*`` environment)."""
    settings = settings or get_settings()
    configure_logging(settings.log_level)
    tune_malloc()
    metrics = ServiceMetrics(settings.drift_reference_size, settings.drift_window)
    store = open_store(settings)
    metrics.count_stored_with(store.count)
    database = Database(database_url(settings.database_url, settings.upload_dir))
    records = RecordStore(database)
    metrics.registry.register(PracticeCollector(records.practice_counts))
    services = Services(
        settings=settings,
        store=store,
        engine=InferenceEngine(settings, metrics),
        metrics=metrics,
        decode_slots=threading.BoundedSemaphore(max(2, os.cpu_count() or 2)),
        pixels=PixelCache(),
        database=database,
        records=records,
        audit=AuditLog(database),
    )
    app = FastAPI(
        title="bonexr",
        version=bonexr.__version__,
        description=DESCRIPTION,
        lifespan=_lifespan,
        docs_url=None,  # served from local assets instead: reference_pages
        redoc_url=None,
    )
    app.state.services = services
    app.state.predictor = Predictor(services)
    app.state.dicom_node = DicomNode(app.state.predictor)

    def switch(predictor: Predictor) -> None:  # a hot swap: where new requests look
        app.state.predictor = predictor
        app.state.dicom_node.predictor = predictor

    app.state.swapper = BundleSwapper(services, switch)
    app.state.shadow = shadow_runner(services)
    app.state.dicom_node.shadow = app.state.shadow
    install_error_handlers(app)
    keys = settings.named_api_keys()
    app.include_router(api_router(auth_enabled=bool(keys)))
    add_reference_pages(app)  # before /static, which would shadow its assets
    app.mount("/static", static_files(), name="static")
    app.add_middleware(
        BodySizeLimitMiddleware,
        upload_limit=settings.max_upload_bytes,
        stow_limit=settings.max_stow_bytes,
    )
    app.add_middleware(
        ApiKeyMiddleware, keys=keys, integration=frozenset(settings.integration_key_names())
    )
    # Concrete routes, for labelling responses sent before routing (401, 413).
    routes = [r for r in app.router.routes if hasattr(r, "path")]
    app.add_middleware(AccessMiddleware, metrics=metrics, routes=routes)
    app.add_middleware(LastResortMiddleware)
    return app
