"""The micro-batcher: a bounded queue of prepared images, one worker, batches, futures.

It knows nothing of models: it is given a ``run_batch(pixels, parts)`` function (the
two-stage model of :mod:`service.adapters.engine`), so a runtime can be swapped without touching it.

* **Batching**: the worker takes the oldest request and gathers more while others are on
  their way (:meth:`admit`), up to ``max_batch_size`` or ``max_batch_wait_ms``; a lone
  request on an idle service is never delayed.
* **Overload**: at most ``max_queue`` requests wait or are on their way; beyond that
  :meth:`admit` (before any decoding) or :meth:`submit` raises
  :class:`~service.domain.errors.OverloadedError` at once (429 with ``Retry-After``) instead of
  letting every client wait. Each request has a deadline (``predict_timeout_s``); one still
  unanswered then gets a 503 and its slot is skipped by the worker.
* **Results** go back to each request's event loop with ``call_soon_threadsafe`` (futures
  are not thread-safe); inference never runs on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import numpy as np

from service.domain.errors import InferenceFailedError, NotReadyError, OverloadedError

if TYPE_CHECKING:
    from service.adapters.metrics import ServiceMetrics

log = logging.getLogger("bonexr.engine")

Result = TypeVar("Result")
RunBatch = Callable[[np.ndarray, Sequence[str | None]], Sequence[Any]]


@dataclass
class _Request(Generic[Result]):
    pixels: np.ndarray
    future: asyncio.Future[Result]
    loop: asyncio.AbstractEventLoop
    part: str | None = None  # score with this part's model instead of the routed one
    enqueued: float = field(default_factory=time.monotonic)


_STOP = object()


@dataclass
class Admission:
    """Queue places reserved by :meth:`MicroBatcher.admit` and not yet used by a submit."""

    left: int


class MicroBatcher:
    """Queue + worker. ``serve()`` runs the worker loop in the calling thread."""

    def __init__(
        self,
        run_batch: RunBatch,
        *,
        max_batch_size: int,
        max_batch_wait_ms: float,
        max_queue: int,
        timeout_s: float,
        metrics: ServiceMetrics | None = None,
    ) -> None:
        self.run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_wait = max_batch_wait_ms / 1000.0
        self.max_queue = max_queue
        self.timeout_s = timeout_s
        self.metrics = metrics
        self.images_per_second = 0.0  # measured by the owner (warm-up), for Retry-After
        self._queue: queue.Queue[Any] = queue.Queue()
        self._lock = threading.Lock()
        self._waiting = 0  # requests queued, not yet taken into a batch
        self._in_flight = 0  # requests in the batch being computed
        self._incoming = 0  # requests being prepared that will be queued shortly
        self._open = False
        if metrics is not None:
            metrics.queue_depth.set_function(lambda: float(self._waiting))
            metrics.in_flight.set_function(lambda: float(self._in_flight))
            metrics.queue_limit.set(max_queue)

    @property
    def busy(self) -> bool:
        """Whether any request is being prepared, waiting or computed (what a background
        consumer such as the shadow bundle waits out, so it never slows this one)."""
        return bool(self._waiting or self._in_flight or self._incoming)

    # -------------------------------------------------------------------- the client side

    def open(self) -> None:
        with self._lock:
            self._open = True

    @contextlib.contextmanager
    def admit(self, count: int, not_ready: Callable[[], str]) -> Iterator[Admission]:
        """Reserve ``count`` queue places for a request *before* it decodes anything.

        A full queue is refused here (429 with ``Retry-After``), so an overloaded service
        spends no decode, memory or model work on requests it cannot answer. While the
        reservation is held the request counts as on its way: the worker waits (up to
        ``max_batch_wait_ms``) for more requests only while some are, so an idle service
        answers a lone request at once and a busy one still fills its batches. Places not
        used by :meth:`submit` are given back on leaving.
        """
        admission = Admission(count)
        with self._lock:
            if not self._open:
                raise NotReadyError(not_ready())
            if self._waiting + self._incoming + count > self.max_queue:
                raise self._overloaded()
            self._incoming += count
        try:
            yield admission
        finally:
            with self._lock:
                self._incoming -= admission.left

    def _overloaded(self) -> OverloadedError:
        """Count and describe a refusal (call with the lock held)."""
        if self.metrics is not None:
            self.metrics.rejected.inc()
        return OverloadedError(
            f"the service is at capacity ({self.max_queue} requests waiting); "
            f"retry in {self.retry_after_s()} s",
            retry_after_s=self.retry_after_s(),
        )

    def retry_after_s(self) -> int:
        """Seconds until the queue has likely drained (at least 1)."""
        rate = self.images_per_second or 1.0
        return max(1, math.ceil(self._waiting / rate))

    async def submit(
        self,
        pixels: np.ndarray,
        part: str | None,
        not_ready: Callable[[], str],
        admission: Admission | None = None,
    ) -> Any:
        """Queue one image and await its result (429 when full, 503 past the deadline).

        With an ``admission`` that still holds a place (:meth:`admit`), the image takes it
        and is never refused for capacity; without one, the queue is checked here.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        with self._lock:  # after close() nothing more can be queued
            if not self._open:
                raise NotReadyError(not_ready())
            if admission is not None and admission.left > 0:
                admission.left -= 1
                self._incoming -= 1
            elif self._waiting + self._incoming >= self.max_queue:
                raise self._overloaded()
            self._waiting += 1
            self._queue.put(_Request(pixels, future, loop, part))
        try:
            return await asyncio.wait_for(future, self.timeout_s)
        except TimeoutError:
            raise NotReadyError(
                f"inference did not finish within {self.timeout_s:g} s: the service is "
                "overloaded; retry later"
            ) from None

    # -------------------------------------------------------------------- the worker side

    def close(self) -> None:
        """Refuse new requests; the worker answers what is queued, then stops (FIFO)."""
        with self._lock:
            self._open = False
        self._queue.put(_STOP)

    def serve(self) -> None:
        """The worker loop: batches until :meth:`close`."""
        while True:
            first = self._queue.get()
            if first is _STOP:
                return
            batch: list[_Request[Any]] = [first]
            stopping = False
            deadline = first.enqueued + self.max_wait
            while len(batch) < self.max_batch_size:
                remaining = deadline - time.monotonic()
                wait = remaining > 0 and self._incoming > 0
                try:
                    item = self._queue.get(timeout=remaining) if wait else self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stopping = True
                    break
                batch.append(item)
            self._run(batch)
            if stopping:
                return

    def _run(self, batch: list[_Request[Any]]) -> None:
        with self._lock:
            self._waiting -= len(batch)
        live = [r for r in batch if not r.future.done()]  # skip requests whose client left
        if not live:
            return
        started = time.monotonic()
        if self.metrics is not None:
            self.metrics.batch_size.observe(len(live))
            for request in live:
                self.metrics.queue_wait.observe(started - request.enqueued)
        self._in_flight = len(live)
        try:
            results = self.run_batch(np.stack([r.pixels for r in live]), [r.part for r in live])
        except Exception as exc:
            log.error("inference failed on a batch of %d: %s", len(live), type(exc).__name__)
            error = InferenceFailedError("inference failed")
            for request in live:
                _resolve(request, exception=error)
            return
        finally:
            self._in_flight = 0
        for request, result in zip(live, results, strict=True):
            _resolve(request, result=result)

    def fail_pending(self, error: Exception) -> None:
        """Answer whatever is still queued (the worker is gone) with ``error``."""
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item is not _STOP:
                with self._lock:
                    self._waiting -= 1
                _resolve(item, exception=error)


def _resolve(
    request: _Request[Any], *, result: Any = None, exception: Exception | None = None
) -> None:
    """Hand a result to the request's event loop (futures are not thread-safe)."""

    def settle() -> None:
        if request.future.done():
            return
        if exception is not None:
            request.future.set_exception(exception)
        else:
            request.future.set_result(result)

    with contextlib.suppress(RuntimeError):  # a closed loop: nobody is waiting any more
        request.loop.call_soon_threadsafe(settle)
