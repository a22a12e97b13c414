"""The triage use cases: a stored view or study -> its answer, with no HTTP in it.

:class:`Predictor` is the one path from stored uploads to an answer, used by the HTTP
routes and the DICOM node alike (``bonexr predict`` scores files through the same
:class:`~service.domain.rules.AnswerRules`, in process). Every store call runs in a worker
thread, never on the event loop; the queue places are reserved before any decoding (a full
queue is refused at once, at no cost); the whole request (decode, queue, inference,
heat-map rendering) runs under one deadline (``BONEXR_PREDICT_TIMEOUT_S``: past it a "not
ready" error, never a late answer); heat maps are cached beside the upload and rendered
inside the decode slots. A study is scored once: refused views are values in its answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import numpy as np
from anyio import to_thread

from bonexr.imaging import prepare_pixels
from service.domain.answers import ImageAnswer, Prediction, StudyAnswer
from service.domain.errors import (
    HeatmapUnavailableError,
    InvalidStudyError,
    NotReadyError,
    UploadNotFoundError,
)
from service.domain.intake import Intake
from service.domain.rules import AnswerRules
from service.triage.heatmaps import CachedCam, load_cam, render, save_cam
from service.triage.ingest import read_prepared
from service.triage.services import Services


@dataclass(frozen=True)
class StoredView:
    """A stored upload's prepared pixels and the body part its DICOM header named."""

    pixels: np.ndarray
    body_part: str | None


