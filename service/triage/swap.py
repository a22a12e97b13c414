"""Hot swap: a new bundle loaded beside the serving one, verified, then switched to at once.

A hospital replaces a model without a restart window: ``POST /model/reload`` (admin keys)
names a bundle (or none: the newest in the models folder, as at start). The candidate is
loaded by its own engine in its own thread, through the same checks as at start (files
against the manifest's hashes, the model contract, the version, a warm-up), then answers a
smoke image; only then does the service switch, by replacing the :class:`Predictor` and
the engine that new requests take. A request already running keeps the predictor it
started with (its engine, rules, thresholds: one bundle per answer), and the old engine
keeps its queue open until every such request could have finished
(``BONEXR_PREDICT_TIMEOUT_S``), then stops. A candidate that fails any check is refused
with the reason and the serving bundle goes on; nothing waits for a load but the caller.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from anyio import to_thread

from service.adapters.engine import EngineState, InferenceEngine
from service.domain.errors import BundleRejectedError, SwapInProgressError
from service.triage.predictor import Predictor
from service.triage.services import Services

log = logging.getLogger("bonexr.service")

#: Longest a candidate may take to load, verify and warm.
LOAD_LIMIT_S = 600.0


@dataclass(frozen=True)
class SwapOutcome:
    previous: str  # "name version" of the bundle that served before
    current: str
    seconds: float  # loading and verifying the candidate (serving went on meanwhile)


def label(engine: InferenceEngine) -> str:
    return f"{engine.model_name} {engine.model_version}".strip()


class BundleSwapper:
    """One swap at a time; ``switch`` installs a new predictor wherever requests find it
    (the app's state, the DICOM node)."""

    def __init__(self, services: Services, switch: Callable[[Predictor], None]) -> None:
        self.services = services
        self.switch = switch
        self._busy = asyncio.Lock()
        self._retiring: dict[asyncio.Task[None], InferenceEngine] = {}

    async def reload(self, bundle: str | None = None) -> SwapOutcome:
        """Load ``bundle`` (a name or path; None: as at start), verify it, switch to it."""
        if self._busy.locked():
            raise SwapInProgressError("another bundle is being loaded; retry when it is done")
        async with self._busy:
            started = time.perf_counter()
            candidate = await self._load(bundle)
            await self._smoke(candidate)
            old = self.services.engine
            self.services.engine = candidate
            self.switch(Predictor(self.services))
            self.services.metrics.drift.reset()  # a new bundle: a new reference population
            outcome = SwapOutcome(label(old), label(candidate), time.perf_counter() - started)
            log.info("model swapped: %s -> %s", outcome.previous, outcome.current)
            task = asyncio.create_task(self._retire(old))
            self._retiring[task] = old
            task.add_done_callback(lambda done: self._retiring.pop(done, None))
            return outcome

    async def _load(self, bundle: str | None) -> InferenceEngine:
        settings = self.services.settings
        if bundle is not None:
            settings = settings.model_copy(update={"bundle": bundle})
        candidate = InferenceEngine(settings, self.services.metrics)
        candidate.start()
        settled = await to_thread.run_sync(candidate.wait_until_settled, LOAD_LIMIT_S)
        if not settled or candidate.state is not EngineState.READY:
            reason = candidate.error or "it did not finish loading in time"
            await to_thread.run_sync(self._drop, candidate)
            raise BundleRejectedError(f"bundle refused, the serving one goes on: {reason}")
        return candidate

    async def _smoke(self, candidate: InferenceEngine) -> None:
        """One answer from the candidate, on a plain grey image: finite probabilities."""
        size = candidate.input_size
        try:
            answer = await candidate.predict(np.full((size, size), 128, np.uint8))
        except Exception as exc:  # any failure here is the candidate's
            await to_thread.run_sync(self._drop, candidate)
            raise BundleRejectedError(
                f"bundle refused, the serving one goes on: its smoke answer failed "
                f"({type(exc).__name__})"
            ) from None
        values = [answer.abnormality_probability, *answer.bone_type_probabilities.values()]
        if not all(math.isfinite(v) for v in values):
            await to_thread.run_sync(self._drop, candidate)
            raise BundleRejectedError(
                "bundle refused, the serving one goes on: its smoke answer is not a number"
            )

    def _drop(self, candidate: InferenceEngine) -> None:
        candidate.stop(timeout=5, retired=True)

    async def _retire(self, old: InferenceEngine) -> None:
        """Stop the old engine once every request that took it could have finished."""
        await asyncio.sleep(self.services.settings.predict_timeout_s + 1)
        await to_thread.run_sync(self._drop, old)
        metrics, current = self.services.metrics, self.services.engine
        if old.manifest is not None and label(old) != label(current):
            metrics.model_info.labels(old.model_name, old.model_version).set(0)
        log.info("retired bundle %s", label(old))

    async def close(self) -> None:
        """At shutdown: stop the engines still retiring now (their requests are done or
        answered 503 by the shutdown itself)."""
        for task, old in list(self._retiring.items()):
            task.cancel()
            await to_thread.run_sync(self._drop, old)
