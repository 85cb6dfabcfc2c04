"""Transform's beam prepare engine (recflow/features/beam_prepare.py) against the pandas engine: the same raw rows,
user state, candidates and spec on the repo's fixtures, and the same transformed data from tf.Transform."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_examplegen import ids_only, make_event_log, write_world

from recflow.config import ValidationConfig
from recflow.errors import DataError
from recflow.examplegen import ExampleGenConfig, run_example_gen
from recflow.features import beam_prepare
from recflow.features.beam_runner import shard_count
from recflow.features.transform import (
    TransformConfig,
    describe_features,
    load_transformed,
    prepare_features,
    raw_tfxio,
    run_transform,
    to_record_batches,
)
from recflow.simulator import SimulatorConfig, generate_dataset

SPLITS = ("train", "eval", "test")


@pytest.fixture(scope="module")
def rich(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A log with every optional field (items, users, prices, order values, dwell, devices, regions)."""
    base = tmp_path_factory.mktemp("rich")
    src = write_world(base / "src", n_users=60, sessions=4)
    run_example_gen(src, base / "ex", ExampleGenConfig(), ValidationConfig())
    return base / "ex"


@pytest.fixture(scope="module")
def simulated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The simulator's world (impressions with request ids, sessions), split by ExampleGen's beam engine into
    shard directories."""
    base = tmp_path_factory.mktemp("sim")
    generate_dataset(SimulatorConfig(users=80, days=3, seed=5), base / "src", progress=False)
    run_example_gen(base / "src", base / "ex", ExampleGenConfig(engine="beam", num_shards=2), ValidationConfig())
    assert (base / "ex" / "train.parquet").is_dir()
    return base / "ex"


def _raw_table(frame: pd.DataFrame, spec: dict) -> pa.Table:
    schema = raw_tfxio(spec).ArrowSchema()
    return pa.Table.from_batches(to_record_batches(frame, spec, 4096, schema), schema=schema)


def _staged(pattern: str) -> pa.Table:
    return pa.concat_tables([pq.read_table(p) for p in sorted(Path(pattern).parent.glob(Path(pattern).name))])


def _by_row_id(table: pa.Table) -> pa.Table:
    return table.take(pa.compute.sort_indices(table.column("row_id").combine_chunks().flatten()))


def assert_prepared_equal(examples: Path, out: Path, config: TransformConfig) -> None:
    """The beam engine's outputs equal the pandas engine's: spec, raw rows by row_id, user state, candidates."""
    expected = prepare_features(examples, config)
    out.mkdir(parents=True)
    got = beam_prepare.prepare_features_beam(examples, config, out, out / "work")
    assert json.dumps(got.spec, sort_keys=True) == json.dumps(expected.spec, sort_keys=True)
    for name in SPLITS:
        want = _raw_table(expected.raw_frames[name].sort_values("row_id"), expected.spec)
        have = _by_row_id(_staged(got.raw_patterns[name]))
        assert have.num_rows == want.num_rows == expected.spec["rows"][name]
        assert have.combine_chunks().equals(want.combine_chunks()), name
    expected_state = expected.user_state.copy()
    expected_state.to_parquet(out / "expected_state.parquet", index=False)
    pd.testing.assert_frame_equal(pd.read_parquet(out / "user_state.parquet"),
                                  pd.read_parquet(out / "expected_state.parquet"))
    pd.testing.assert_frame_equal(pd.read_parquet(out / "candidates.parquet"), expected.candidates)


@pytest.mark.slow
def test_rich_log_in_memory_and_multi_processing(rich: Path, tmp_path: Path) -> None:
    for shards in (1, 3):
        assert_prepared_equal(rich, tmp_path / f"mem{shards}", TransformConfig(prepare_shards=shards))
    assert_prepared_equal(rich, tmp_path / "mp", TransformConfig(
        prepare_shards=4, direct_running_mode="multi_processing", direct_num_workers=2))


@pytest.mark.slow
def test_simulated_shard_directories(simulated: Path, tmp_path: Path) -> None:
    spec = prepare_features(simulated, TransformConfig()).spec
    assert spec["has_impressions"] and spec["has_purchases"]  # labels by request id are exercised
    assert_prepared_equal(simulated, tmp_path / "sim", TransformConfig(prepare_shards=3))


def test_prepare_shard_count_grows_with_the_events_past_rows_per_shard() -> None:
    assert shard_count(1_000_000, 8, 125_000) == 8
    assert shard_count(1_000_001, 8, 125_000) == 9
    assert shard_count(10_000_000, 8, 125_000) == 80
    assert shard_count(0, 1, 125_000) == 1


@pytest.mark.slow
def test_shards_sized_by_rows_give_the_same_outputs(simulated: Path, tmp_path: Path) -> None:
    """prepare_rows_per_shard binding (many small shards, their pieces spilled to files) changes nothing."""
    rows = sum(json.loads((simulated / "stats.json").read_text())["splits"][s]["rows"] for s in SPLITS)
    config = TransformConfig(prepare_shards=1, prepare_rows_per_shard=max(1, rows // 7))
    assert shard_count(rows, 1, config.prepare_rows_per_shard) >= 7
    assert_prepared_equal(simulated, tmp_path / "rows", config)
    assert not (tmp_path / "rows" / "work" / "spill").exists()  # the spilled pieces are removed


@pytest.mark.slow
def test_ids_only_log(tmp_path: Path) -> None:
    events, _, _ = make_event_log(n_users=30, sessions=3)
    src = tmp_path / "src"
    src.mkdir()
    ids_only(events).to_parquet(src / "events.parquet")
    run_example_gen(src, tmp_path / "ex", ExampleGenConfig(), ValidationConfig())
    assert_prepared_equal(tmp_path / "ex", tmp_path / "out", TransformConfig(prepare_shards=2))


def test_facts_give_the_frame_decisions(rich: Path) -> None:
    """describe_features of a whole frame equals describe_from_facts of its parts' merged facts."""
    from recflow.features.transform import describe_from_facts, frame_fields, log_facts

    parts = [pd.read_parquet(rich / f"{name}.parquet") for name in SPLITS]
    items, users = pd.read_parquet(rich / "items.parquet"), pd.read_parquet(rich / "users.parquet")
    # Drop a column from one part: merged facts must see the concatenation's missing values.
    parts[2] = parts[2].drop(columns=["dwell_time_s"])
    whole = pd.concat(parts, ignore_index=True)
    facts = log_facts(parts[0]).merge(log_facts(parts[1])).merge(log_facts(parts[2]))
    assert describe_from_facts(facts, items, frame_fields(users), 5) == describe_features(whole, items, users, 5)
    assert facts == log_facts(whole)


