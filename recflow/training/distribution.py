"""How the trainer spreads its training over devices and machines (``trainer.distribution``).

* ``auto`` (the default, the behaviour before this setting existed): ``MirroredStrategy`` over the visible GPUs
  when there is one, TensorFlow's default (single-device) strategy otherwise;
* ``default``: the default strategy, whatever the hardware;
* ``mirrored``: ``MirroredStrategy`` over every local GPU (the CPU when there is none): one machine, several GPUs;
* ``multi_worker_mirrored``: ``MultiWorkerMirroredStrategy`` over the workers that ``TF_CONFIG`` lists, the
  environment variable that Kubeflow's Training Operator (TFJob) and Vertex AI custom jobs set on every replica:
  ``{"cluster": {"chief": ["host:port"], "worker": ["host:port", ...]}, "task": {"type": "worker", "index": 0}}``.

In a multi-worker run every worker runs the whole trainer (the same code, the same seeded data, in step: every
collective op needs all of them) and only the **chief** writes the real output -- the ``chief`` task when the
cluster has one, else worker 0, as TensorFlow's multi-worker Keras guide and Keras' own
``distributed_file_utils.write_dirpath`` decide it. The other workers write theirs into a temporary directory
that is deleted when they finish (:func:`output_dir`), since exporting a SavedModel may read variables through
collective ops that need every worker. So the bundle is written once, atomically, by one process.

Everything here that can be checked without TensorFlow is (:func:`parse_tf_config`): a missing or malformed
``TF_CONFIG`` is a :class:`~recflow.errors.ConfigError` naming the variable and what is wrong.
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
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from recflow.errors import ConfigError

TF_CONFIG_VAR = "TF_CONFIG"
#: Task types a MultiWorkerMirroredStrategy cluster may hold (no parameter servers, no side-car evaluator).
WORKER_TASK_TYPES: tuple[str, ...] = ("chief", "worker")


class DistributionConfig(BaseModel):
    """The ``trainer.distribution`` section: which ``tf.distribute`` strategy trains the models."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    strategy: Literal["auto", "default", "mirrored", "multi_worker_mirrored"] = Field(
        "auto", description="auto: MirroredStrategy when a GPU is visible, else the default strategy; default: "
        "one device; mirrored: MirroredStrategy over this machine's GPUs (or its CPU); multi_worker_mirrored: "
        "MultiWorkerMirroredStrategy over the workers of the TF_CONFIG environment variable (set by a Kubeflow "
        "TFJob or a Vertex AI custom job; docs/pipeline.md), where only the chief writes the model.")
    communication: Literal["auto", "ring", "nccl"] = Field(
        "auto", description="Collective implementation of multi_worker_mirrored's all-reduce: ring (gRPC, "
        "CPU or GPU), nccl (GPUs only), auto (TensorFlow picks: NCCL on GPUs).")


@dataclass(frozen=True)
class ClusterTask:
    """This process's place in a multi-worker cluster (from ``TF_CONFIG``)."""

    task_type: str
    index: int
    workers: int  #: every task that trains (chief + workers)
    cluster: dict[str, list[str]]

    @property
    def is_chief(self) -> bool:
        """The task that writes the real output: ``chief``, or worker 0 when the cluster has no chief."""
        if "chief" in self.cluster:
            return self.task_type == "chief"
        return self.task_type == "worker" and self.index == 0


#: A single process (no cluster): it is the chief.
LOCAL_TASK = ClusterTask("worker", 0, 1, {})


