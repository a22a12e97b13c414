"""Shadow mode: a candidate bundle scores the same studies as the live one, unseen.

With ``BONEXR_SHADOW_BUNDLE`` set, every study the service records (``POST /predict/study``,
the page, the DICOM node) is offered to the candidate after the live answer was given:
sampled (``BONEXR_SHADOW_SAMPLE_RATE``), queued (``BONEXR_SHADOW_QUEUE``; when full, the
shadow work is dropped and counted, never the live work) and answered in the background by
the candidate's own engine from the same stored views (the pixels the live answer prepared
are reused: the two bundles must prepare alike), in the live engine's idle time (it waits
while live requests are being answered). Its answers go to ``shadow_answers`` beside
the live record and are never shown to a reader; ``bonexr shadow-report`` and
``GET /shadow`` compare them (:mod:`service.domain.shadow_report`).

A candidate whose body parts or preprocessing differ from the live bundle is refused at
start, with the reason (:func:`check_compatible`): its answers would not be comparable.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import time
from dataclasses import dataclass

from anyio import to_thread

from bonexr.bundle import Manifest
from bonexr.errors import ConfigError
from bonexr.labels import RESULT_ABNORMAL
from service.adapters.engine import EngineState, InferenceEngine
from service.adapters.records.shadow import ShadowEntry, ShadowStore
from service.domain.errors import TriageError
from service.triage.predictor import Predictor
from service.triage.recording import verdict
from service.triage.services import Services

log = logging.getLogger("bonexr.service")

#: How often the shadow looks whether the live engine is idle again.
IDLE_POLL_S = 0.005


@dataclass(frozen=True)
class ShadowJob:
    study_id: str
    filenames: tuple[str, ...]
    live_ms: float | None


def check_compatible(live: Manifest, candidate: Manifest) -> None:
    """ConfigError unless the candidate judges the same parts from the same pixels."""
    problems = []
    if sorted(live.parts) != sorted(candidate.parts):
        problems.append(
            f"it judges {', '.join(sorted(candidate.parts))}, the live bundle "
            f"{', '.join(sorted(live.parts))}"
        )
    if sorted(live.router.classes) != sorted(candidate.router.classes):
        problems.append("its router knows other body parts")
    if live.input.model_dump() != candidate.input.model_dump():
        problems.append(
            f"it prepares images differently ({candidate.input.model_dump()} against "
            f"{live.input.model_dump()})"
        )
    if problems:
        raise ConfigError(
            f"shadow bundle {candidate.name} {candidate.version} refused: "
            + "; ".join(problems)
            + ": its answers would not be comparable with the live ones"
        )


class ShadowRunner:
    """The candidate's engine, its bounded queue and the task that empties it."""

    def __init__(
        self,
        services: Services,
        engine: InferenceEngine,
        store: ShadowStore,
        *,
        sample_rate: float,
        queue_size: int,
        seed: int | None = None,
    ) -> None:
        self.engine = engine
        self.store = store
        self.sample_rate = sample_rate
        self.predictor = Predictor(dataclasses.replace(services, engine=engine))
        self.queue: asyncio.Queue[ShadowJob] = asyncio.Queue(maxsize=queue_size)
        self.metrics = services.metrics
        self.services = services
        self._random = random.Random(seed)
        self._task: asyncio.Task[None] | None = None

    def offer(self, job: ShadowJob) -> str:
        """Queue ``job`` if sampled and there is room: "queued", "not_sampled" or
        "dropped" (the queue is full: shadow work gives way, never live work)."""
        if self._random.random() >= self.sample_rate:
            outcome = "not_sampled"
        else:
            try:
                self.queue.put_nowait(job)
                outcome = "queued"
            except asyncio.QueueFull:
                outcome = "dropped"
        self.metrics.shadow_jobs.labels(outcome).inc()
        return outcome

    def start(self) -> None:
        self.engine.start()
        self._task = asyncio.create_task(self._run(), name="bonexr-shadow")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await to_thread.run_sync(self._stop_engine)

    def _stop_engine(self) -> None:
        self.engine.stop(timeout=5, retired=True)

    async def drain(self) -> None:
        """Wait until every queued job was answered (tests, shutdown)."""
        await self.queue.join()

    async def _run(self) -> None:
        await to_thread.run_sync(self.engine.wait_until_settled, 600)
        if self.engine.state is not EngineState.READY:
            log.error("shadow bundle not served: %s", self.engine.error)
        while True:
            job = await self.queue.get()
            try:
                await self._yield_to_live()
                if self.engine.state is EngineState.READY:
                    await self._answer(job)
            except Exception as exc:  # the shadow must never take the service down
                log.warning("shadow answer failed (%s)", type(exc).__name__)
                self.metrics.shadow_jobs.labels("failed").inc()
            finally:
                self.queue.task_done()

    async def _yield_to_live(self) -> None:
        """Wait while the live engine has work (prepared, queued or computing), up to the
        request deadline: the shadow runs in the live service's idle time, so it never
        competes with a live request for the cores; under sustained load its queue fills
        and its work is dropped (counted), never the live work."""
        deadline = time.monotonic() + self.services.settings.predict_timeout_s
        while self.services.engine.batcher.busy and time.monotonic() < deadline:
            await asyncio.sleep(IDLE_POLL_S)

    async def _answer(self, job: ShadowJob) -> None:
        started = time.perf_counter()
        engine = self.engine
        try:
            answer = await self.predictor.study(
                list(job.filenames), None, set_aside_refused=True, door="shadow"
            )
            part, probability = answer.bone_type, answer.abnormality_probability
            result, refusal = verdict(answer.result == RESULT_ABNORMAL), None
        except TriageError as exc:  # the shadow refused the study: recorded as such
            part, probability, result, refusal = None, None, None, exc.detail
        entry = ShadowEntry(
            study_id=job.study_id,
            bundle_name=engine.model_name,
            bundle_version=engine.model_version,
            body_part=part,
            probability=probability,
            result=result,
            refusal=refusal,
            shadow_ms=1000 * (time.perf_counter() - started),
            live_ms=job.live_ms,
        )
        await to_thread.run_sync(self.store.add, entry)
        self.metrics.shadow_jobs.labels("answered").inc()
