"""Transform: point-in-time behaviour features, labels, feature availability, and the tf.Transform/Beam run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_examplegen import ids_only, make_event_log, write_world

from recflow.config import ValidationConfig
from recflow.errors import DataError
from recflow.examplegen import ExampleGenConfig, run_example_gen
from recflow.features import behaviour
from recflow.features.transform import (
    TransformConfig,
    apply_transform_graph,
    describe_features,
    label_impressions,
    load_transformed,
    pipeline_args,
    prepare_features,
    run_transform,
)


def _events(rows: list[tuple]) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=["user_id", "item_id", "event_type", "timestamp", "order_value",
                                     "dwell_time_s"])
    df["timestamp"] = pd.to_datetime(df["timestamp"], utc=True)
    return df


def test_behaviour_uses_strictly_earlier_events_only() -> None:
    ev = _events([
        ("a", "x", "view", "2026-01-01 10:00:00", None, 10.0),
        ("a", "x", "purchase", "2026-01-01 10:05:00", 50.0, None),
        ("b", "y", "view", "2026-01-01 10:06:00", None, 4.0),
        ("a", "y", "view", "2026-01-01 10:05:00", None, 30.0),   # same instant as the purchase: a tie
        ("a", "z", "view", "2026-01-01 12:00:00", None, None),   # > 30 min gap: a new session
    ])
    out = behaviour.add_behaviour_features(ev)
    assert list(out.index) == list(ev.index)  # original order kept
    assert behaviour.behaviour_columns(ev) == ["recency_s", "frequency", "session_events", "monetary",
                                               "dwell_mean"]
    a1, a2, b1, a3, a4 = (out.iloc[i] for i in range(5))
    assert a1["frequency"] == 0 and a1["recency_s"] == behaviour.RECENCY_CAP_S and a1["dwell_mean"] == 0
    # tied events see neither each other nor their own outcome
    for tied in (a2, a3):
        assert tied["frequency"] == 1 and tied["recency_s"] == 300 and tied["monetary"] == 0
        assert tied["dwell_mean"] == 10 and tied["session_events"] == 1
    assert a4["frequency"] == 3 and a4["monetary"] == 50 and a4["dwell_mean"] == 20 and a4["session_events"] == 0
    assert a4["recency_s"] == 6900
    assert b1["frequency"] == 0

    state = behaviour.user_state_at(ev, pd.Timestamp("2026-01-01 10:05:00", tz="UTC"))
    assert state["user_id"].tolist() == ["a"]  # b has not acted yet; a's 10:05 events are not before the probe
    assert state.iloc[0]["frequency"] == 1 and state.iloc[0]["recency_s"] == 300


def test_recent_items_are_earlier_choices_most_recent_first() -> None:
    ev = pd.DataFrame({
        "user_id": ["a", "a", "a", "a", "b", "a"],
        "item_id": ["x", "y", "z", "w", "q", "v"],
        "event_type": ["view", "impression", "click", "purchase", "view", "view"],
        "timestamp": pd.to_datetime(["2026-01-01 10:00", "2026-01-01 10:01", "2026-01-01 10:02",
                                     "2026-01-01 10:02", "2026-01-01 10:03", "2026-01-01 10:04"], utc=True),
    })
    recent = behaviour.recent_items(ev, 2).tolist()
    assert recent[0] == ["", ""]                 # nothing before the first event
    assert recent[1] == ["x", ""]                # impressions are not choices
    assert recent[2] == recent[3] == ["x", ""]   # the simultaneous click and purchase do not see each other
    assert recent[4] == ["", ""]                 # another user's history is not shared
    assert recent[5] == ["w", "z"]               # last two choices, most recent first (ties in log order)


def test_ids_only_behaviour_and_features() -> None:
    ev = _events([("a", "x", "view", "2026-01-01", None, None), ("a", "y", "click", "2026-01-02", None, None)])
    ev = ev[["user_id", "item_id", "event_type", "timestamp"]]
    assert behaviour.behaviour_columns(ev) == ["recency_s", "frequency", "session_events"]
    spec = describe_features(ev, pd.DataFrame({"item_id": ["x", "y"]}), None)
    assert spec["serving_inputs"] == ["user_id"] and spec["context_features"] == []
    assert spec["candidate_features"] == ["item_id"] and spec["transformed_candidate_features"] == ["item_idx"]
    assert spec["positive_event_types"] == ["click"] and not spec["has_impressions"]
    views = describe_features(ev.assign(event_type="view"), pd.DataFrame({"item_id": ["x", "y"]}), None)
    assert views["positive_event_types"] == ["view"]


def test_impressions_are_labelled_by_request_or_time() -> None:
    ev = pd.DataFrame({
        "user_id": ["a", "a", "a", "a", "b"],
        "item_id": ["x", "y", "x", "x", "x"],
        "event_type": ["impression", "impression", "click", "impression", "impression"],
        "timestamp": pd.to_datetime(["2026-01-01 10:00", "2026-01-01 10:00", "2026-01-01 10:01",
                                     "2026-01-01 12:00", "2026-01-01 10:00"], utc=True),
    })
    assert label_impressions(ev).tolist() == [1, 0, -1, 0, 0]
    with_requests = ev.assign(request_id=["r1", "r1", "r2", "r2", "r3"])
    assert label_impressions(with_requests).tolist() == [0, 0, -1, 1, 0]


def test_pipeline_args_pass_the_runner_through() -> None:
    assert pipeline_args(TransformConfig(), None)[:2] == ["--runner=DirectRunner", "--direct_num_workers=1"]
    args = pipeline_args(TransformConfig(beam_runner="DataflowRunner"), ["--project=p", "--region=r"])
    assert args == ["--runner=DataflowRunner", "--project=p", "--region=r"]


def test_missing_examples_are_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="run ExampleGen first"):
        prepare_features(tmp_path, TransformConfig())


@pytest.fixture(scope="module")
def transformed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("transform")
    src = write_world(base / "src", n_users=60, sessions=4)
    run_example_gen(src, base / "ex", ExampleGenConfig(), ValidationConfig())
    run_transform(base / "ex", base / "tf", TransformConfig())
    return base / "ex", base / "tf"


@pytest.mark.slow
def test_transform_outputs_and_serving_equals_training(transformed: tuple[Path, Path]) -> None:
    ex, tf_dir = transformed
    spec = json.loads((tf_dir / "feature_spec.json").read_text())
    assert spec["context_features"] == ["hour", "weekday", "device", "region"]
    assert spec["candidate_features"] == ["item_id", "category", "price"]
    graph = tf_dir / "transform_graph"
    train = load_transformed(tf_dir / "transformed" / "train", graph)
    stats = json.loads((ex / "stats.json").read_text())
    assert len(train["user_idx"]) == stats["splits"]["train"]["rows"]
    assert abs(train["price_z"].mean()) < 1e-3 and abs(train["frequency_z"].std() - 1) < 1e-2  # z-scored on train
    assert np.allclose(train["hour_sin"] ** 2 + train["hour_cos"] ** 2, 1.0, atol=1e-5)
    assert set(np.unique(train["clicked"])) == {-1, 0, 1}
    assert train["recent_items_idx"].min() == -1 and train["recent_items_idx"].max() >= 0

    # The graph applied to raw rows in-process (as the SavedModels do) equals Beam's transformation.
    prepared = prepare_features(ex, TransformConfig())
    for split in ("eval", "test"):
        beam_out = load_transformed(tf_dir / "transformed" / split, graph)
        raw = prepared.raw_frames[split].sort_values("row_id")
        served = apply_transform_graph(graph, prepared.spec, raw)
        for name, values in beam_out.items():
            np.testing.assert_allclose(served[name], values, rtol=1e-5, atol=1e-5, err_msg=f"{split}/{name}")

    # Unseen ids map to the OOV bucket (index >= vocabulary size), known ones inside the vocabulary.
    probe = pd.DataFrame({"user_id": ["never-seen", prepared.raw_frames["train"]["user_id"].iloc[0]],
                          "item_id": ["new-item", "i0000"]})
    out = apply_transform_graph(graph, prepared.spec, probe)
    import tensorflow_transform as tft

    n_users = tft.TFTransformOutput(str(graph)).vocabulary_size_by_name("user_id")
    assert out["user_idx"][0] == n_users and out["user_idx"][1] < n_users


@pytest.mark.slow
def test_train_read_twice_equals_analyze_and_transform(transformed: tuple[Path, Path], tmp_path: Path) -> None:
    """The train split analysed on one read and transformed on a second (so the runner streams both) gives what
    AnalyzeAndTransformDataset on a single read gave (the way the step ran before): the same rows, exactly."""
    import apache_beam as beam
    import tensorflow_transform.beam as tft_beam
    from apache_beam.options.pipeline_options import PipelineOptions
    from tfx_bsl.coders import example_coder

    from recflow.features import transform as tf_

    ex, tf_dir = transformed
    config = TransformConfig()
    prepared = prepare_features(ex, config)
    staged = tf_.stage_raw_frames({"train": prepared.raw_frames["train"]}, prepared.spec, config,
                                  str(tmp_path / "stage"))
    tfxio = tf_.raw_tfxio(prepared.spec)
    with beam.Pipeline(options=PipelineOptions(pipeline_args(config, None))) as p, \
            tft_beam.Context(temp_dir=str(tmp_path / "tmp"), desired_batch_size=config.batch_size):
        train = tf_._read_split(p, "Train", staged["train"], tfxio.ArrowSchema(), config.batch_size)
        (data, _), transform_fn = (train, tfxio.TensorAdapterConfig()) | tft_beam.AnalyzeAndTransformDataset(
            tf_.make_preprocessing_fn(prepared.spec, config), output_record_batches=True)
        _ = transform_fn | tft_beam.WriteTransformFn(str(tmp_path / "graph"))
        _ = (data | beam.FlatMap(lambda batch: example_coder.RecordBatchToExamples(batch[0]))
             | beam.io.WriteToTFRecord(str(tmp_path / "train" / "part"), file_name_suffix=".tfrecord.gz"))
    single_read = load_transformed(tmp_path / "train", tmp_path / "graph")
    read_twice = load_transformed(tf_dir / "transformed" / "train", tf_dir / "transform_graph")
    assert set(read_twice) == set(single_read) and len(read_twice["row_id"]) == len(single_read["row_id"]) > 0
    for name, values in single_read.items():
        np.testing.assert_array_equal(read_twice[name], values, err_msg=name)


@pytest.mark.slow
def test_multi_processing_direct_runner_writes_the_same_data(transformed: tuple[Path, Path], tmp_path: Path) -> None:
    """direct_running_mode multi_processing (2 worker processes) against the default single process: the same
    transformed rows (docs/pipeline.md, Distributed data steps, has what it costs)."""
    ex, tf_dir = transformed
    result = run_transform(ex, tmp_path / "mp", TransformConfig(direct_running_mode="multi_processing",
                                                                direct_num_workers=2))
    for split in ("train", "eval", "test"):
        expected = load_transformed(tf_dir / "transformed" / split, tf_dir / "transform_graph")
        got = load_transformed(result.transformed_dirs[split], result.transform_graph_dir)
        assert set(got) == set(expected) and len(got["row_id"]) == len(expected["row_id"]) > 0
        for name, values in expected.items():
            np.testing.assert_array_equal(got[name], values, err_msg=f"{split}/{name}")


@pytest.mark.slow
def test_ids_only_log_transforms(tmp_path: Path) -> None:
    events, _, _ = make_event_log(n_users=30, sessions=3)
    src = tmp_path / "src"
    src.mkdir()
    ids_only(events).to_parquet(src / "events.parquet")
    run_example_gen(src, tmp_path / "ex", ExampleGenConfig(), ValidationConfig())
    result = run_transform(tmp_path / "ex", tmp_path / "tf", TransformConfig())
    spec = result.feature_spec
    assert spec["serving_inputs"] == ["user_id"] and spec["behaviour_features"] == list(behaviour.ALWAYS_PRESENT)
    train = load_transformed(result.transformed_dirs["train"], result.transform_graph_dir)
    assert set(train) == {"user_idx", "item_idx", "recency_s_z", "frequency_z", "session_events_z",
                          "recent_items_idx", "event_code", "clicked", "row_id"}
    assert train["recent_items_idx"].shape == (len(train["row_id"]), 10)
    assert (train["recent_items_idx"][0] == -1).all()  # the very first event has no history
    assert pd.read_parquet(result.candidates_path).columns.tolist() == ["item_id"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
