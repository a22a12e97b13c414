"""The ``tf.distribute`` strategy of a run, the chief's role, and the tasks' agreement.

One :class:`Distribution` per process (:func:`get_distribution`): ``default`` (one device),
``mirrored`` (every local GPU) or ``multiworker`` (``MultiWorkerMirroredStrategy`` over the
hosts in ``TF_CONFIG``, the Keras ``model.fit`` recipe of TensorFlow's multi-worker guide).

Multi-worker rules, kept by the callers in :mod:`training.run` and :mod:`training.train`:

- **One writer.** The chief (:mod:`training.cluster`) writes the run folder and the bundle;
  the other tasks train in lock-step and save into temporary folders.
- **Global batch.** ``--batch-size`` is per replica; the input pipeline is batched with
  ``batch_size x num_replicas_in_sync`` (:meth:`Distribution.global_batch`) and tf.distribute
  hands each replica its slice.
- **Agreement before collective work.** Every task reaches the same :meth:`Distribution.step`
  calls in the same order; each step gathers every task's outcome, so a task that fails
  (a refused config, missing data) stops the whole cluster with a clear error instead of
  leaving the others blocked in an all-reduce; and it compares a fingerprint (config, split,
  resume state), so tasks that would train on different data or from different checkpoints
  are refused instead of silently diverging.

Keras 3 (3.15 here, and its main branch when this was written) cannot ``fit`` under a
multi-worker ``MultiWorkerMirroredStrategy`` at all (keras-team/keras#20585,
tensorflow/tensorflow#72388); :func:`_fix_keras_multi_worker` says why and what it changes.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import keras
import numpy as np
import tensorflow as tf

from bonexr.errors import ConfigError
from training.cluster import Cluster, cluster_from_env, scratch_dir
from training.config import STRATEGIES, check_choice

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Set by the chief in the coordination service when the run's last step ended.
_FINISHED_KEY = "bonexr/run-finished"


@dataclass
class Distribution:
    """A strategy plus this process's role in it."""

    name: str
    strategy: tf.distribute.Strategy
    #: The multi-worker cluster; None when this process trains alone.
    cluster: Cluster | None = None

    @property
    def is_chief(self) -> bool:
        """Whether this process writes (always, outside a multi-worker cluster)."""
        return self.cluster is None or self.cluster.is_chief

    @property
    def replicas(self) -> int:
        """Replicas in sync over all workers (devices x workers)."""
        return int(self.strategy.num_replicas_in_sync)

    @property
    def workers(self) -> int:
        return 1 if self.cluster is None else self.cluster.num_workers

    @property
    def task(self) -> str:
        return "chief" if self.cluster is None else self.cluster.task

    def global_batch(self, per_replica: int) -> int:
        """Images per training step over all replicas: ``--batch-size`` x replicas."""
        return per_replica * self.replicas

    def record(self, per_replica: int) -> dict[str, int]:
        """What a run records about its distribution (config.json, manifest ``training``)."""
        return {
            "replicas": self.replicas,
            "workers": self.workers,
            "global_batch_size": self.global_batch(per_replica),
        }

    @contextmanager
    def write_dir(self, path: Path) -> Iterator[Path]:
        """``path`` on the chief; a temporary folder, removed afterwards, on other workers."""
        with scratch_dir(path, writer=self.is_chief) as target:
            yield target

    def step(
        self,
        label: str,
        work: Callable[[], T],
        *,
        chief_only: bool = False,
        fingerprint: Callable[[T], str] | None = None,
        hint: str = "",
    ) -> T | None:
        """Run ``work`` (on the chief only, with ``chief_only``), then agree on the outcome.

        Every task of the cluster must call the same steps in the same order. Returns what
        ``work`` returned (None where it did not run). If ``work`` failed on any task, every
        task raises: the failing ones their own error, the others a :class:`ConfigError`
        naming the failed tasks. If ``fingerprint`` is given, tasks whose fingerprints of
        the result differ raise a :class:`ConfigError` too, ending with ``hint``.
        """
        result: T | None = None
        error: Exception | None = None
        if self.is_chief or not chief_only:
            try:
                result = work()
            except Exception as exc:  # any failure must reach the other tasks, not hang them
                error = exc
        if self.cluster is None or self.cluster.num_workers == 1:
            if error is not None:
                raise error
            return result
        digest = ""
        if error is None and fingerprint is not None and result is not None:
            digest = fingerprint(result)
        failed, disagree = self._agree(error is None, digest)
        if error is not None:
            raise error
        if failed:
            raise ConfigError(
                f"{label}: stopped because {', '.join(failed)} failed (see that task's log)"
            )
        if disagree:
            raise ConfigError(
                f"{label}: the workers disagree ({disagree})" + (f"; {hint}" if hint else "")
            )
        return result

    def finish(self, label: str, work: Callable[[], T]) -> T | None:
        """The run's last step: ``work`` on the chief alone (evaluation and export), the
        other tasks waiting for its outcome without any collective, then all leave.

        Keeping the others in an all-gather while the chief evaluated and exported (minutes,
        on busy cores) made the run hang on one long collective: under load a worker's
        pending receive failed ("Socket closed") after training had succeeded. And a worker
        that simply left was reported by the coordination service as crashed ("stopped
        sending heartbeats") in the chief's log. So: every task agrees that training is
        done (one quick all-gather), the peer health checks stop, and the others wait on
        the coordination service's key-value store -- heartbeats keep flowing -- until the
        chief publishes ``ok`` or ``failed``. Returns what ``work`` returned on the chief,
        None elsewhere; a worker raises :class:`ConfigError` when the chief failed.
        """
        if self.cluster is None or self.cluster.num_workers == 1:
            return work()
        self.step(f"{label}: agreeing that training is done", lambda: None)
        stop = getattr(self.strategy.extended, "_stop_check_health_thread", None)
        if callable(stop):  # MultiWorkerMirroredStrategy's peer health checks
            stop()
        from tensorflow.python.eager import context

        if self.is_chief:
            outcome = "failed"
            try:
                result = work()
                outcome = "ok"
                return result
            finally:
                context.context().set_config_key_value(_FINISHED_KEY, outcome)
        if context.context().get_config_key_value(_FINISHED_KEY) != "ok":
            raise ConfigError(f"{label}: stopped because {self.cluster.tasks()[0]} failed")
        return None

    def _agree(self, ok: bool, digest: str) -> tuple[list[str], str]:
        """Gather (ok, sha256 of ``digest``) from every task: the failed tasks, and a
        description of the disagreement ("" when all fingerprints match)."""
        assert self.cluster is not None
        code = hashlib.sha256(digest.encode()).digest()
        row = np.frombuffer(bytes([int(ok)]) + code, dtype=np.uint8).astype(np.float32)
        rows = _all_gather_rows(self.strategy, row)
        per_worker = max(1, rows.shape[0] // self.cluster.num_workers)
        tasks = self.cluster.tasks()
        by_task = {tasks[i // per_worker]: rows[i] for i in range(rows.shape[0])}
        failed = [task for task, r in by_task.items() if r[0] != 1.0]
        fingerprints = {task: r[1:].tobytes() for task, r in by_task.items() if r[0] == 1.0}
        mine = fingerprints.get(self.task, row[1:].tobytes())
        differing = [task for task, f in fingerprints.items() if f != mine]
        disagree = f"{self.task} differs from {', '.join(differing)}" if differing else ""
        return failed, disagree


class SyncBatchNormStatistics(keras.callbacks.Callback):
    """Average the BatchNormalization moving statistics over the replicas before each
    validation (so also before the epoch's checkpoints).

    Keras 3 creates ``moving_mean`` and ``moving_variance`` with aggregation NONE, so under
    a distribution strategy each replica updates its own copy from its own images: the
    copies drift apart, and the chief would validate and save statistics estimated from its
    share of the data only. Averaging them (one all-reduce per epoch, the same call on
    every replica) keeps one set, estimated from every replica's batches, as a single
    process would. Batch statistics during a training step stay per replica (Keras' default,
    unsynchronised BatchNormalization).
    """

    def __init__(self, strategy: tf.distribute.Strategy) -> None:
        super().__init__()
        self._strategy = strategy
        self._sync: Callable[[], Any] | None = None

    def _statistics(self) -> list[Any]:
        found: list[Any] = []

        def visit(layer: Any) -> None:
            if isinstance(layer, keras.layers.BatchNormalization):
                found.extend([layer.moving_mean.value, layer.moving_variance.value])
            for inner in getattr(layer, "layers", None) or []:  # nested models (backbones)
                visit(inner)

        visit(self.model)
        return found

    def on_test_begin(self, logs: dict | None = None) -> None:
        if self._sync is None:
            self._sync = self._make_sync(self._statistics())
        self._sync()

    def _make_sync(self, variables: list[Any]) -> Callable[[], Any]:
        if not variables:
            return lambda: None
        strategy = self._strategy

        @tf.function
        def sync() -> None:
            def replica_fn() -> None:
                context = tf.distribute.get_replica_context()
                means = context.all_reduce(
                    tf.distribute.ReduceOp.MEAN, [v.read_value() for v in variables]
                )
                for variable, mean in zip(variables, means, strict=True):
                    variable.assign(mean)

            strategy.run(replica_fn)

        return sync


def _all_gather_rows(strategy: tf.distribute.Strategy, row: np.ndarray) -> np.ndarray:
    """Every replica's copy of ``row`` (float32, 1-D), in replica order: one collective."""
    value = tf.constant(row[None, :])

    @tf.function
    def gather() -> Any:
        def replica_fn() -> tf.Tensor:
            context = tf.distribute.get_replica_context()
            return context.all_gather(tf.identity(value), axis=0)

        return strategy.run(replica_fn)

    gathered = strategy.experimental_local_results(gather())[0]
    return np.asarray(gathered)


def fingerprint_of(*parts: object) -> str:
    """A stable text of ``parts`` for :meth:`Distribution.step` (repr of each, joined)."""
    return "\n".join(repr(p) for p in parts)


_DISTRIBUTIONS: dict[str, Distribution] = {}


def get_distribution(name: str) -> Distribution:
    """This process's distribution for strategy ``name``, created once and reused.

    ``multiworker`` checks ``TF_CONFIG`` first (:class:`ConfigError`), then creates the
    ``MultiWorkerMirroredStrategy``, which waits until every task of the cluster has
    started. It must be created before any other TensorFlow operation runs in the process
    (TensorFlow configures its collective ops at start-up), so :func:`training.run.run_training`
    creates it first.
    """
    check_choice("strategy", name, STRATEGIES)
    if name in _DISTRIBUTIONS:
        return _DISTRIBUTIONS[name]
    if name == "multiworker":
        cluster = cluster_from_env()
        _fix_keras_multi_worker()
        try:
            strategy: tf.distribute.Strategy = tf.distribute.MultiWorkerMirroredStrategy()
        except RuntimeError as exc:
            if "program startup" not in str(exc):
                raise
            raise ConfigError(
                "--strategy multiworker must be set up before TensorFlow runs anything else "
                "in this process; start it from a fresh process (bonexr train)"
            ) from exc
        distribution = Distribution(name, strategy, cluster)
        log.info(
            "multi-worker: task %s of %s, %d replicas, chief: %s",
            cluster.task,
            ", ".join(cluster.tasks()),
            distribution.replicas,
            cluster.is_chief,
        )
    elif name == "mirrored":
        distribution = Distribution(name, tf.distribute.MirroredStrategy())
    else:
        distribution = Distribution(name, tf.distribute.get_strategy())
    _DISTRIBUTIONS[name] = distribution
    return distribution


def current_task_is_chief(name: str) -> bool:
    """Whether this process writes, for strategy ``name`` (without creating a strategy)."""
    return _DISTRIBUTIONS[name].is_chief if name in _DISTRIBUTIONS else True


def in_multi_worker_cluster() -> bool:
    """Whether this process joined a multi-worker cluster of more than one task."""
    dist = _DISTRIBUTIONS.get("multiworker")
    return dist is not None and dist.workers > 1


def _is_multi_worker(strategy: Any) -> bool:
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and bool(
        strategy.extended._in_multi_worker_mode()
    )


_FIXED = False


def _fix_keras_multi_worker() -> None:
    """Make Keras 3's TensorFlow trainer run ``fit`` under a multi-worker strategy.

    Two places of ``keras/src/backend/tensorflow/trainer.py`` (Keras 3.15, unchanged on its
    main branch when this was written) break as soon as there is more than one worker:

    1. ``TensorFlowTrainer._maybe_symbolic_build`` takes the first batch of the distributed
       dataset and calls ``strategy.reduce("MEAN", batch, axis=None)`` on the whole
       ``(images, targets, weights)`` tuple, only to read its shapes. With one worker the
       reduction is local; with several it becomes a cross-worker all-reduce of a tuple,
       which fails ("Attempt to convert a value (PerReplica...) with an unsupported type")
       -- and would fail differently whenever two workers' first batches differ in size.
       Reading that batch also starts an extra pass over the dataset, which moves a
       reshuffled, re-randomised pipeline one epoch ahead of a single-process run. Fixed:
       in multi-worker mode the build reads the dataset's element spec (the shapes and
       dtypes it needs) instead; no batch is read and no collective runs.
    2. ``reduce_per_replica(..., reduction="auto")`` averages each step's scalar logs with
       ``strategy.reduce("MEAN", value, axis=0)``: "Invalid reduction dimension 0 for input
       with 0 dimensions". Fixed: scalars are averaged with ``axis=None`` (a plain mean
       over replicas), everything else is left to Keras.

    Epoch metrics are unaffected: Keras reads them from the metric variables (synchronised
    on read, summed over every replica), so history, checkpoints and early stopping see the
    same, global values on every worker. Installed once, only when a multi-worker strategy
    is created; does nothing to single-process training.
    """
    global _FIXED
    if _FIXED:
        return
    from keras.src.backend.tensorflow import trainer as tf_trainer

    trainer_cls: Any = tf_trainer.TensorFlowTrainer
    if not hasattr(trainer_cls, "_maybe_symbolic_build") or not callable(
        getattr(tf_trainer, "reduce_per_replica", None)
    ):
        raise ConfigError(
            f"--strategy multiworker needs two fixes to Keras internals that Keras "
            f"{keras.__version__} no longer has; use Keras 3.10 to 3.15"
        )
    original_build = trainer_cls._maybe_symbolic_build
    original_reduce = tf_trainer.reduce_per_replica

    def local(strategy: Any, value: Any) -> Any:
        if isinstance(value, tf.distribute.DistributedValues):
            return strategy.experimental_local_results(value)[0]
        return value

    def _maybe_symbolic_build(self: Any, iterator: Any = None, data_batch: Any = None) -> Any:
        strategy = self._distribute_strategy
        if iterator is not None and strategy is not None and _is_multi_worker(strategy):
            # the input's element spec: its shapes and dtypes, all the build reads
            data_batch = iterator.data_adapter.get_tf_dataset().element_spec
            iterator = None
        return original_build(self, iterator=iterator, data_batch=data_batch)

    def reduce_per_replica(values: Any, strategy: Any, reduction: str) -> Any:
        if reduction not in ("auto", "mean") or not _is_multi_worker(strategy):
            return original_reduce(values, strategy, reduction)

        def mean(value: Any) -> Any:
            if len(local(strategy, value).shape) == 0:
                return strategy.reduce("MEAN", value, axis=None)
            return original_reduce(value, strategy, reduction)

        return keras.tree.map_structure(mean, values)

    trainer_cls._maybe_symbolic_build = _maybe_symbolic_build
    tf_trainer.reduce_per_replica = reduce_per_replica
    _FIXED = True
