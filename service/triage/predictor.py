"""Stored image -> answer, with no HTTP in it.

Two layers, so the service and ``bonexr predict`` cannot drift apart:

* :class:`AnswerRules` (pure, synchronous): the single-image rule's refusals and warnings,
  the study rule (:mod:`bonexr.study`) with its checks and warnings. It takes the engine's
  :class:`~service.adapters.engine.Prediction` values and the views' DICOM body parts and returns
  :class:`ImageAnswer` / :class:`StudyAnswer`; refusals are the same
  :class:`~service.domain.errors.TriageError` values the API answers with. ``bonexr predict``
  (:mod:`service.doors.batch`) uses it over files.
* :class:`Predictor` (async): the service's path from a stored upload to that answer.
  Every store call runs in a worker thread, never on the event loop; the queue places are
  reserved before any decoding (a full queue is a 429 that cost nothing); the whole
  request (decode, queue, inference, heat-map rendering) runs under one deadline
  (``BONEXR_PREDICT_TIMEOUT_S``: a JSON 503 past it, never a late answer); heat maps are
  cached beside the upload and rendered inside the decode slots.

Routes validate, call the predictor, and shape the response (:mod:`service.doors.http.routes`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

import numpy as np
from fastapi.concurrency import run_in_threadpool

from bonexr.calibration import Level, calibrate
from bonexr.errors import ConfigError
from bonexr.imaging import prepare_pixels
from bonexr.labels import display_name, normalize_body_part, result_name
from bonexr.manifest import INSUFFICIENT_DATA, OperatingPoint
from bonexr.study import route_study, study_probability
from service.adapters.engine import InferenceEngine, Prediction
from service.domain.errors import (
    HeatmapUnavailableError,
    InvalidStudyError,
    NoPartModelError,
    NotEligibleError,
    NotReadyError,
    UnknownOperatingPointError,
    UploadNotFoundError,
)
from service.settings import Settings
from service.triage.heatmaps import CachedCam, load_cam, render, save_cam
from service.triage.services import Services


@dataclass(frozen=True)
class ImageAnswer:
    """``/predict``'s answer for one view (a row of ``images.csv``)."""

    name: str
    prediction: Prediction
    warnings: list[str]
    heatmap_url: str | None = None
    #: the image threshold applied, with its rule and what it achieved on validation
    point: OperatingPoint | None = None


@dataclass(frozen=True)
class StudyAnswer:
    """``/predict/study``'s answer (a row of ``studies.csv``)."""

    bone_type: str
    bone_type_source: str  # "router" or "client"
    bone_type_probabilities: dict[str, float]
    abnormality_probability: float
    threshold: float
    result: str
    views: list[tuple[str, Prediction]]
    warnings: list[str] = field(default_factory=list)
    operating_point: str = ""
    #: the study threshold applied, with its rule and what it achieved on validation
    point: OperatingPoint | None = None