def parse_tf_config(value: str | None) -> ClusterTask:
    """This task's place in the cluster described by a ``TF_CONFIG`` value (see the module docstring).

    Raises ConfigError naming ``TF_CONFIG`` and what is wrong: unset or empty, not JSON, no ``cluster`` of
    ``host:port`` lists, a task type other than chief/worker, an index outside its list, more than one chief.
    """
    def bad(reason: str) -> ConfigError:
        return ConfigError(f"{TF_CONFIG_VAR}: {reason}", hint="trainer.distribution.strategy=multi_worker_mirrored "
                           "reads the cluster from TF_CONFIG, e.g. {\"cluster\": {\"worker\": [\"host1:2222\", "
                           "\"host2:2222\"]}, \"task\": {\"type\": \"worker\", \"index\": 0}} (a Kubeflow TFJob or a "
                           "Vertex AI custom job sets it on every replica)")

    if value is None or not value.strip():
        raise bad("the environment variable is not set (or empty)")
    try:
        spec = json.loads(value)
    except json.JSONDecodeError as exc:
        raise bad(f"not valid JSON ({exc.msg} at character {exc.pos})") from None
    if not isinstance(spec, dict):
        raise bad(f"must be a JSON object, not {type(spec).__name__}")
    cluster, task = spec.get("cluster"), spec.get("task")
    if not isinstance(cluster, dict) or not cluster:
        raise bad("no \"cluster\" object naming the tasks' host:port addresses")
    clean = _cluster_lists(cluster, bad)
    if not isinstance(task, dict):
        raise bad("no \"task\" object ({\"type\": ..., \"index\": ...}) saying which task this process is")
    task_type, index = task.get("type"), task.get("index", 0)
    if task_type not in WORKER_TASK_TYPES:
        raise bad(f"task type {task_type!r} cannot train with MultiWorkerMirroredStrategy (only "
                  f"{' or '.join(WORKER_TASK_TYPES)})")
    if task_type not in clean:
        raise bad(f"task type {task_type!r} is not in the cluster (which has {sorted(clean)})")
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(clean[task_type]):
        raise bad(f"task index {index!r} is not an index of the cluster's {len(clean[task_type])} "
                  f"{task_type!r} address(es)")
    return ClusterTask(task_type, index, sum(len(clean.get(t, [])) for t in WORKER_TASK_TYPES), clean)


def _cluster_lists(cluster: Mapping[str, Any], bad: Any) -> dict[str, list[str]]:
    """The cluster's task lists, checked: lists of ``host:port`` strings, chief or worker, at most one chief."""
    clean: dict[str, list[str]] = {}
    for name, addresses in cluster.items():
        if not isinstance(addresses, list) or not addresses or not all(
                isinstance(a, str) and a.rpartition(":")[2].isdigit() and a.rpartition(":")[0] for a in addresses):
            raise bad(f"cluster[{name!r}] must be a non-empty list of \"host:port\" strings, got {addresses!r}")
        if len(set(addresses)) != len(addresses):
            raise bad(f"cluster[{name!r}] lists an address twice: {addresses!r}")
        clean[str(name)] = list(addresses)
    unsupported = sorted(set(clean) - set(WORKER_TASK_TYPES))
    if unsupported:
        raise bad(f"cluster task type(s) {unsupported} are not supported: MultiWorkerMirroredStrategy trains "
                  f"with {' and '.join(WORKER_TASK_TYPES)} tasks only (no parameter servers or evaluator)")
    if len(clean.get("chief", [])) > 1:
        raise bad(f"at most one chief, got {len(clean['chief'])}")
    return clean


def make_strategy(config: DistributionConfig, environ: Mapping[str, str] | None = None) -> tuple[Any, ClusterTask]:
    """The ``tf.distribute`` strategy ``config`` asks for, and this process's task (:data:`LOCAL_TASK` unless
    multi-worker).

    Call it before any other TensorFlow work of the process: MultiWorkerMirroredStrategy configures the
    collective ops, which TensorFlow only allows at program startup (a ConfigError says so otherwise).
    """
    import tensorflow as tf

    if config.strategy == "multi_worker_mirrored":
        task = parse_tf_config((os.environ if environ is None else environ).get(TF_CONFIG_VAR))
        implementation = {"auto": tf.distribute.experimental.CommunicationImplementation.AUTO,
                          "ring": tf.distribute.experimental.CommunicationImplementation.RING,
                          "nccl": tf.distribute.experimental.CommunicationImplementation.NCCL}[config.communication]
        try:
            strategy = tf.distribute.MultiWorkerMirroredStrategy(
                communication_options=tf.distribute.experimental.CommunicationOptions(implementation=implementation))
        except RuntimeError as exc:
            raise ConfigError(
                f"trainer.distribution.strategy=multi_worker_mirrored: TensorFlow cannot start the collective ops "
                f"({exc})", hint="the strategy must be created before any other TensorFlow work of the process: "
                "run the trainer in a process of its own (`recflow train`)") from None
        return strategy, task
    gpus = tf.config.list_physical_devices("GPU")
    if config.strategy == "mirrored" or (config.strategy == "auto" and gpus):
        return tf.distribute.MirroredStrategy(), LOCAL_TASK
    return tf.distribute.get_strategy(), LOCAL_TASK


