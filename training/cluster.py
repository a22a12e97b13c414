"""The multi-worker cluster from ``TF_CONFIG``: checked before anything starts, and who writes.

``--strategy multiworker`` runs one ``bonexr train`` process per host, each with its own
``TF_CONFIG`` (the same ``cluster``, its own ``task``). TensorFlow reads that variable late
and reports a mistake in it as a traceback from deep inside the runtime, or hangs waiting
for a worker that was never meant to come; :func:`parse_tf_config` checks it first and turns
every mistake into one :class:`~bonexr.errors.ConfigError`.

Exactly one task writes: the **chief** (task type ``chief``, or worker 0 when the cluster
has no ``chief`` job, as TensorFlow's multi-worker guide defines it). The others train in
lock-step and keep whatever Keras writes in a temporary folder deleted afterwards
(:func:`scratch_dir`); they never touch the run folder or the bundle folder.

TensorFlow-free, so the command line can check ``TF_CONFIG`` before importing TensorFlow.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bonexr.errors import ConfigError

#: The jobs a MultiWorkerMirroredStrategy cluster can have. ``evaluator`` (a side-car that
#: evaluates checkpoints) and ``ps`` (parameter servers) belong to other set-ups.
JOBS = ("chief", "worker")
CHIEF, WORKER = JOBS


@dataclass(frozen=True)
class Cluster:
    """The cluster of a multi-worker run and this process's place in it."""

    jobs: dict[str, list[str]]  # job name -> "host:port" of each task, in index order
    task_type: str
    task_index: int

    @property
    def is_chief(self) -> bool:
        """True for the one task that writes: ``chief``, or worker 0 without a chief."""
        if CHIEF in self.jobs:
            return self.task_type == CHIEF
        return self.task_type == WORKER and self.task_index == 0

    @property
    def num_workers(self) -> int:
        """Tasks that train (chief included)."""
        return sum(len(self.jobs.get(job, ())) for job in JOBS)

    @property
    def address(self) -> str:
        return self.jobs[self.task_type][self.task_index]

    @property
    def task(self) -> str:
        """``worker:1``: how logs and errors name this task."""
        return f"{self.task_type}:{self.task_index}"

    def tasks(self) -> list[str]:
        """Every task, chief first, in the order TensorFlow numbers them in a collective."""
        return [f"{job}:{i}" for job in JOBS for i in range(len(self.jobs.get(job, ())))]


def parse_tf_config(raw: str | None) -> Cluster:
    """Check a ``TF_CONFIG`` value and return its cluster; :class:`ConfigError` otherwise.

    Refused: no value, malformed JSON, a missing or empty ``cluster``, a job other than
    ``chief``/``worker``, more than one chief, an address that is not ``host:port``, the
    same address twice, a missing ``task``, a task type that is not in the cluster and a
    task index out of range.
    """
    if raw is None or not raw.strip():
        raise ConfigError(
            "--strategy multiworker needs the TF_CONFIG environment variable "
            '(e.g. {"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
            '"task": {"type": "worker", "index": 0}})'
        )
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"TF_CONFIG is not valid JSON: {exc}") from None
    if not isinstance(config, dict):
        raise ConfigError("TF_CONFIG must be a JSON object with 'cluster' and 'task'")
    jobs = _parse_jobs(config.get("cluster"))
    task_type, task_index = _parse_task(config.get("task"), jobs)
    return Cluster(jobs=jobs, task_type=task_type, task_index=task_index)


def _parse_jobs(cluster: Any) -> dict[str, list[str]]:
    if not isinstance(cluster, dict) or not cluster:
        raise ConfigError(
            "TF_CONFIG has no 'cluster' (a mapping of job names to lists of host:port)"
        )
    unknown = sorted(set(cluster) - set(JOBS))
    if unknown:
        raise ConfigError(
            f"TF_CONFIG cluster has job(s) {', '.join(map(repr, unknown))}; "
            "--strategy multiworker takes 'chief' and 'worker' only"
        )
    jobs: dict[str, list[str]] = {}
    seen: dict[str, str] = {}
    for job in JOBS:
        if job not in cluster:
            continue
        addresses = cluster[job]
        if not isinstance(addresses, list) or not addresses:
            raise ConfigError(f"TF_CONFIG cluster {job!r} must be a non-empty list of host:port")
        if job == CHIEF and len(addresses) > 1:
            raise ConfigError(f"TF_CONFIG cluster lists {len(addresses)} chiefs; at most one")
        for index, address in enumerate(addresses):
            _check_address(address, f"{job}:{index}")
            if address in seen:
                raise ConfigError(
                    f"TF_CONFIG cluster lists {address} twice ({seen[address]} and "
                    f"{job}:{index}); every task needs its own host:port"
                )
            seen[address] = f"{job}:{index}"
        jobs[job] = list(addresses)
    return jobs


def _check_address(address: Any, task: str) -> None:
    if not isinstance(address, str):
        raise ConfigError(f"TF_CONFIG {task} address {address!r} is not a 'host:port' string")
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"TF_CONFIG {task} address {address!r} is not host:port")


def _parse_task(task: Any, jobs: Mapping[str, list[str]]) -> tuple[str, int]:
    if not isinstance(task, dict) or "type" not in task or "index" not in task:
        raise ConfigError(
            "TF_CONFIG has no 'task' with 'type' and 'index' "
            '(e.g. "task": {"type": "worker", "index": 0})'
        )
    task_type, index = task["type"], task["index"]
    if task_type not in jobs:
        raise ConfigError(
            f"TF_CONFIG task type {task_type!r} is not in the cluster (jobs: {', '.join(jobs)})"
        )
    if isinstance(index, bool) or not isinstance(index, int):
        raise ConfigError(f"TF_CONFIG task index {index!r} is not an integer")
    if not 0 <= index < len(jobs[task_type]):
        raise ConfigError(
            f"TF_CONFIG task index {index} is out of range: the cluster has "
            f"{len(jobs[task_type])} {task_type} task(s), indices 0 to "
            f"{len(jobs[task_type]) - 1}"
        )
    return task_type, index


def cluster_from_env(environ: Mapping[str, str] | None = None) -> Cluster:
    """The checked cluster of this process's ``TF_CONFIG``."""
    return parse_tf_config((os.environ if environ is None else environ).get("TF_CONFIG"))


@contextmanager
def scratch_dir(path: Path, *, writer: bool, prefix: str = "bonexr-worker-") -> Iterator[Path]:
    """Where a task puts what it writes for ``path``.

    The writer (the chief, or a single process) gets ``path`` itself. Any other task gets a
    fresh temporary folder, removed when the block ends however it ends: a non-chief worker
    must still make every save call the chief makes (TensorFlow's multi-worker guide), but
    nothing it saves is kept.
    """
    if writer:
        yield Path(path)
        return
    scratch = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield scratch
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
