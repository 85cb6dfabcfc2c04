"""The Beam runner of the data steps: the DirectRunner (in one process or several), Beam's Dask runner over a
``dask.distributed`` cluster, or any runner named in ``beam_pipeline_args`` (Dataflow, Flink, Spark).

``beam_runner: DaskRunner`` runs the pipeline on the cluster at ``dask_address``; without one, a
``dask.distributed.LocalCluster`` of ``dask_workers`` single-threaded worker processes is started for the run
and stopped after it. docs/pipeline.md ("Distributed data steps") has what runs there and what does not.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Iterator, Sequence
from typing import Any, Literal

from recflow.errors import ConfigError

log = logging.getLogger(__name__)

#: Beam's Dask runner is not registered under a short name; ``--runner`` needs its qualified class name.
DASK_RUNNER = "DaskRunner"
DASK_RUNNER_CLASS = "apache_beam.runners.dask.dask_runner.DaskRunner"
DirectRunningMode = Literal["in_memory", "multi_threading", "multi_processing"]


def is_dask(runner: str) -> bool:
    """Whether ``runner`` (a config value or a ``--runner`` value) names Beam's Dask runner."""
    return runner in (DASK_RUNNER, DASK_RUNNER_CLASS)


def runner_args(runner: str, direct_num_workers: int = 1, direct_running_mode: DirectRunningMode = "in_memory",
                dask_address: str | None = None) -> list[str]:
    """``--runner`` and the options of that runner (the DirectRunner's parallelism, the Dask scheduler)."""
    if is_dask(runner):
        return [f"--runner={DASK_RUNNER_CLASS}", *([f"--dask_client_address={dask_address}"] if dask_address else [])]
    args = [f"--runner={runner}"]
    if runner == "DirectRunner":
        args += [f"--direct_num_workers={direct_num_workers}", f"--direct_running_mode={direct_running_mode}"]
    return args


def effective_runner(args: Sequence[str]) -> str:
    """The runner Beam will use for ``args`` (the last ``--runner``, as Beam's option parser takes it)."""
    runner = "DirectRunner"
    for i, arg in enumerate(args):
        if arg.startswith("--runner="):
            runner = arg.split("=", 1)[1]
        elif arg == "--runner" and i + 1 < len(args):
            runner = args[i + 1]
    return runner


def check_tf_transform_runner(args: Sequence[str]) -> None:
    """Refuse, before any work, a runner on which tf.Transform cannot run (Beam 2.77's Dask runner)."""
    if is_dask(effective_runner(args)):
        raise ConfigError(
            "transform.beam_runner DaskRunner: tf.Transform cannot run on Beam's Dask runner (apache-beam 2.77): "
            "the runner sends every tagged output of a ParDo to all of its output PCollections, and tf.Transform's "
            "analyzers split their data with tagged outputs (CombineGlobally.with_fanout, vocabularies, quantiles); "
            "it also drops what a DoFn emits in finish_bundle, where BatchElements (tf.Transform's vocabulary "
            "writer) and Beam's file sinks (WriteToTFRecord) emit",
            hint="use DirectRunner (direct_running_mode: multi_processing for several processes) or Dataflow, "
                 "Flink or Spark through beam_pipeline_args; docs/pipeline.md, Distributed data steps")


#: Runners whose workers are processes of the launching machine (they see its file system).
LOCAL_RUNNERS = frozenset({"DirectRunner", "BundleBasedDirectRunner", "SwitchingDirectRunner", "PrismRunner"})


def workers_are_local(args: Sequence[str]) -> bool:
    """Whether the runner of ``args`` runs its workers on this machine: a DirectRunner (any mode), or the Dask
    runner on a LocalCluster started for the run (no ``--dask_client_address``)."""
    runner = effective_runner(args)
    if is_dask(runner):
        return not any(a.startswith("--dask_client_address") for a in args)
    return runner in LOCAL_RUNNERS


