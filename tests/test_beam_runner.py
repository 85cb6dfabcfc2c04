"""The Beam runner of the data steps: runner options, the Dask runner over a dask.distributed LocalCluster, and
the behaviour-features pipeline, whose output on every runner equals the in-memory computation."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_examplegen import write_world

from recflow.config import ValidationConfig
from recflow.errors import ConfigError, DataError
from recflow.examplegen import ExampleGenConfig, run_example_gen
from recflow.examplegen_beam import BeamSettings
from recflow.features import behaviour
from recflow.features.beam_behaviour import read_shards, run_behaviour_features, shard_of
from recflow.features.beam_runner import (
    DASK_RUNNER_CLASS,
    beam_args,
    check_shared_files,
    check_tf_transform_runner,
    dask_scheduler,
    effective_runner,
    runner_args,
    wait_for_all,
    workers_are_local,
)
from recflow.features.transform import TransformConfig, pipeline_args, run_transform

SPLITS = ("train", "eval", "test")


def test_runner_args() -> None:
    assert runner_args("DirectRunner", 2, "multi_processing") == [
        "--runner=DirectRunner", "--direct_num_workers=2", "--direct_running_mode=multi_processing"]
    assert runner_args("DaskRunner", dask_address="tcp://h:8786") == [
        f"--runner={DASK_RUNNER_CLASS}", "--dask_client_address=tcp://h:8786"]
    assert runner_args("FlinkRunner") == ["--runner=FlinkRunner"]
    config = TransformConfig(beam_runner="DaskRunner", dask_address="tcp://h:8786")
    assert pipeline_args(config, ["--dask_npartitions=4"])[1:] == ["--dask_client_address=tcp://h:8786",
                                                                  "--dask_npartitions=4"]
    with beam_args("SparkRunner", ["--spark_master_url=local[2]"]) as args:  # no cluster for other runners
        assert args == ["--runner=SparkRunner", "--spark_master_url=local[2]"]
    assert effective_runner(["--runner=DirectRunner", "--runner", "FlinkRunner"]) == "FlinkRunner"
    assert effective_runner([]) == "DirectRunner"


def test_transform_refuses_the_dask_runner_before_any_work(tmp_path: Path) -> None:
    # tmp_path holds no ExampleGen output: the runner is refused before anything is read.
    with pytest.raises(ConfigError, match="tf.Transform cannot run on Beam's Dask runner"):
        run_transform(tmp_path, tmp_path / "tf", TransformConfig(beam_runner="DaskRunner"))
    with pytest.raises(ConfigError, match="tagged output"):
        check_tf_transform_runner(pipeline_args(TransformConfig(), [f"--runner={DASK_RUNNER_CLASS}"]))
    check_tf_transform_runner(pipeline_args(TransformConfig(direct_running_mode="multi_processing"), None))
    assert not (tmp_path / "tf").exists()


def test_shards_are_stable_across_processes() -> None:
    # CRC-32 of the id's text, not Python's per-process salted hash: every worker process agrees on a user's shard.
    assert shard_of(pd.Series(["u1", "u2", 17, "u1"]), 4).tolist() == [2, 0, 2, 2]


def test_which_runners_have_their_workers_here() -> None:
    assert workers_are_local(runner_args("DirectRunner", 2, "multi_processing"))
    assert workers_are_local(["--runner=PrismRunner"])
    assert workers_are_local(runner_args("DaskRunner"))  # a LocalCluster started for the run
    assert not workers_are_local(runner_args("DaskRunner", dask_address="tcp://h:8786"))
    assert not workers_are_local(runner_args("DirectRunner") + ["--runner=DataflowRunner", "--project=p"])
    assert not workers_are_local(["--runner=FlinkRunner"])


def test_a_remote_runner_needs_the_directories_declared_shared(tmp_path: Path) -> None:
    check_shared_files(["--runner=DirectRunner"], False, "Transform", "here")  # local workers: nothing to check
    check_shared_files(["--runner=DataflowRunner"], True, "Transform", "here")  # declared shared by the config
    with pytest.raises(ConfigError, match="Transform on Beam runner SparkRunner: its stages pass files through "
                                          "/x/y") as err:
        check_shared_files(["--runner=SparkRunner"], False, "Transform", "/x/y")
    assert "transform.shared_work_dir: true" in (err.value.hint or "")
    # Both data steps refuse before any work (tmp_path holds no data: nothing is read), and write nothing.
    with pytest.raises(ConfigError, match="Transform on Beam runner DataflowRunner"):
        run_transform(tmp_path, tmp_path / "tf", TransformConfig(beam_runner="DataflowRunner"))
    with pytest.raises(ConfigError, match="Transform on Beam runner FlinkRunner"):
        run_transform(tmp_path, tmp_path / "tf", TransformConfig(prepare_engine="beam"), ["--runner=FlinkRunner"])
    with pytest.raises(ConfigError, match=r"ExampleGen \(engine beam\) on Beam runner DataflowRunner"):
        run_example_gen(tmp_path, tmp_path / "ex", ExampleGenConfig(engine="beam"), ValidationConfig(),
                        BeamSettings(beam_pipeline_args=("--runner=DataflowRunner",)))
    assert not (tmp_path / "tf").exists() and not (tmp_path / "ex").exists()
    settings = BeamSettings.from_transform(TransformConfig(beam_runner="FlinkRunner", shared_work_dir=True))
    assert settings.shared_work_dir and settings.args() == ["--runner=FlinkRunner"]


@pytest.fixture(scope="module")
def examples(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("beam")
    src = write_world(base / "src", n_users=40, sessions=3)
    run_example_gen(src, base / "ex", ExampleGenConfig(), ValidationConfig())
    return base / "ex"


def _in_memory(examples_dir: Path, recent_n: int) -> tuple[pd.DataFrame, behaviour.BehaviourPlan]:
    """The whole log in memory, in log order, with the features computed at once (the reference)."""
    frames = [pd.read_parquet(examples_dir / f"{name}.parquet").assign(split=i, split_row=lambda d: np.arange(len(d)))
              for i, name in enumerate(SPLITS)]
    events = pd.concat(frames, ignore_index=True).sort_values("timestamp", kind="stable").reset_index(drop=True)
    plan = behaviour.behaviour_plan(events)
    out = behaviour.add_behaviour_features(events, plan=plan)
    out["recent_items"] = behaviour.recent_items(events, recent_n)
    return out.sort_values(["split", "split_row"]).reset_index(drop=True), plan


def _run(examples_dir: Path, out: Path, plan: behaviour.BehaviourPlan, runner: str, **options: object
         ) -> pd.DataFrame:
    paths = run_behaviour_features([examples_dir / f"{name}.parquet" for name in SPLITS], out, plan, runner,
                                   recent_n=3, num_shards=3, **options)
    assert [p.name for p in paths] == [f"part-{i:05d}-of-00003.parquet" for i in range(3)]
    return read_shards(paths)


def test_behaviour_pipeline_equals_the_in_memory_features(examples: Path, tmp_path: Path) -> None:
    expected, plan = _in_memory(examples, 3)
    assert {"monetary", "dwell_mean"} <= set(plan.columns)  # the rich log: every feature is exercised
    got = _run(examples, tmp_path / "direct", plan, "DirectRunner")
    pd.testing.assert_frame_equal(got[expected.columns], expected, check_dtype=False)
    # A second run replaces the output as a whole.
    again = _run(examples, tmp_path / "direct", plan, "DirectRunner")
    pd.testing.assert_frame_equal(again, got)
    with pytest.raises(DataError, match="no such event file: .*nope.parquet"):
        run_behaviour_features([examples / "nope.parquet"], tmp_path / "direct", plan)
    pd.testing.assert_frame_equal(read_shards(sorted((tmp_path / "direct").glob("part-*"))), got)  # untouched


@pytest.fixture(scope="module")
def dask_cluster() -> Iterator[str]:
    pytest.importorskip("distributed")
    with dask_scheduler(None, 2) as address:  # a LocalCluster of 2 worker processes, stopped after the module
        yield address


def test_behaviour_pipeline_on_dask_equals_the_direct_runner(examples: Path, tmp_path: Path,
                                                             dask_cluster: str) -> None:
    expected, plan = _in_memory(examples, 3)
    direct = _run(examples, tmp_path / "direct", plan, "DirectRunner")
    on_dask = _run(examples, tmp_path / "dask", plan, "DaskRunner", dask_address=dask_cluster)
    pd.testing.assert_frame_equal(on_dask, direct)
    pd.testing.assert_frame_equal(on_dask[expected.columns], expected, check_dtype=False)


def test_dask_runner_still_breaks_tf_transform(dask_cluster: str, tmp_path: Path) -> None:
    """Why tf.Transform is refused on the Dask runner (apache-beam 2.77). When this fails, Beam has fixed its
    Dask runner: try tf.Transform there again and lift check_tf_transform_runner (docs/pipeline.md)."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    def split(x: int) -> Iterator[object]:
        yield x if x % 2 == 0 else beam.pvalue.TaggedOutput("odd", x)

    def record(values: list[object], path: str) -> str:
        Path(path).write_text(repr(sorted(values)))
        return path

    with beam_args("DaskRunner", dask_address=dask_cluster) as args, \
            beam.Pipeline(options=PipelineOptions(args)) as pipeline:
        numbers = pipeline | beam.Create(range(6))
        parts = numbers | beam.FlatMap(split).with_outputs("odd", main="even")
        even = parts.even | "Even" >> beam.combiners.ToList() | "RecordEven" >> beam.Map(record, str(tmp_path / "even"))
        batches = (numbers | beam.BatchElements(min_batch_size=10, max_batch_size=10)
                   | "Batches" >> beam.combiners.ToList() | "RecordBatches" >> beam.Map(record, str(tmp_path / "b")))
        wait_for_all(pipeline, even, batches)  # without it only the branch applied last would run on Dask
    assert (tmp_path / "even").read_text() == "[0, 1, 2, 3, 4, 5]"  # the odd numbers leaked into the main output
    assert (tmp_path / "b").read_text() == "[]"  # the batch, emitted in finish_bundle, was dropped