class Predictor:
    """The service's stored-upload -> answer path (see the module docstring)."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self.engine = services.engine
        self.rules = AnswerRules(services.engine, services.settings)

    @contextlib.asynccontextmanager
    async def deadline(self) -> AsyncIterator[None]:
        """The request's whole work under ``BONEXR_PREDICT_TIMEOUT_S``: past it a 503.

        Work already in a worker thread finishes there (inside its decode slot, so memory
        stays bounded), but its result is dropped: the client never gets a late 200.
        """
        limit = self.services.settings.predict_timeout_s
        try:
            async with asyncio.timeout(limit):
                yield
        except TimeoutError:
            raise NotReadyError(
                f"the request did not finish within {limit:g} s (BONEXR_PREDICT_TIMEOUT_S): "
                "the service is overloaded; retry later"
            ) from None

    def load(self, filename: str, size: int) -> StoredView:
        """Prepared pixels (from the cache, else decoded from the store in a decode slot)
        and the recorded body part. Blocking: call from a worker thread."""
        services = self.services
        body_part = services.store.body_part(filename)
        cached = services.pixels.get(filename, size)
        if cached is not None and services.store.exists(filename):
            return StoredView(cached, body_part)
        data = services.store.read(filename)
        with services.decode_slot():
            pixels = prepare_pixels(services.decode(data).image, size)
        services.pixels.put(filename, size, pixels)
        return StoredView(pixels, body_part)

    async def _load_all(self, names: Sequence[str], size: int) -> list[StoredView]:
        """Every view (in worker threads); one 404 naming every unknown view."""

        async def one(name: str) -> StoredView | None:
            try:
                return await to_thread.run_sync(self.load, name, size)
            except UploadNotFoundError:
                return None

        loaded = await asyncio.gather(*(one(name) for name in names))
        missing = [name for name, view in zip(names, loaded, strict=True) if view is None]
        if missing:
            raise UploadNotFoundError(f"no upload with filename: {', '.join(missing)}")
        return [view for view in loaded if view is not None]

    async def image(
        self, filename: str, *, heatmap: bool = False, operating_point: str | None = None
    ) -> ImageAnswer:
        """``/predict``: route, score, and (when asked) cache the heat map."""
        engine = self.engine
        self.rules.operating_point(operating_point)  # an unknown one is refused before work
        async with self.deadline():
            with engine.admit(1) as admission:
                view = await to_thread.run_sync(self.load, filename, engine.input_size)
                prediction = await engine.predict(view.pixels, None, admission)
            answer = self.rules.image(filename, prediction, view.body_part, operating_point)
            if not heatmap:
                return answer
            if prediction.cam is None:
                warning = f"bundle '{engine.model_name}' has no heat maps"
                return dataclasses.replace(answer, warnings=[*answer.warnings, warning])
            await to_thread.run_sync(
                save_cam, self.services, filename, prediction.scored_by, prediction.cam
            )
            return dataclasses.replace(answer, heatmap_url=f"/heatmap/{filename}")

    async def image_bytes(
        self, data: bytes, *, operating_point: str | None = None
    ) -> tuple[ImageAnswer, Intake]:
        """An image sent in the request, answered and dropped: read through the one intake
        (limits, header gate) inside the request's queue place and deadline, scored, and
        never stored (nothing kept: no upload, no heat map to fetch later)."""
        engine = self.engine
        self.rules.operating_point(operating_point)
        async with self.deadline():
            with engine.admit(1) as admission:
                read = await to_thread.run_sync(
                    functools.partial(read_prepared, self.services, data, provenance="upload")
                )
                intake = read.intake
                if intake.screen.refusal is not None:
                    raise self.rules.refusal_error([intake.screen.refusal], 1)
                assert read.pixels is not None  # a ready engine (the route's dependency)
                prediction = await engine.predict(read.pixels, None, admission)
            name = "the image sent"
            answer = self.rules.image(name, prediction, intake.decoded.body_part, operating_point)
        return answer, intake

    async def study(
        self,
        filenames: Sequence[str],
        bone_type: str | None,
        operating_point: str | None = None,
        *,
        set_aside_refused: bool = False,
        door: str = "http",
    ) -> StudyAnswer:
        """MURA's study rule over stored views, every view scored once.

        Refused views (the content gate under ``enforce``) are values: the HTTP door, which
        answers all or nothing, gets the error naming each (``set_aside_refused=False``);
        the DICOM node gets the answer over the rest with the refusals in
        ``StudyAnswer.refused``, from the same first pass. A study with no eligible view is
        that error either way.
        """
        settings = self.services.settings
        names = list(dict.fromkeys(filenames))
        if len(names) > settings.max_study_views:
            raise InvalidStudyError(
                f"a study may have at most {settings.max_study_views} views; got {len(names)}"
            )
        forced = self.rules.client_part(bone_type)
        self.rules.operating_point(operating_point)
        async with self.deadline():
            views, first = await self._first_pass(names, forced)
            plan = self.rules.plan_study(names, first, forced, set_aside_refused=set_aside_refused)
            views, first = [views[i] for i in plan.keep], [first[i] for i in plan.keep]
            final = await self._rescore(views, first, plan.rescore, plan.part)
            self.services.metrics.studies_answered.labels(door).inc()
            return self.rules.study_answer(
                plan.names,
                final,
                [v.body_part for v in views],
                part=plan.part,
                forced=forced,
                duplicates=len(names) < len(filenames),
                point=operating_point,
                content_warnings=plan.content_warnings,
                refused=plan.refused,
            )

    async def _first_pass(
        self, names: Sequence[str], forced: str | None
    ) -> tuple[list[StoredView], list[Prediction]]:
        """Every view loaded and scored once (queue places reserved before decoding)."""
        engine = self.engine
        with engine.admit(len(names)) as admission:
            views = await self._load_all(names, engine.input_size)
            first = await asyncio.gather(
                *(engine.predict(v.pixels, forced, admission) for v in views)
            )
        return views, list(first)

    async def _rescore(
        self,
        views: Sequence[StoredView],
        first: Sequence[Prediction],
        again: Sequence[int],
        part: str,
    ) -> list[Prediction]:
        """The views the router placed elsewhere, scored again by the study part's model."""
        rescored = await asyncio.gather(
            *(self.engine.predict(views[i].pixels, part) for i in again)
        )
        final = list(first)
        for index, prediction in zip(again, rescored, strict=True):
            final[index] = prediction
        return final

    async def heatmap(self, filename: str, *, opacity: float, raw: bool) -> tuple[str, bytes]:
        """``GET /heatmap``: ``(part, PNG)``; the map from the cache or one two-stage pass,
        drawn on the stored image inside a decode slot at bounded cost."""
        engine, services = self.engine, self.services
        size = engine.input_size
        async with self.deadline():
            cached = await to_thread.run_sync(load_cam, services, filename)
            if cached is None:
                cached = await self._compute_cam(filename, size)
            body = await to_thread.run_sync(self._render, filename, cached, size, opacity, raw)
        return cached.part, body

    async def _compute_cam(self, filename: str, size: int) -> CachedCam:
        engine = self.engine
        with engine.admit(1) as admission:
            view = await to_thread.run_sync(self.load, filename, size)
            prediction = await engine.predict(view.pixels, None, admission)
        refused, _ = self.rules.screen_content([(filename, prediction)])
        if refused:
            raise self.rules.refusal_error(refused, 1)
        if not prediction.has_verdict:
            raise self.rules.no_model_error(prediction.bone_type, prediction.router_confidence)
        if prediction.cam is None:
            raise HeatmapUnavailableError(
                f"bundle '{engine.model_name}' has no heat maps (exported before they existed)"
            )
        await to_thread.run_sync(
            save_cam, self.services, filename, prediction.scored_by, prediction.cam
        )
        return CachedCam(prediction.scored_by, prediction.cam)

    def _render(
        self, filename: str, cached: CachedCam, size: int, opacity: float, raw: bool
    ) -> bytes:
        """Read the stored image and draw the map on it, holding a decode slot."""
        services = self.services
        png = services.store.read(filename)
        with services.decode_slot():
            return render(png, cached.cam, size, opacity=opacity, raw=raw)