class AnswerRules:
    """The answer rules shared by the service and ``bonexr predict``: refusals, warnings
    and the study rule, for a loaded engine and the service settings."""

    def __init__(self, engine: InferenceEngine, settings: Settings) -> None:
        self.engine = engine
        self.settings = settings

    # ------------------------------------------------------------------ single image

    def no_model_error(self, part: str, confidence: float) -> NoPartModelError:
        """422 for a body part the router knows but the bundle has no abnormality model
        for: the router's answer, never another part's verdict."""
        floor = self.settings.router_confidence_floor
        unsure = (
            f" (router confidence {confidence:.2f} is below the floor {floor:.2f}: check the image)"
            if confidence < floor
            else ""
        )
        return NoPartModelError(
            f"no abnormality model for {part} in bundle '{self.engine.model_name}'{unsure}",
            bone_type=part,
        )

    def operating_point(self, requested: str | None) -> str:
        """The operating point to answer at: the request's, or the bundle's default; a
        422 naming the ones the bundle has when it lacks the one asked for."""
        manifest = self.engine.manifest
        if manifest is None:
            raise NotReadyError(self.engine.not_ready_reason())
        if requested is None:
            return manifest.default_point
        names = manifest.operating_point_names
        if requested not in names:
            raise UnknownOperatingPointError(
                f"bundle '{manifest.name}' has no operating point '{requested[:40]}'; "
                f"it has {', '.join(names)}",
                names,
            )
        return requested

    def point_spec(self, part: str, point: str, level: Level) -> OperatingPoint:
        manifest = self.engine.manifest
        assert manifest is not None
        return manifest.parts[part].points()[point][level]

    def at_point(self, prediction: Prediction, point: str) -> Prediction:
        """``prediction`` decided at ``point``'s image threshold (the engine decides at the
        bundle's default)."""
        if not prediction.has_verdict or prediction.operating_point == point:
            return prediction
        threshold = self.point_spec(prediction.scored_by, point, "image").threshold
        return dataclasses.replace(
            prediction,
            threshold=threshold,
            abnormal=prediction.abnormality_probability >= threshold,
            operating_point=point,
        )

    def screen_content(self, views: Sequence[tuple[str, Prediction]]) -> list[str]:
        """The content gate: views whose router features lie beyond the bundle's limit were
        never the kind of image the model learned to judge. ``enforce``: a 422 naming each;
        ``warn``: a warning per view. [] when every view passes (or there is no gate)."""
        manifest = self.engine.manifest
        gate = manifest.router.ood if manifest is not None else None
        if gate is None or manifest is None:
            return []
        refused = [
            (name, p.content_score)
            for name, p in views
            if p.content_score is not None and p.content_score > gate.limit
        ]
        if not refused:
            return []
        why = (
            "it does not look like the upper-limb radiographs this model was trained on "
            f"(content score above the limit {gate.limit:.1f}, which accepts "
            f"{gate.acceptance:.0%} of the validation views)"
        )
        if manifest.synthetic:
            why += (
                "; this demo model was trained on synthetic drawings, so a real radiograph "
                "is outside what it knows too"
            )
        details = [f"{name} (score {score:.1f})" for name, score in refused]
        if self.settings.eligibility == "enforce":
            if len(views) == 1:
                score = refused[0][1]
                raise NotEligibleError(
                    f"not eligible: {why}", "content", {"score": score, "limit": gate.limit}
                )
            raise NotEligibleError(
                f"not eligible: {len(refused)} of {len(views)} views: {'; '.join(details)}: "
                f"{why}. Send the study without them.",
                "content",
                {
                    "views": [{"filename": n, "score": s} for n, s in refused],
                    "limit": gate.limit,
                },
            )
        return [
            f"not eligible (BONEXR_ELIGIBILITY=warn, answered anyway): {d}: {why}" for d in details
        ]

    def image(
        self,
        name: str,
        prediction: Prediction,
        body_part: str | None,
        point: str | None = None,
    ) -> ImageAnswer:
        """The single-image answer at ``point`` (default: the bundle's), or the 422 to
        refuse with: not eligible (content gate), or no model for the routed part."""
        content = self.screen_content([(name, prediction)])
        if not prediction.has_verdict:
            raise self.no_model_error(prediction.bone_type, prediction.router_confidence)
        point = self.operating_point(point)
        decided = self.at_point(prediction, point)
        chosen = self.point_spec(decided.scored_by, point, "image")
        warnings = [
            *content,
            *self.model_warnings(prediction),
            *self.point_warnings(decided.scored_by, chosen, "image"),
            *body_part_warnings([(name, body_part)], prediction.bone_type),
        ]
        return ImageAnswer(name, decided, warnings, point=chosen)

    def point_warnings(self, part: str, chosen: OperatingPoint, level: Level) -> list[str]:
        """What this answer's operating point and calibration cannot promise: a triage
        point chosen on too few abnormal cases, a probability served uncalibrated."""
        manifest = self.engine.manifest
        assert manifest is not None
        found = []
        if chosen.guarantee == INSUFFICIENT_DATA:
            found.append(
                f"{part} {level}-level operating point: {chosen.guarantee_sentence(level)}"
            )
        calibration = manifest.parts[part].calibration.get(level)
        if calibration is not None and not calibration.calibrated:
            found.append(
                f"{part} {level}-level probability is the model's raw score, not calibrated: "
                f"{calibration.selection.get('reason', 'too few validation cases')}"
            )
        return found

    def model_warnings(self, prediction: Prediction) -> list[str]:
        """What a reader must know about this answer (unsure router, demo model)."""
        engine = self.engine
        found: list[str] = []
        floor = self.settings.router_confidence_floor
        if prediction.router_confidence < floor:
            parts = ", ".join(prediction.bone_type_probabilities)
            found.append(
                f"router is unsure of the body part: {prediction.router_confidence:.2f} for "
                f"{prediction.bone_type} is below the confidence floor {floor:.2f}. Check "
                f"that the image is a radiograph of one of: {parts}."
            )
        found.extend(engine.bundle_warnings)
        if engine.manifest is not None and engine.manifest.synthetic:
            found.append(
                f"model '{engine.model_name}' is a demo trained on synthetic images: "
                "not for clinical use."
            )
        return found

    # ------------------------------------------------------------------ study

    def client_part(self, bone_type: str | None) -> str | None:
        """The client's body part in the bundle's spelling (None: let the router decide)."""
        if bone_type is None:
            return None
        parts = list(self.engine.manifest.parts) if self.engine.manifest else []
        for part in parts:
            if part.lower() == bone_type.strip().lower():
                return part
        raise InvalidStudyError(
            f"no abnormality model for '{bone_type[:40]}' in this bundle; it has {', '.join(parts)}"
        )

    def study_part(
        self, names: Sequence[str], first: Sequence[Prediction], forced: str | None
    ) -> str:
        """The study's body part: the client's, or routed by the summed router
        probabilities; refused (422) for a part without a model or confidently mixed views."""
        manifest = self.engine.manifest
        if manifest is None:
            raise NotReadyError(self.engine.not_ready_reason())
        part = forced or route_study([p.bone_type_probabilities for p in first])
        if part not in manifest.parts:
            mean_confidence = float(np.mean([p.bone_type_probabilities[part] for p in first]))
            raise self.no_model_error(part, mean_confidence)
        if forced is None:
            floor = self.settings.router_confidence_floor
            mixed = [
                f"{name} -> {p.bone_type} ({p.router_confidence:.2f})"
                for name, p in zip(names, first, strict=True)
                if p.bone_type != part and p.router_confidence >= floor
            ]
            if mixed:
                raise InvalidStudyError(
                    f"the views route to different body parts (study: {part}): "
                    f'{"; ".join(mixed)}. Send "bone_type" to score them all with one '
                    "part's model."
                )
        return part

    @staticmethod
    def to_rescore(first: Sequence[Prediction], part: str) -> list[int]:
        """Views the router placed elsewhere: scored again by the study part's model."""
        return [i for i, p in enumerate(first) if p.scored_by != part]

    def study_answer(
        self,
        names: Sequence[str],
        views: Sequence[Prediction],
        body_parts: Sequence[str | None],
        *,
        part: str,
        forced: str | None,
        duplicates: bool = False,
        point: str | None = None,
        content_warnings: Sequence[str] = (),
    ) -> StudyAnswer:
        """MURA's rule: ``views`` (every one scored by ``part``'s model: :meth:`study_part`,
        then :meth:`to_rescore`): their raw probabilities averaged, the mean calibrated by
        the part's study map and decided at ``point``'s study threshold."""
        manifest = self.engine.manifest
        assert manifest is not None
        point = self.operating_point(point)
        spec = manifest.parts[part]
        mean = study_probability([v.raw_probability for v in views])
        probability = calibrate(mean, spec.calibration.get("study"))
        chosen = self.point_spec(part, point, "study")
        threshold = float(chosen.threshold)
        views = [self.at_point(v, point) for v in views]
        classes = list(manifest.router.classes)
        return StudyAnswer(
            bone_type=part,
            bone_type_source="client" if forced else "router",
            bone_type_probabilities={
                c: float(np.mean([v.bone_type_probabilities[c] for v in views])) for c in classes
            },
            abnormality_probability=probability,
            threshold=threshold,
            result=result_name(probability >= threshold),
            views=list(zip(names, views, strict=True)),
            warnings=[
                *content_warnings,
                *self._study_warnings(names, views, body_parts, part, forced, duplicates),
                *self.point_warnings(part, chosen, "study"),
            ],
            operating_point=point,
            point=chosen,
        )

    def _study_warnings(
        self,
        names: Sequence[str],
        views: Sequence[Prediction],
        body_parts: Sequence[str | None],
        study_part: str,
        forced: str | None,
        duplicates: bool,
    ) -> list[str]:
        found: list[str] = []
        if duplicates:
            found.append("duplicate filenames were counted once")
        if forced:
            found.append(f"every view was scored by the {forced} model, as the request asked")
        unsure = [
            f"{name} ({v.bone_type} {v.router_confidence:.2f})"
            for name, v in zip(names, views, strict=True)
            if v.bone_type != study_part
        ]
        if unsure and not forced:
            found.append(
                f"router placed some views elsewhere without confidence; they were scored "
                f"as {study_part}: {', '.join(unsure)}"
            )
        for message in self.model_warnings(views[0]):
            if "router is unsure" not in message:  # per-view unsureness is reported above
                found.append(message)
        found.extend(body_part_warnings(list(zip(names, body_parts, strict=True)), study_part))
        return found


