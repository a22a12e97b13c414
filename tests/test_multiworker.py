"""``--strategy multiworker``: TF_CONFIG is checked before anything runs, only the chief
writes, and two real workers on this machine train one bundle matching a single process.

The slow test starts two ``bonexr train`` processes (CPU only, loopback ports) on the same
run folder and bundle path, as a user would on a shared filesystem, and a single-process
run with the same seed and global batch to compare with.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from bonexr.errors import ConfigError
from training.cluster import parse_tf_config, scratch_dir
from training.config import TrainConfig

TWO_WORKERS = {"worker": ["localhost:2222", "localhost:2223"]}


def tf_config(cluster: dict, task_type: str = "worker", index: object = 0) -> str:
    return json.dumps({"cluster": cluster, "task": {"type": task_type, "index": index}})


# --- TF_CONFIG ---------------------------------------------------------------------------


def test_worker_zero_is_the_chief_when_there_is_no_chief_job() -> None:
    first = parse_tf_config(tf_config(TWO_WORKERS, "worker", 0))
    second = parse_tf_config(tf_config(TWO_WORKERS, "worker", 1))
    assert first.is_chief and not second.is_chief
    assert first.num_workers == second.num_workers == 2
    assert second.address == "localhost:2223" and second.task == "worker:1"


def test_a_chief_job_is_the_chief() -> None:
    cluster = {"chief": ["host0:2222"], "worker": ["host1:2222", "host2:2222"]}
    chief = parse_tf_config(tf_config(cluster, "chief", 0))
    worker = parse_tf_config(tf_config(cluster, "worker", 0))
    assert chief.is_chief and not worker.is_chief
    assert chief.num_workers == 3
    assert chief.tasks() == ["chief:0", "worker:0", "worker:1"]


NO_TASK = json.dumps({"cluster": TWO_WORKERS})


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (None, "needs the TF_CONFIG environment variable"),
        ("  ", "needs the TF_CONFIG environment variable"),
        ("{not json", "TF_CONFIG is not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        (json.dumps({"task": {"type": "worker", "index": 0}}), "TF_CONFIG has no 'cluster'"),
        (tf_config({}), "TF_CONFIG has no 'cluster'"),
        (NO_TASK, "TF_CONFIG has no 'task'"),
        (json.dumps({"cluster": TWO_WORKERS, "task": {"type": "worker"}}), "has no 'task'"),
        (tf_config(TWO_WORKERS, "worker", 2), "task index 2 is out of range"),
        (tf_config(TWO_WORKERS, "worker", -1), "task index -1 is out of range"),
        (tf_config(TWO_WORKERS, "worker", "1"), "task index '1' is not an integer"),
        (tf_config(TWO_WORKERS, "worker", True), "task index True is not an integer"),
        (tf_config(TWO_WORKERS, "chief", 0), "task type 'chief' is not in the cluster"),
        (tf_config(TWO_WORKERS, "evaluator", 0), "task type 'evaluator' is not in the cluster"),
        (tf_config({"worker": ["h:1", "h:1"]}), "lists h:1 twice (worker:0 and worker:1)"),
        (tf_config({"chief": ["h:1"], "worker": ["h:1"]}, "chief"), "lists h:1 twice"),
        (tf_config({"chief": ["a:1", "b:1"], "worker": ["c:1"]}, "chief"), "2 chiefs"),
        (tf_config({"worker": ["h:1"], "ps": ["p:1"]}), "job(s) 'ps'"),
        (tf_config({"worker": []}), "must be a non-empty list"),
        (tf_config({"worker": "h:1"}), "must be a non-empty list"),
        (tf_config({"worker": ["no-port"]}), "'no-port' is not host:port"),
        (tf_config({"worker": ["h:99999"]}), "'h:99999' is not host:port"),
        (tf_config({"worker": [2222]}), "2222 is not a 'host:port' string"),
    ],
)
def test_a_bad_tf_config_is_one_clear_config_error(raw: str | None, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)) as raised:
        parse_tf_config(raw)
    assert "\n" not in str(raised.value)


def test_the_cli_refuses_a_bad_tf_config_in_one_line_before_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from bonexr.cli import main

    monkeypatch.setenv("TF_CONFIG", tf_config(TWO_WORKERS, "worker", 5))
    run_dir, out = tmp_path / "run", tmp_path / "bundle"
    for command in ("train", "demo"):
        args = [command, "--strategy", "multiworker", "--run-dir", str(run_dir)]
        args += ["--out", str(out)] + ([str(tmp_path / "data")] if command == "train" else [])
        assert main(args) == 2
        lines = capsys.readouterr().err.splitlines()
        assert lines == [
            "error: TF_CONFIG task index 5 is out of range: the cluster has 2 worker task(s), "
            "indices 0 to 1"
        ]
    assert not run_dir.exists() and not out.exists()


def test_the_whole_stderr_of_a_refused_tf_config_is_one_line(tmp_path: Path) -> None:
    """In a real process, so nothing else (TensorFlow's start-up logs) reaches stderr."""
    env = {**os.environ, "TF_CONFIG": '{"cluster": {"worker": ["a:1"]}, "task": '}
    done = subprocess.run(
        [sys.executable, "-m", "bonexr.cli", "train", str(tmp_path), "--strategy", "multiworker"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert done.returncode == 2
    assert len(done.stderr.splitlines()) == 1
    assert done.stderr.startswith("error: TF_CONFIG is not valid JSON")
    assert list(tmp_path.iterdir()) == []


def test_cross_validation_refuses_multiworker(tmp_path: Path) -> None:
    from training.crossval import cross_validate

    config = TrainConfig(strategy="multiworker", weights="none")
    with pytest.raises(ConfigError, match="bonexr cv runs on one machine"):
        cross_validate(tmp_path / "data", config, folds=3, run_dir=tmp_path / "cv")
    assert not (tmp_path / "cv").exists()


# --- who writes ----------------------------------------------------------------------------


def test_the_writer_writes_in_place_and_others_into_a_removed_temporary_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scratch_root = tmp_path / "tmp"
    scratch_root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch_root))
    target = tmp_path / "run" / "router"
    with scratch_dir(target, writer=True) as out:
        assert out == target
    assert list(scratch_root.iterdir()) == []
    with scratch_dir(target, writer=False) as out:
        assert out.parent == scratch_root and out.name.startswith("bonexr-worker-")
        (out / "best.keras").write_text("x")
    assert not out.exists()
    with pytest.raises(RuntimeError), scratch_dir(target, writer=False) as out:
        raise RuntimeError("a failed save")
    assert not out.exists()
    assert not (tmp_path / "run").exists()  # a scratch folder never creates the target


def _distribution(index: int | None, replicas: int = 1):  # -> Distribution
    from training.distribute import Distribution

    cluster = None if index is None else parse_tf_config(tf_config(TWO_WORKERS, "worker", index))
    strategy = SimpleNamespace(num_replicas_in_sync=replicas)
    return Distribution("multiworker" if cluster else "default", strategy, cluster)  # type: ignore[arg-type]


def test_write_dir_and_batch_follow_the_role(tmp_path: Path) -> None:
    chief, worker, alone = _distribution(0, 2), _distribution(1, 2), _distribution(None)
    assert chief.is_chief and not worker.is_chief and alone.is_chief
    target = tmp_path / "run" / "elbow"
    with chief.write_dir(target) as out:
        assert out == target
    with worker.write_dir(target) as out:
        assert out != target and out.is_dir()
    assert not out.exists() and not target.exists()
    assert chief.global_batch(8) == 16 and alone.global_batch(8) == 8
    assert worker.record(8) == {"replicas": 2, "workers": 2, "global_batch_size": 16}


def _row(ok: bool, fingerprint: str) -> np.ndarray:
    import hashlib

    code = bytes([int(ok)]) + hashlib.sha256(fingerprint.encode()).digest()
    return np.frombuffer(code, dtype=np.uint8).astype(np.float32)


def test_a_step_stops_every_worker_when_one_fails_or_they_disagree(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The agreement logic, with the all-gather replaced by what the chief would send."""
    import training.distribute as distribute

    worker = _distribution(1, 2)
    chief_sends = {"row": _row(True, "split A")}
    monkeypatch.setattr(
        distribute, "_all_gather_rows", lambda strategy, mine: np.stack([chief_sends["row"], mine])
    )
    assert worker.step("reading", lambda: "split A", fingerprint=str) == "split A"
    with pytest.raises(
        ConfigError, match=r"the workers disagree \(worker:1 differs from worker:0\); hint"
    ):
        worker.step("reading", lambda: "split B", fingerprint=str, hint="hint")
    chief_sends["row"] = _row(False, "")
    with pytest.raises(ConfigError, match="preparing: stopped because worker:0 failed"):
        worker.step("preparing", lambda: None, chief_only=True)
    chief_sends["row"] = _row(True, "")
    with pytest.raises(FileNotFoundError):  # its own error, not a generic one
        worker.step("reading", lambda: Path("/nonexistent/split.csv").read_text())
    assert worker.step("preparing", lambda: 1 / 0, chief_only=True) is None  # not run here


def test_alone_a_step_is_a_plain_call() -> None:
    alone = _distribution(None)
    assert alone.step("x", lambda: 3, chief_only=True, fingerprint=str) == 3
    with pytest.raises(ZeroDivisionError):
        alone.step("x", lambda: 1 / 0)


def test_resume_on_another_number_of_replicas_is_refused(tmp_path: Path) -> None:
    from training.run import prepare_run

    config = TrainConfig(weights="none", batch_size=8)
    run_dir = tmp_path / "run"
    prepare_run(run_dir, config, resume=False, distribution=_distribution(0, 2))
    saved = json.loads((run_dir / "config.json").read_text())
    assert (saved["replicas"], saved["workers"], saved["global_batch_size"]) == (2, 2, 16)
    assert TrainConfig.from_dict(saved) == config  # the extra keys do not disturb loading
    with pytest.raises(
        ConfigError, match=r"on 1 replica\(s\): it was started on 2 \(global batch 16\)"
    ):
        prepare_run(run_dir, config, resume=True, distribution=_distribution(None))
    prepare_run(run_dir, config, resume=True, distribution=_distribution(0, 2))


def test_the_input_pipeline_shards_by_data() -> None:
    import tensorflow as tf

    from training.pipeline import BadImageLog, make_dataset

    frame = pd.DataFrame({"path": ["a.png", "b.png", "c.png"]})
    for training in (True, False):
        ds = make_dataset(
            frame,
            targets=np.zeros(3),
            size=32,
            batch_size=2,
            training=training,
            bad_images=BadImageLog(),
        )
        policy = ds.options().experimental_distribute.auto_shard_policy
        assert policy == tf.data.experimental.AutoShardPolicy.DATA


def test_a_last_batch_smaller_than_the_replicas_is_skipped(tmp_path: Path) -> None:
    """Else a replica would get an empty batch (NaN BatchNormalization statistics; TF's
    oneDNN CPU convolution returns a wrongly shaped result on zero images)."""
    from PIL import Image

    from training.pipeline import BadImageLog, make_dataset

    paths = []
    for i in range(5):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(np.full((40, 40), 50 * i, np.uint8)).save(paths[-1])
    frame = pd.DataFrame({"path": [str(p) for p in paths]})

    def sizes(min_batch: int) -> list[int]:
        ds = make_dataset(
            frame,
            targets=np.arange(5, dtype=np.float32),
            size=32,
            batch_size=2,
            training=False,
            bad_images=BadImageLog(),
            min_batch=min_batch,
        )
        return [int(images.shape[0]) for images, _ in ds]

    assert sizes(1) == [2, 2, 1]  # one process: every image
    assert sizes(2) == [2, 2]  # two replicas: the 1-image batch would leave one empty


BATCH_NORM_SYNC = """
import numpy as np, tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
from training.distribute import SyncBatchNormStatistics
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
with strategy.scope():
    inner = keras.Sequential([keras.Input((4,)), keras.layers.BatchNormalization(momentum=0.5)])
    model = keras.Sequential([keras.Input((4,)), inner, keras.layers.Dense(1)])
images = strategy.experimental_distribute_values_from_function(  # other images per replica
    lambda ctx: tf.fill((8, 4), 10.0 * ctx.replica_id_in_sync_group))
tf.function(lambda x: strategy.run(lambda v: model(v, training=True), args=(x,)))(images)
copies = lambda: [c.numpy() for c in inner.layers[0].moving_mean.value.values]
before = copies()
assert not np.allclose(before[0], before[1]), before  # one drifting copy per replica
sync = SyncBatchNormStatistics(strategy)
sync.set_model(model)
sync.on_test_begin()
after = copies()
np.testing.assert_allclose(after[0], after[1])
np.testing.assert_allclose(after[0], (before[0] + before[1]) / 2, rtol=1e-6)
"""


def test_batch_norm_moving_statistics_are_averaged_over_replicas(tmp_path: Path) -> None:
    """Two replicas on two logical CPUs (a fresh process: TensorFlow must not be started)."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run(
        [sys.executable, "-c", BATCH_NORM_SYNC],
        capture_output=True,
        text=True,
        env=env,
        cwd=Path(__file__).resolve().parents[1],
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]


def _files(root: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_a_worker_resumes_from_the_chiefs_backup_and_writes_only_its_own(tmp_path: Path) -> None:
    """Resume for the group: a non-chief worker restores the chief's backup (same weights,
    same epoch) and backs up into its own folder; the chief's is left untouched."""
    import keras

    from training.train import _RestoreFrom

    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 4)).astype("float32")
    y = x[:, :1] * 2.0

    def model() -> keras.Model:
        built = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
        built.compile(keras.optimizers.SGD(0.01), "mse")
        return built

    class StopAfterSecondEpoch(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            if epoch == 1:
                raise KeyboardInterrupt

    class RecordStart(keras.callbacks.Callback):
        def on_train_begin(self, logs: dict | None = None) -> None:
            self.weights = [w.copy() for w in self.model.get_weights()]

        def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
            self.__dict__.setdefault("first_epoch", epoch)

    chief_backup = tmp_path / "chief" / "router" / "backup_finetune"
    chief = model()
    with pytest.raises(KeyboardInterrupt):
        chief.fit(
            x,
            y,
            epochs=5,
            verbose=0,
            callbacks=[keras.callbacks.BackupAndRestore(str(chief_backup)), StopAfterSecondEpoch()],
        )
    chief_state = _files(tmp_path / "chief")
    worker_backup = tmp_path / "scratch" / "backup_finetune"
    record = RecordStart()
    model().fit(
        x,
        y,
        epochs=4,
        verbose=0,
        callbacks=[_RestoreFrom(str(worker_backup), str(chief_backup)), record],
    )
    assert record.first_epoch == 2
    for restored, interrupted in zip(record.weights, chief.get_weights(), strict=True):
        np.testing.assert_array_equal(restored, interrupted)
    assert _files(tmp_path / "chief") == chief_state
    assert not worker_backup.exists()  # its own backup, removed when training finished


# --- two real workers ----------------------------------------------------------------------


#: Runs ``bonexr`` (arguments after the log path) with a Python audit hook that appends every
#: file-system write it sees (opened for writing, created, renamed, removed, chmod-ed) to the
#: log file. It catches what Python writes; files opened by C libraries (h5py) are not
#: audited, but the folders Keras creates for them and every other file the run writes are.
AUDITED_BONEXR = r"""
import os, sys
_log = open(sys.argv.pop(1), "a", buffering=1)
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
_PATH_ARG = {"os.mkdir": 0, "os.remove": 0, "os.rmdir": 0, "shutil.rmtree": 0,
             "os.chmod": 0, "os.truncate": 0, "os.utime": 0, "os.symlink": 1,
             "os.link": 1, "shutil.copyfile": 1}
def _hook(event, args):
    if event == "open":
        path, mode, flags = args
        writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
            isinstance(flags, int) and flags & _WRITE_FLAGS)
        paths = [path] if writing else []
    elif event == "os.rename":
        paths = list(args[:2])
    elif event in _PATH_ARG:
        paths = [args[_PATH_ARG[event]]]
    else:
        return
    for path in paths:
        if isinstance(path, (str, bytes, os.PathLike)):
            _log.write(event + "\t" + os.path.abspath(os.fsdecode(path)) + "\n")
sys.addaudithook(_hook)
from bonexr.cli import main
sys.exit(main(sys.argv[1:]))
"""

#: The recipe both runs share: router (elbow vs hand) + one abnormality model (elbow), tiny
#: backbone, 64 px. 10 epochs, early stopping off (patience 10), so both runs train the same
#: number of epochs; the router reaches 100% validation accuracy by epoch 5 or so.
RECIPE = [
    "--name", "mw", "--synthetic", "--parts", "elbow", "--router-parts", "elbow,hand",
    "--backbone", "tiny", "--router-backbone", "tiny", "--weights", "none", "--size", "64",
    "--epochs", "10", "--lr", "0.003", "--patience", "10", "--seed", "1",
]  # fmt: skip
PER_REPLICA_BATCH = 8
GLOBAL_BATCH = 2 * PER_REPLICA_BATCH

#: How close two workers come to one process (same seed, same global batch of 16).
#: Both runs start from the same weights and see exactly the same global batches in the
#: same order (DATA sharding of the same seeded pipeline; with the BatchNormalization-free
#: model of the probe in the report they agree to 1e-6). What differs is BatchNormalization:
#: Keras' default, unsynchronised BN normalises each replica's 8 images with their own
#: statistics instead of all 16 (the moving statistics are averaged before each
#: validation), so the runs drift apart a little more each step.
#: - the router learns its easy task completely in both: accuracies within one image in 20;
#:   its first-epoch training loss (the least drift) within 5%;
#: - the elbow model learns from 61 images and picks its best epoch on 16 validation images
#:   (best validation AUROC within 0.1); its test AUROC rests on 8 images, 2 abnormal x 6
#:   normal = 12 pairs, 1/12 each, so it is allowed 4 pairs (1/3).
ROUTER_TOLERANCE = 0.05
FIRST_EPOCH_LOSS_TOLERANCE = 0.05  # relative
PART_VALIDATION_AUROC_TOLERANCE = 0.1
PART_TEST_AUROC_TOLERANCE = 4 / 12


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _run_all(commands: list[tuple[list[str], dict[str, str]]], cwd: Path, timeout: float) -> list:
    """Start every command at once; wait for all; kill the rest if one hangs."""
    procs = [
        subprocess.Popen(
            argv, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for argv, env in commands
    ]
    deadline = time.monotonic() + timeout
    outputs = []
    try:
        for proc in procs:
            out, _ = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
            outputs.append(SimpleNamespace(returncode=proc.returncode, output=out))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    return outputs


def _worker_env(tmp: Path, cluster: dict | None, index: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update(CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="2", TMPDIR=str(tmp))
    env.pop("TF_CONFIG", None)
    if cluster is not None:
        env["TF_CONFIG"] = tf_config(cluster, "worker", index)
        # two processes on a 2-core machine: one thread pool thread each
        env.update(TF_NUM_INTRAOP_THREADS="1", TF_NUM_INTEROP_THREADS="1", OMP_NUM_THREADS="1")
    tmp.mkdir(parents=True, exist_ok=True)
    return env


def _metrics(run_dir: Path, bundle: Path) -> dict[str, float]:
    manifest = json.loads((bundle / "manifest.json").read_text())
    done = {m: json.loads((run_dir / m / "done.json").read_text()) for m in ("router", "elbow")}
    router_history = pd.read_csv(run_dir / "router" / "history.csv")
    return {
        "router first-epoch training loss": float(router_history["loss"].iloc[0]),
        "router validation accuracy (best)": done["router"]["best_value"],
        "router test accuracy": manifest["metrics"]["router_accuracy"],
        "elbow validation AUROC (best)": done["elbow"]["best_value"],
        "elbow test image AUROC": manifest["metrics"]["image_auroc"]["Elbow"],
    }


@pytest.mark.slow
def test_two_workers_train_one_bundle_like_a_single_process(tmp_path: Path) -> None:
    from bonexr.bundle import verify_bundle
    from training.synthetic import generate_synthetic_mura

    data = tmp_path / "MURA-v1.1"
    generate_synthetic_mura(
        data, patients_per_part=24, body_parts=("ELBOW", "HAND"), seed=3, progress=False
    )

    def train(audit: str, run: Path, *extra: str) -> list[str]:
        folders = ["--run-dir", str(run / "run"), "--out", str(run / "bundle")]
        audited = [sys.executable, "-c", AUDITED_BONEXR, str(tmp_path / audit)]
        return [*audited, "train", str(data), *RECIPE, *folders, *extra]

    # one process, the same global batch
    single = tmp_path / "single"
    command = train("single.audit", single, "--batch-size", str(GLOBAL_BATCH))
    started = time.monotonic()
    (one,) = _run_all([(command, _worker_env(tmp_path / "tmp-single", None, 0))], tmp_path, 600)
    single_seconds = time.monotonic() - started
    assert one.returncode == 0, one.output[-3000:]

    # two workers, the same run folder and bundle path, as on a shared filesystem
    shared = tmp_path / "shared"
    run_dir, bundle = shared / "run", shared / "bundle"
    cluster = {"worker": [f"localhost:{port}" for port in _free_ports(2)]}
    multi = ["--batch-size", str(PER_REPLICA_BATCH), "--strategy", "multiworker"]
    commands = [
        (train(f"worker{i}.audit", shared, *multi), _worker_env(tmp_path / f"tmp-{i}", cluster, i))
        for i in (0, 1)
    ]
    started = time.monotonic()
    chief, worker = _run_all(commands, tmp_path, timeout=900)
    two_seconds = time.monotonic() - started
    assert chief.returncode == 0, chief.output[-4000:]
    assert worker.returncode == 0, worker.output[-4000:]
    assert "worker:1: training done; the chief evaluates and exports" in worker.output
    assert f"written to {bundle}" in chief.output and "bundle mw version" not in worker.output
    # the worker left before the export without the chief reporting it lost or down
    for sign in ("UNAVAILABLE", "check alive failed", "seems down"):
        assert sign not in chief.output, chief.output[-4000:]

    # exactly one bundle, verified; the run's distribution recorded
    assert sorted(p.name for p in shared.iterdir()) == ["bundle", "run"]
    manifest = verify_bundle(bundle)
    training = manifest.training
    assert (training["batch_size"], training["global_batch_size"]) == (8, 16)
    assert (training["replicas"], training["workers"]) == (2, 2)
    assert verify_bundle(single / "bundle").training["global_batch_size"] == GLOBAL_BATCH
    config = json.loads((run_dir / "config.json").read_text())
    assert (config["replicas"], config["global_batch_size"]) == (2, GLOBAL_BATCH)

    # the run folder holds each file once: no worker copies, no leftover backups
    assert sorted(p.name for p in run_dir.iterdir()) == [
        "config.json", "elbow", "report", "router", "split.csv"
    ]  # fmt: skip
    for model in ("router", "elbow"):
        files = sorted(p.name for p in (run_dir / model).iterdir())
        assert files == ["best.keras", "done.json", "finetune.done", "history.csv"], files
        history = pd.read_csv(run_dir / model / "history.csv")
        assert history["epoch"].tolist() == list(range(10))  # one writer: no doubled rows
        assert json.loads((run_dir / model / "done.json").read_text())["replicas"] == 2
    pd.testing.assert_frame_equal(
        pd.read_csv(run_dir / "split.csv"), pd.read_csv(single / "run" / "split.csv")
    )

    # the non-chief worker wrote nothing in the run folder or the bundle, only in its
    # temporary folders (each save call the chief made), and removed those
    def writes(name: str) -> list[str]:
        return (tmp_path / name).read_text().splitlines()

    def under(lines: list[str], folder: Path) -> list[str]:
        root = str(folder.resolve())
        return [line for line in lines if line.split("\t")[1].startswith(root)]

    worker_tmp = (tmp_path / "tmp-1").resolve()
    assert under(writes("worker1.audit"), shared) == []
    scratch = [
        line for line in under(writes("worker1.audit"), worker_tmp) if "bonexr-worker-" in line
    ]
    assert any(line.endswith("best.keras") for line in scratch), scratch[:20]
    assert not list(worker_tmp.glob("bonexr-worker-*"))
    assert under(writes("worker0.audit"), run_dir) and under(writes("worker0.audit"), bundle)

    # the same training, up to BatchNormalization statistics and summation order
    two = _metrics(run_dir, bundle)
    alone = _metrics(single / "run", single / "bundle")
    print(
        f"\nwall time: two workers {two_seconds:.1f} s, single process {single_seconds:.1f} s "
        f"(global batch {GLOBAL_BATCH}; two workers = {PER_REPLICA_BATCH} per replica x 2)"
    )
    for name in two:
        print(f"{name}: two workers {two[name]:.4f}, single process {alone[name]:.4f}")
    assert alone["router validation accuracy (best)"] >= 0.95
    for name in ("router validation accuracy (best)", "router test accuracy"):
        assert abs(two[name] - alone[name]) <= ROUTER_TOLERANCE, name
    loss = "router first-epoch training loss"
    assert abs(two[loss] - alone[loss]) <= FIRST_EPOCH_LOSS_TOLERANCE * alone[loss]
    name = "elbow validation AUROC (best)"
    assert abs(two[name] - alone[name]) <= PART_VALIDATION_AUROC_TOLERANCE
    name = "elbow test image AUROC"
    assert abs(two[name] - alone[name]) <= PART_TEST_AUROC_TOLERANCE + 1e-9
