"""The DICOM node's wiring: receive -> settle -> answer -> deliver, and what ``/ready`` and
``/metrics`` say about it.

Two loops on the app's event loop, started and stopped by its lifespan: the *settle loop*
answers every study that has settled (:mod:`.inbox`) through the predictor
(:mod:`.analysis`) and puts the results in the outbox; the *delivery loop* sends what is
due (:mod:`.outbox`) in a worker thread, one job at a time. Instances come in through
:meth:`DicomNode.receive`, from the STOW-RS route's worker threads and the Storage SCP's
association threads alike.

Logs name a study by a hash of its UID (:func:`~.inbox.study_key`), never by a patient
name, ID or the UID itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import shutil
import time
from dataclasses import dataclass

from fastapi.concurrency import run_in_threadpool

from service.domain.errors import NotReadyError, OverloadedError
from service.doors.dicom.analysis import analyse, result_objects
from service.doors.dicom.destinations import configured_destinations
from service.doors.dicom.entries import dicom_entry
from service.doors.dicom.inbox import PatientConflict, StudyInbox, StudyRecord
from service.doors.dicom.instances import (
    InstanceRejected,
    ReceivedInstance,
    ingest,
    instance_path,
)
from service.doors.dicom.outbox import Job, Outbox
from service.doors.dicom.outcomes import DATASET_DOES_NOT_MATCH
from service.doors.dicom.scp import StorageScp
from service.triage.predictor import Predictor
from service.triage.recording import record_answer
from service.triage.shadow import ShadowJob, ShadowRunner

log = logging.getLogger("bonexr.dicom")

#: How often the loops look for settled studies and due deliveries.
TICK_S = 0.2
#: Longest wait before a study whose analysis failed unexpectedly is tried again.
MAX_ANALYSIS_RETRY_S = 600.0


@dataclass(frozen=True)
class DestinationStatus:
    name: str
    target: str
    pending: int
    failed: int
    last_error: str | None


class DicomNode:
    """Receives studies, answers them once settled, delivers the results durably."""

    def __init__(self, predictor: Predictor) -> None:
        self.predictor = predictor
        self.services = predictor.services
        settings = self.services.settings
        self.root = settings.dicom_folder
        self.settle_s = settings.study_settle_s
        self.inbox = StudyInbox(self.root, settings.study_settle_s)
        self.outbox = Outbox(
            self.root,
            configured_destinations(settings),
            retry_s=settings.delivery_retry_s,
            retry_max_s=settings.delivery_retry_max_s,
        )
        self.scp: StorageScp | None = None
        if settings.dicom_port is not None:
            self.scp = StorageScp(
                ae_title=settings.dicom_ae_title,
                host=settings.dicom_listen_host,
                port=settings.dicom_port,
                allowed_aets=settings.allowed_aet_list(),
                allowed_networks=settings.allowed_networks(),
                receive=self._c_store,
                max_bytes=settings.max_upload_bytes,
            )
        self._tasks: list[asyncio.Task[None]] = []
        #: the shadow bundle's runner (set by the app when BONEXR_SHADOW_BUNDLE is)
        self.shadow: ShadowRunner | None = None
        metrics = self.services.metrics
        for name in self.outbox.destinations:
            metrics.dicom_pending.labels(name).set_function(functools.partial(self._count, name, 0))
            metrics.dicom_failed.labels(name).set_function(functools.partial(self._count, name, 1))

    # ------------------------------------------------------------------ life cycle

    async def start(self) -> None:
        """Read what a previous run left (studies, pending deliveries), start the SCP and
        the loops. A folder that cannot be created is logged; ``/ready`` reports it."""
        if self.root.is_dir():  # created by the first instance received
            try:
                loaded = await asyncio.to_thread(self.inbox.load)
                if loaded:
                    log.info("DICOM node: %d study record(s) from before the restart", loaded)
            except OSError as exc:
                log.error("DICOM node folder unreadable (%s)", type(exc).__name__)
        if self.scp is not None:
            await asyncio.to_thread(self.scp.start)
        if not self.outbox.destinations:
            log.info("DICOM node: no results destination set; studies are answered, not sent")
        # One delivery loop per destination (and one for jobs of removed ones), so a PACS
        # that hangs for its whole timeout delays nobody else's results.
        lanes: list[str | None] = [*self.outbox.destinations, None]
        self._tasks = [
            asyncio.create_task(self._settle_loop(), name="bonexr-dicom-settle"),
            *(
                asyncio.create_task(self._delivery_loop(lane), name=f"bonexr-dicom-to-{lane}")
                for lane in lanes
            ),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        if self.scp is not None:
            await asyncio.to_thread(self.scp.stop)

    def _ensure(self) -> None:
        for name in ("instances", "studies"):
            (self.root / name).mkdir(parents=True, exist_ok=True, mode=0o700)
        self.outbox.ensure()

    # ------------------------------------------------------------------ receiving

    def receive(self, data: bytes, via: str, study_uid: str | None = None) -> ReceivedInstance:
        """Take one instance (blocking); :class:`InstanceRejected` when it is not taken
        (also when ``study_uid`` is given and the instance is of another study)."""
        metrics = self.services.metrics
        try:
            self._ensure()  # here, not at start-up: a service that never receives has no folder
            instance = ingest(
                self.services,
                self.root,
                data,
                study_uid=study_uid,
                patient_of=self.inbox.patient_of,
            )
            if not instance.own_result:
                self._take(instance)
        except InstanceRejected as exc:
            metrics.dicom_instances.labels(via, "rejected").inc()
            log.warning("DICOM instance via %s rejected: %s", via, exc.detail)
            raise
        except OSError as exc:
            metrics.dicom_instances.labels(via, "rejected").inc()
            raise InstanceRejected(
                0xA700, f"the node's folder is unusable ({exc.strerror})"
            ) from None
        if instance.own_result:
            metrics.dicom_instances.labels(via, "own_result").inc()
            return instance
        outcome = "not_eligible" if instance.refusal else "eligible"
        metrics.dicom_instances.labels(via, outcome).inc()
        return instance

    def _take(self, instance: ReceivedInstance) -> None:
        """Add ``instance`` to its study; when it cannot be (another patient's study, a full
        disk) its stored pixels go, and the error is the sender's answer."""
        try:
            self.inbox.add(instance)
        except (PatientConflict, OSError) as exc:
            if instance.filename:
                self.services.delete_uploads([instance.filename], "dicom_rejected")
            if isinstance(exc, PatientConflict):
                raise InstanceRejected(DATASET_DOES_NOT_MATCH, str(exc), instance.sop_uid) from None
            raise

    def _c_store(self, data: bytes, calling_aet: str) -> int:
        try:
            self.receive(data, "c-store")
        except InstanceRejected as exc:
            return exc.status
        except Exception as exc:  # never let a handler error kill the association thread
            log.error("C-STORE from %s failed (%s)", calling_aet, type(exc).__name__)
            return 0xC000
        return 0x0000

    # ------------------------------------------------------------------ answering

    async def _settle_loop(self) -> None:
        while True:
            engine = self.predictor.engine
            try:
                if engine.ready:
                    for record in self.inbox.due(engine.model_version):
                        await self.answer(record)
            except Exception as exc:  # the loop must outlive any one failure
                log.error("DICOM settle loop: %s; going on", type(exc).__name__)
            await asyncio.sleep(TICK_S)

    async def answer(self, record: StudyRecord) -> None:
        """Answer one settled study, queue its results and record it in the worklist (a
        failure is retried later; the results are queued once whatever happens after)."""
        metrics = self.services.metrics
        key = record.report_key(self.predictor.engine.model_version)
        started = time.perf_counter()
        try:
            analysis = await analyse(self.predictor, record)
            objects = await run_in_threadpool(result_objects, self.root, record, analysis, key)
            await run_in_threadpool(self.outbox.enqueue, key, objects)
            filenames = {sop: i.filename for sop, i in record.instances.items()}
            entry = dicom_entry(analysis.outcome, filenames, replaces=record.record_id)
            record_id = await run_in_threadpool(record_answer, self.services, entry)
            if self.shadow is not None and analysis.outcome.refusal is None:
                scored = tuple(
                    name for sop, name in filenames.items()
                    if name and not record.instances[sop].refusal
                )  # fmt: skip
                live_ms = 1000 * (time.perf_counter() - started)
                self.shadow.offer(ShadowJob(record_id, scored, live_ms))
        except (NotReadyError, OverloadedError) as exc:
            self.inbox.defer(record, self.settle_s)
            log.info("study %s waits: %s", record.key[:12], exc.detail)
            return
        except Exception as exc:  # a bug or a store failure: never lose the study
            wait = min(MAX_ANALYSIS_RETRY_S, self.settle_s * 2 ** min(record.attempts, 10))
            self.inbox.defer(record, wait)
            metrics.dicom_studies.labels("error").inc()
            log.error(
                "study %s could not be answered (%s); next try in %.0f s",
                record.key[:12],
                type(exc).__name__,
                wait,
            )
            return
        self.inbox.mark_answered(record, key, record_id)
        outcome = "answered" if analysis.outcome.refusal is None else "refused"
        metrics.dicom_studies.labels(outcome).inc()
        log.info(
            "study %s %s: %d instance(s), %d result object(s) in %.2f s",
            record.key[:12],
            outcome,
            len(record.instances),
            len(objects),
            time.perf_counter() - started,
        )

    # ------------------------------------------------------------------ delivering

    def _due_for(self, lane: str | None) -> list[Job]:
        """Due jobs of destination ``lane`` (None: of destinations no longer configured)."""
        configured = self.outbox.destinations
        return [
            job
            for job in self.outbox.due()
            if job.destination == lane or (lane is None and job.destination not in configured)
        ]

    async def _delivery_loop(self, lane: str | None) -> None:
        while True:
            try:
                if self.outbox.folder.is_dir():
                    for job in await asyncio.to_thread(self._due_for, lane):
                        result = await asyncio.to_thread(self.outbox.attempt, job)
                        metrics = self.services.metrics
                        metrics.dicom_deliveries.labels(job.destination, result).inc()
            except Exception as exc:  # a job removed meanwhile, a full disk: try again
                log.error("DICOM delivery loop: %s; going on", type(exc).__name__)
            await asyncio.sleep(TICK_S)

    def _count(self, destination: str, index: int) -> float:
        try:
            if not self.outbox.folder.is_dir():
                return 0.0
            return float(self.outbox.counts().get(destination, (0, 0))[index])
        except OSError:
            return 0.0

    # ------------------------------------------------------------------ operations

    def problem(self) -> str | None:
        """Why the node cannot receive now (for ``/ready``), or None."""
        if self.scp is not None and not self.scp.listening:
            return self.scp.problem or "DICOM listener not listening"
        return None

    def listener(self) -> str | None:
        return self.scp.address if self.scp is not None else None

    def forget(self, sop_uids: set[str]) -> int:
        """Delete received instances (their kept files and their place in the inbox): a
        record deleted from the worklist takes its source instances with it. Blocking;
        returns how many files were removed."""
        removed = self.inbox.forget_instances(sop_uids)
        still = self.inbox.kept_digests()
        count = 0
        for instance in removed:
            if instance.dicom_sha256 in still:
                continue
            path = instance_path(self.root, instance.dicom_sha256)
            if path.is_file():
                path.unlink(missing_ok=True)
                count += 1
        return count

    def destinations(self) -> list[DestinationStatus]:
        """Every configured destination, then any removed one that still has jobs (kept
        in the failed folder, never retried: shown so nobody forgets them)."""
        counts = self.outbox.counts() if self.outbox.folder.is_dir() else {}
        configured = self.outbox.destinations
        removed = [name for name in counts if name not in configured]
        return [
            DestinationStatus(
                name,
                configured[name].describe if name in configured else "no longer configured",
                *counts.get(name, (0, 0)),
                self.outbox.last_error.get(name),
            )
            for name in [*configured, *removed]
        ]

    def sweep(self, max_age_seconds: float, *, now: float | None = None) -> int:
        """Retention: received instances, study records and delivery records older than
        ``max_age_seconds`` (results still waiting for delivery stay)."""
        cutoff = (time.time() if now is None else now) - max_age_seconds
        removed = 0
        folder = self.root / "instances"
        if folder.is_dir():
            for path in folder.iterdir():
                with contextlib.suppress(OSError):
                    if path.stat().st_mtime < cutoff:
                        if path.is_dir():
                            shutil.rmtree(path, ignore_errors=True)
                        else:
                            path.unlink()
                        removed += 1
        removed += self.inbox.forget_older_than(cutoff)
        removed += self.outbox.forget_older_than(cutoff)
        return removed
