"""Results waiting for delivery: on disk until a destination has taken them.

One job per answer and destination, ``outbox/<report key>-<destination>/``: the result
objects (``*.dcm``) and ``job.json`` (attempts, when to try next, the last error). A job is
written to a temporary folder and renamed into place, so it is whole or absent; it is
removed only after the destination confirmed every object, so a destination that is down,
answers 5xx or rejects the association keeps it, and a restart finds it again. Waits double
from ``BONEXR_DELIVERY_RETRY_S`` up to ``BONEXR_DELIVERY_RETRY_MAX_S``.

A destination that refuses the objects themselves (a STOW-RS 400/409, a C-STORE failure
status that is not "out of resources") would refuse them again: the job moves to
``failed/`` (kept, counted in ``/metrics``, logged) instead of being retried forever.
A delivered job leaves ``delivered/<job>.json`` behind, so the same answer is never sent
twice.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bonexr.atomic import write_bytes_atomic, write_json_atomic

log = logging.getLogger("bonexr.dicom")


class DeliveryError(Exception):
    """A delivery attempt failed; ``permanent`` when trying again cannot help."""

    def __init__(self, detail: str, *, permanent: bool = False) -> None:
        super().__init__(detail)
        self.detail = detail
        self.permanent = permanent


@dataclass(frozen=True)
class Destination:
    """Where results go: a name (``dicomweb``, ``dicom``), what to show in ``/ready``, and
    a blocking ``send`` of the object files (raises :class:`DeliveryError`)."""

    name: str
    describe: str
    send: Callable[[Sequence[Path]], None]


@dataclass
class Job:
    folder: Path
    destination: str
    attempts: int = 0
    next_attempt: float = 0.0
    last_error: str | None = None

    @property
    def name(self) -> str:
        return self.folder.name

    def objects(self) -> list[Path]:
        return sorted(self.folder.glob("*.dcm"))


class Outbox:
    """The jobs of every destination (thread-safe for enqueue vs. the delivery loop)."""

    def __init__(
        self,
        root: Path,
        destinations: Sequence[Destination],
        *,
        retry_s: float,
        retry_max_s: float,
    ) -> None:
        self.folder = root / "outbox"
        self.failed_folder = root / "failed"
        self.delivered_folder = root / "delivered"
        self.destinations = {d.name: d for d in destinations}
        self.retry_s = retry_s
        self.retry_max_s = retry_max_s
        self._lock = threading.Lock()
        self.last_error: dict[str, str | None] = {d.name: None for d in destinations}

    def ensure(self) -> None:
        for folder in (self.folder, self.failed_folder, self.delivered_folder):
            folder.mkdir(parents=True, exist_ok=True)

    def enqueue(self, key: str, objects: Sequence[tuple[str, bytes]]) -> list[str]:
        """One job per destination for the objects (``(file name, bytes)``); a job that
        exists already, was delivered or failed is left alone. Returns the new job names."""
        created = []
        with self._lock:
            for name in self.destinations:
                job = f"{key}-{name}"
                target = self.folder / job
                if (
                    target.exists()
                    or (self.delivered_folder / f"{job}.json").exists()
                    or (self.failed_folder / job).exists()
                ):
                    continue
                scratch = Path(tempfile.mkdtemp(prefix=".tmp-", dir=self.folder))
                try:
                    for file_name, data in objects:
                        write_bytes_atomic(scratch / file_name, data)
                    write_json_atomic(scratch / "job.json", {"destination": name, "attempts": 0})
                    os.rename(scratch, target)
                except BaseException:
                    shutil.rmtree(scratch, ignore_errors=True)
                    raise
                created.append(job)
        return created

    def jobs(self) -> list[Job]:
        """Every pending job, oldest first (leftover temporary folders are removed)."""
        found = []
        dated = []
        for folder in self.folder.iterdir():
            try:
                dated.append((folder.stat().st_mtime, folder))
            except OSError:  # delivered and removed meanwhile
                continue
        for mtime, folder in sorted(dated):
            if folder.name.startswith(".tmp-"):
                if time.time() - mtime > 3600:
                    shutil.rmtree(folder, ignore_errors=True)
                continue
            try:
                state: dict[str, Any] = json.loads((folder / "job.json").read_text())
            except (OSError, ValueError):
                continue
            found.append(
                Job(
                    folder,
                    str(state.get("destination", "")),
                    int(state.get("attempts", 0)),
                    float(state.get("next_attempt", 0.0)),
                    state.get("last_error"),
                )
            )
        return found

    def due(self, now: float | None = None) -> list[Job]:
        now = time.time() if now is None else now
        return [j for j in self.jobs() if j.next_attempt <= now]

    def counts(self) -> dict[str, tuple[int, int]]:
        """Per destination: (pending jobs, failed jobs)."""
        pending = {name: 0 for name in self.destinations}
        failed = dict(pending)
        for job in self.jobs():
            pending[job.destination] = pending.get(job.destination, 0) + 1
        if self.failed_folder.is_dir():
            for folder in self.failed_folder.iterdir():
                name = folder.name.rpartition("-")[2]
                failed[name] = failed.get(name, 0) + 1
        names = sorted(set(pending) | set(failed))  # a removed destination's jobs too
        return {name: (pending.get(name, 0), failed.get(name, 0)) for name in names}

    def attempt(self, job: Job, now: float | None = None) -> str:
        """Try ``job`` once (blocking): ``delivered``, ``retry`` or ``failed``."""
        destination = self.destinations.get(job.destination)
        if destination is None:  # configured before, not now: kept, visible, not retried
            reason = f"destination '{job.destination}' is no longer configured"
            self._move_failed(job, reason)
            return "failed"
        try:
            destination.send(job.objects())
        except DeliveryError as exc:
            self.last_error[job.destination] = exc.detail
            if exc.permanent:
                self._move_failed(job, exc.detail)
                return "failed"
            self._reschedule(job, exc.detail, now)
            return "retry"
        self.last_error[job.destination] = None
        write_json_atomic(
            self.delivered_folder / f"{job.name}.json",
            {"delivered_at": time.time(), "attempts": job.attempts + 1},
        )
        shutil.rmtree(job.folder, ignore_errors=True)
        return "delivered"

    def _reschedule(self, job: Job, error: str, now: float | None) -> None:
        now = time.time() if now is None else now
        attempts = job.attempts + 1
        wait = min(self.retry_max_s, self.retry_s * 2 ** (attempts - 1))
        write_json_atomic(
            job.folder / "job.json",
            {
                "destination": job.destination,
                "attempts": attempts,
                "next_attempt": now + wait,
                "last_error": error,
            },
        )
        log.warning(
            "delivery %s to %s failed (attempt %d): %s; next try in %.0f s",
            job.name[:12],
            job.destination,
            attempts,
            error,
            wait,
        )

    def _move_failed(self, job: Job, error: str) -> None:
        write_json_atomic(
            job.folder / "job.json",
            {"destination": job.destination, "attempts": job.attempts + 1, "last_error": error},
        )
        os.replace(job.folder, self.failed_folder / job.name)
        log.error("delivery %s to %s refused for good: %s", job.name[:12], job.destination, error)

    def forget_older_than(self, cutoff: float) -> int:
        """Remove delivered records and failed jobs older than ``cutoff`` (retention)."""
        removed = 0
        for folder in (self.delivered_folder, self.failed_folder):
            if not folder.is_dir():
                continue
            for entry in folder.iterdir():
                if entry.stat().st_mtime < cutoff:
                    if entry.is_dir():
                        shutil.rmtree(entry, ignore_errors=True)
                    else:
                        entry.unlink(missing_ok=True)
                    removed += 1
        return removed