def test_median_of_counts_is_pandas_median() -> None:
    rng = np.random.default_rng(0)
    for n in (1, 2, 7, 10):
        values = pd.Series(rng.choice([1.5, 2.25, 9.0, 3.0], size=n))
        counts = values.value_counts().sort_index()
        assert beam_prepare.median_of_counts(counts) == float(values.median())


def test_bad_inputs_are_clear_errors(rich: Path, tmp_path: Path) -> None:
    config = TransformConfig(prepare_engine="beam")
    with pytest.raises(DataError, match="no train.parquet .run ExampleGen first"):
        run_transform(tmp_path, tmp_path / "out", config)
    # A split out of time order (not ExampleGen's output) names the file and the row.
    bad = tmp_path / "bad"
    shutil.copytree(rich, bad)
    train = pd.read_parquet(bad / "train.parquet")
    train.iloc[::-1].to_parquet(bad / "train.parquet", index=False)
    with pytest.raises(DataError, match=r"train.parquet: row 1: field timestamp: .*not in \(timestamp, event_id\)"):
        run_transform(bad, tmp_path / "out", config)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_transformed_data_equals_the_pandas_engine(rich: Path, tmp_path: Path) -> None:
    """The whole Transform step with each engine: the same transformed rows, user state, candidates and spec."""
    a = run_transform(rich, tmp_path / "pandas", TransformConfig())
    b = run_transform(rich, tmp_path / "beam", TransformConfig(prepare_engine="beam", prepare_shards=3))
    assert b.feature_spec_path.read_text() == a.feature_spec_path.read_text()
    for name in SPLITS:
        want = load_transformed(a.transformed_dirs[name], a.transform_graph_dir)
        have = load_transformed(b.transformed_dirs[name], b.transform_graph_dir)
        assert set(have) == set(want)
        for key, values in want.items():
            if values.dtype.kind == "f":
                # The raw rows are equal (above), but the engines stage them in different batches: tf.Transform's
                # mean/variance combiners add batches in arrival order and TF's vectorised sin/cos round a
                # value by its position in the batch, so floats agree to float32 rounding (measured <= 3e-7).
                np.testing.assert_allclose(have[key], values, rtol=1e-5, atol=1e-6, err_msg=f"{name}/{key}")
            else:
                np.testing.assert_array_equal(have[key], values, err_msg=f"{name}/{key}")
    for file in ("user_state.parquet", "candidates.parquet"):
        pd.testing.assert_frame_equal(pd.read_parquet(b.out_dir / file), pd.read_parquet(a.out_dir / file))
    assert sorted(p.name for p in b.out_dir.iterdir()) == sorted(p.name for p in a.out_dir.iterdir())


@pytest.mark.slow
def test_prepare_pipelines_run_on_the_dask_runner(rich: Path, tmp_path: Path) -> None:
    """The preparation uses only Create, ParDo, GroupByKey and Flatten, so it runs on Beam's Dask runner (a
    LocalCluster of 2 worker processes) with the same outputs; tf.Transform, the step's other half, does not
    (docs/pipeline.md, Distributed data steps), so run_transform still refuses that runner."""
    pytest.importorskip("distributed")
    from recflow.features.beam_runner import dask_scheduler

    with dask_scheduler(None, 2) as address:
        assert_prepared_equal(rich, tmp_path / "dask", TransformConfig(
            beam_runner="DaskRunner", dask_address=address, prepare_shards=3))