def check_shared_files(args: Sequence[str], shared_work_dir: bool, step: str, where: str) -> None:
    """Refuse, before any work, a runner whose workers may be other machines unless the config says the step's
    directories are on a file system every worker mounts (``transform.shared_work_dir``).

    The data steps' Beam pipelines pass files, not rows, between their stages (spilled batches, shards, the
    staged raw rows tf.Transform reads) through local paths; a worker on another machine would not find them,
    and fail deep inside the runner."""
    if shared_work_dir or workers_are_local(args):
        return
    raise ConfigError(
        f"{step} on Beam runner {effective_runner(args)}: its stages pass files through {where}, and this runner's "
        "workers may run on other machines, where that path does not exist",
        hint="mount the pipeline's artifact and work directories at the same path on every worker (NFS, GCS "
             "FUSE) and set transform.shared_work_dir: true, or run the data steps on the DirectRunner "
             "(direct_running_mode multi_processing for several processes); docs/pipeline.md, Distributed data "
             "steps")


def _require_distributed() -> Any:
    try:
        import distributed
    except ImportError as exc:  # the [dask] extra of apache-beam is in the locks; a hand-made venv may lack it
        raise ConfigError("beam_runner DaskRunner needs dask and distributed, which are not installed",
                          hint="make install (the locks have apache-beam[dask])") from exc
    return distributed


@contextlib.contextmanager
def dask_scheduler(address: str | None, workers: int) -> Iterator[str]:
    """The Dask scheduler the Dask runner connects to: ``address`` as given, or a local cluster of ``workers``
    single-threaded worker processes started here and stopped (with the runner's client) on exit."""
    distributed = _require_distributed()
    if address:
        try:
            yield address
        finally:
            close_dask_client(distributed)
        return
    started = time.perf_counter()
    cluster = distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                       dashboard_address=None)
    log.info("Dask LocalCluster at %s: %d worker processes, started in %.1f s", cluster.scheduler_address, workers,
             time.perf_counter() - started)
    try:
        yield str(cluster.scheduler_address)
    finally:
        close_dask_client(distributed)
        cluster.close()


def close_dask_client(distributed: Any) -> None:
    """Close the client the Dask runner opened (it leaves it open, and it then keeps trying to reconnect to a
    stopped cluster for 30 s)."""
    with contextlib.suppress(ValueError):  # no client was opened (the pipeline failed before running)
        distributed.default_client().close()


@contextlib.contextmanager
def beam_args(runner: str, extra: Sequence[str] | None = None, *, direct_num_workers: int = 1,
              direct_running_mode: DirectRunningMode = "in_memory", dask_address: str | None = None,
              dask_workers: int = 2) -> Iterator[list[str]]:
    """The Beam options of one pipeline run: the runner's (:func:`runner_args`) then ``extra``; for the Dask
    runner, a local cluster lives for the duration of the ``with`` block unless ``dask_address`` is given."""
    extra = list(extra or [])
    if not is_dask(runner):
        yield runner_args(runner, direct_num_workers, direct_running_mode) + extra
        return
    with dask_scheduler(dask_address, dask_workers) as address:
        yield runner_args(runner, dask_address=address) + extra


def wait_for_all(pipeline: Any, *outputs: Any) -> Any:
    """Join the pipeline's terminal outputs (e.g. each sink's result) into one final PCollection.

    Beam's Dask runner computes only the graph of the *last* transform applied (``dask_runner.py``: "we can get
    away with computing just the last value"), so a sink on another branch would silently not run there. A
    final Flatten that depends on every sink makes all of them run; on other runners it is a no-op.
    """
    import apache_beam as beam

    # A Flatten alone: a combiner here would bring a side input (CombineGlobally's default value), which the
    # Dask runner computes inside a task.
    return tuple(outputs) | "JoinOutputs" >> beam.Flatten(pipeline=pipeline)


def shard_count(rows: float, min_shards: int, rows_per_shard: int) -> int:
    """Shards for ``rows`` rows: at least ``min_shards``, more when a shard would average more than
    ``rows_per_shard`` rows (one worker holds a shard while writing it, so a shard must not grow with the log).
    ExampleGen's time ranges and the beam prepare engine's user shards are both sized by it."""
    return max(min_shards, math.ceil(rows / rows_per_shard))