def describe(strategy: Any, task: ClusterTask) -> dict[str, Any]:
    """What ``training.json`` records about the strategy: its class, replicas in sync, workers, this task."""
    return {"strategy": type(strategy).__name__, "replicas_in_sync": int(strategy.num_replicas_in_sync),
            "workers": task.workers, "task": {"type": task.task_type, "index": task.index},
            "chief": task.is_chief}


@contextmanager
def output_dir(out_dir: Path, task: ClusterTask) -> Iterator[Path]:
    """Where this task writes the trainer's output: ``out_dir`` for the chief; for any other worker a fresh
    temporary directory, deleted on exit (what TensorFlow's multi-worker saving does), so only the chief's
    output exists afterwards."""
    if task.is_chief:
        yield Path(out_dir)
        return
    tmp = Path(tempfile.mkdtemp(prefix=f"recflow-{task.task_type}{task.index}-"))
    try:
        yield tmp / Path(out_dir).name
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def shard_by_data(dataset: Any) -> Any:
    """``dataset`` with auto-sharding by DATA: every worker reads the whole (in-memory) dataset and keeps its
    share of each global batch. FILE sharding cannot apply (the examples come from in-memory arrays, not
    files), and with OFF every worker would train on every example (the epoch counted once per worker)."""
    import tensorflow as tf

    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


class ExampleCounter:
    """Training examples seen in an epoch by every replica of every worker together.

    A SUM-aggregated, sync-on-read variable: each replica adds its share of a batch (:meth:`add`, in the
    model's loss), and reading it outside the replicas (:meth:`total`) sums the replicas across workers --
    the number a run that saw the whole dataset once per epoch must report. Create it under the strategy's
    scope. Not a Keras metric (Keras' own evaluation would reset it) nor a model weight (it is no part of the
    exported model)."""

    def __init__(self) -> None:
        import tensorflow as tf

        self.variable = tf.Variable(0.0, trainable=False, dtype=tf.float64, name="examples_seen",
                                    synchronization=tf.VariableSynchronization.ON_READ,
                                    aggregation=tf.VariableAggregation.SUM)

    def add(self, batch_rows: Any) -> None:
        """Count a replica's batch (inside the training step)."""
        import tensorflow as tf

        self.variable.assign_add(tf.cast(batch_rows, tf.float64))

    def reset(self) -> None:
        self.variable.assign(0.0)

    def total(self) -> int:
        """Examples counted since the last reset, summed over every replica of every worker."""
        return int(round(float(self.variable.numpy())))


def counting_callback(counter: ExampleCounter) -> Any:
    """A Keras callback that records ``examples_seen`` (:class:`ExampleCounter`) in each epoch's logs."""
    import tensorflow as tf

    class _CountExamples(tf.keras.callbacks.Callback):
        def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            counter.reset()

        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            if logs is not None:
                logs["examples_seen"] = float(counter.total())

    return _CountExamples()


def global_metrics_callback(model: Any) -> Any:
    """A Keras callback that replaces each ``val_<metric>`` of the epoch's logs by the metric read across every
    replica and worker. A TFRS model's test step returns each replica's own metric value (a replica saw only
    its shard of the eval split), which Keras then sums over replicas: an AUC of 1.4 with two workers. Put it
    before EarlyStopping, which must see the true values (and the same ones on every worker)."""
    import tensorflow as tf

    class _GlobalMetrics(tf.keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            if logs is None:
                return
            for metric in model.metrics:
                key = f"val_{metric.name}"
                if key in logs:
                    logs[key] = float(metric.result())

    return _GlobalMetrics()


def agreed(strategy: Any, values: Mapping[str, float]) -> dict[str, float]:
    """``values`` averaged over every replica of every worker: a decision taken from numbers each worker
    computes on its own (the sequence model's numpy validation, which decides early stopping) is then the
    same on all of them even if their floating point differs, so no worker stops while another trains on and
    waits for it forever. Identical inputs come back unchanged."""
    import tensorflow as tf

    if not values or strategy.num_replicas_in_sync == 1:
        return dict(values)
    names = sorted(values)
    local = tf.constant([float(values[n]) for n in names], tf.float64)
    mean = strategy.reduce(tf.distribute.ReduceOp.MEAN, strategy.run(lambda: tf.identity(local)), axis=None)
    return {n: float(v) for n, v in zip(names, mean.numpy(), strict=True)}