def body_part_warnings(views: Sequence[tuple[str, str | None]], bone_type: str) -> list[str]:
    """A warning per view whose DICOM BodyPartExamined disagrees with the router."""
    found = []
    for name, examined in views:
        if not examined:
            continue
        try:
            named = display_name(normalize_body_part(examined))
        except ConfigError:
            named = None
        if named != bone_type:
            found.append(
                f"{name}: the DICOM header says BodyPartExamined {examined}; "
                f"the router says {bone_type}"
            )
    return found


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
                return await run_in_threadpool(self.load, name, size)
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
                view = await run_in_threadpool(self.load, filename, engine.input_size)
                prediction = await engine.predict(view.pixels, None, admission)
            answer = self.rules.image(filename, prediction, view.body_part, operating_point)
            if not heatmap:
                return answer
            if prediction.cam is None:
                warning = f"bundle '{engine.model_name}' has no heat maps"
                return dataclasses.replace(answer, warnings=[*answer.warnings, warning])
            await run_in_threadpool(
                save_cam, self.services, filename, prediction.scored_by, prediction.cam
            )
            return dataclasses.replace(answer, heatmap_url=f"/heatmap/{filename}")

    async def study(
        self,
        filenames: Sequence[str],
        bone_type: str | None,
        operating_point: str | None = None,
    ) -> StudyAnswer:
        """``/predict/study``: MURA's study rule over stored views."""
        engine, settings = self.engine, self.services.settings
        names = list(dict.fromkeys(filenames))
        if len(names) > settings.max_study_views:
            raise InvalidStudyError(
                f"a study may have at most {settings.max_study_views} views; got {len(names)}"
            )
        forced = self.rules.client_part(bone_type)
        self.rules.operating_point(operating_point)
        async with self.deadline():
            with engine.admit(len(names)) as admission:
                views = await self._load_all(names, engine.input_size)
                first = await asyncio.gather(
                    *(engine.predict(v.pixels, forced, admission) for v in views)
                )

            content = self.rules.screen_content(list(zip(names, first, strict=True)))
            part = self.rules.study_part(names, first, forced)
            again = self.rules.to_rescore(first, part)
            rescored = await asyncio.gather(*(engine.predict(views[i].pixels, part) for i in again))
            final = list(first)
            for index, prediction in zip(again, rescored, strict=True):
                final[index] = prediction
            return self.rules.study_answer(
                names,
                final,
                [v.body_part for v in views],
                part=part,
                forced=forced,
                duplicates=len(names) < len(filenames),
                point=operating_point,
                content_warnings=content,
            )

    async def heatmap(self, filename: str, *, opacity: float, raw: bool) -> tuple[str, bytes]:
        """``GET /heatmap``: ``(part, PNG)``; the map from the cache or one two-stage pass,
        drawn on the stored image inside a decode slot at bounded cost."""
        engine, services = self.engine, self.services
        size = engine.input_size
        async with self.deadline():
            cached = await run_in_threadpool(load_cam, services, filename)
            if cached is None:
                cached = await self._compute_cam(filename, size)
            body = await run_in_threadpool(self._render, filename, cached, size, opacity, raw)
        return cached.part, body

    async def _compute_cam(self, filename: str, size: int) -> CachedCam:
        engine = self.engine
        with engine.admit(1) as admission:
            view = await run_in_threadpool(self.load, filename, size)
            prediction = await engine.predict(view.pixels, None, admission)
        self.rules.screen_content([(filename, prediction)])
        if not prediction.has_verdict:
            raise self.rules.no_model_error(prediction.bone_type, prediction.router_confidence)
        if prediction.cam is None:
            raise HeatmapUnavailableError(
                f"bundle '{engine.model_name}' has no heat maps (exported before they existed)"
            )
        await run_in_threadpool(
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
