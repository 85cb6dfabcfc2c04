"""ExampleGen's beam engine against the pandas engine: the same examples, quarantine, statistics and errors.

Each case runs both engines on one source (the simulator's small world: a Parquet file, a directory of shards,
CSV, bad rows) and compares what they wrote: the splits read with ``read_split`` (the beam engine writes shard
directories), items, users, ``stats.json`` (cut points included) and the quarantine.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from recflow.config import ValidationConfig
from recflow.errors import ConfigError, DataError, ValidationFailed
from recflow.examplegen import SPLITS, ExampleGenConfig, quarantine_path, read_split, run_example_gen
from recflow.examplegen_beam import BeamSettings, HigherRanks, higher_rank, shard_quantiles
from recflow.simulator.config import SimulatorConfig
from recflow.simulator.generator import generate_dataset

BEAM = ExampleGenConfig(engine="beam", num_shards=3)
PANDAS = ExampleGenConfig()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The simulator's default world, small: 200 users over 4 days (about 9,500 events)."""
    src = tmp_path_factory.mktemp("world") / "src"
    generate_dataset(SimulatorConfig(users=200, days=4, seed=3), src, progress=False)
    return src


def _copy_tables(world: Path, dest: Path, *kinds: str) -> Path:
    dest.mkdir(parents=True)
    for kind in kinds:
        shutil.copy(world / f"{kind}.parquet", dest / f"{kind}.parquet")
    return dest


def _shard(events: pd.DataFrame, directory: Path, parts: int, csv: bool = False) -> None:
    """``events`` cut into ``parts`` consecutive shards (names sort in row order)."""
    directory.mkdir(parents=True)
    for i, chunk in enumerate(np.array_split(np.arange(len(events)), parts)):
        piece = events.iloc[chunk]
        if csv:
            piece.to_csv(directory / f"part-{i:03d}.csv", index=False)
        else:
            piece.to_parquet(directory / f"part-{i:03d}.parquet", index=False)


def _both(src: Path, base: Path, beam: ExampleGenConfig = BEAM, settings: BeamSettings | None = None,
          validation: ValidationConfig | None = None) -> tuple[Path, Path]:
    validation = validation or ValidationConfig()
    run_example_gen(src, base / "pd", PANDAS, validation)
    run_example_gen(src, base / "bm", beam, validation, settings)
    return base / "pd", base / "bm"


def _assert_same(pd_dir: Path, bm_dir: Path) -> None:
    for name in SPLITS:
        assert (bm_dir / f"{name}.parquet").is_dir() and (pd_dir / f"{name}.parquet").is_file()
        assert sorted(p.name for p in (bm_dir / f"{name}.parquet").iterdir())[0].startswith("part-")
        expected = read_split(pd_dir, name)
        pd.testing.assert_frame_equal(read_split(bm_dir, name), expected, check_exact=True)
        pd.testing.assert_frame_equal(pd.read_parquet(pd_dir / f"{name}.parquet"), expected)  # already in order
        # The plain readers see the same rows (in shard order) in both layouts.
        assert len(pd.read_parquet(bm_dir / f"{name}.parquet")) == len(expected)
    for table in ("items", "users"):
        assert (pd_dir / f"{table}.parquet").exists() == (bm_dir / f"{table}.parquet").exists()
        if (pd_dir / f"{table}.parquet").exists():
            pd.testing.assert_frame_equal(pd.read_parquet(bm_dir / f"{table}.parquet"),
                                          pd.read_parquet(pd_dir / f"{table}.parquet"), check_exact=True)
    stats_pd = json.loads((pd_dir / "stats.json").read_text())
    assert json.loads((bm_dir / "stats.json").read_text()) == stats_pd
    q_pd = pd.read_parquet(quarantine_path(pd_dir, ValidationConfig()))
    q_bm = pd.read_parquet(quarantine_path(bm_dir, ValidationConfig()))
    pd.testing.assert_frame_equal(q_bm, q_pd, check_exact=True)


def test_parquet_file_source(world: Path, tmp_path: Path) -> None:
    pd_dir, bm_dir = _both(world, tmp_path)
    _assert_same(pd_dir, bm_dir)
    stats = json.loads((bm_dir / "stats.json").read_text())
    assert stats["items_given"] and stats["users_given"] and stats["cut_points"]["train_end"] is not None
    # Events sharing a timestamp never straddle a cut: train ends strictly before eval starts.
    train, evals = read_split(bm_dir, "train"), read_split(bm_dir, "eval")
    assert train["timestamp"].max() < evals["timestamp"].min()


def test_shard_directory_source_derived_items(world: Path, tmp_path: Path) -> None:
    """events/ as three Parquet shards, no catalog (items derived: latest price per item): both engines read the
    directory, and give what the single file gives."""
    src = tmp_path / "src"
    src.mkdir()
    events = pd.read_parquet(world / "events.parquet")
    _shard(events, src / "events", 3)
    pd_dir, bm_dir = _both(src, tmp_path)
    _assert_same(pd_dir, bm_dir)
    single = _copy_tables(world, tmp_path / "single", "events")
    run_example_gen(single, tmp_path / "one", PANDAS, ValidationConfig())
    for name in SPLITS:
        pd.testing.assert_frame_equal(read_split(bm_dir, name), read_split(tmp_path / "one", name))
    items = pd.read_parquet(bm_dir / "items.parquet")
    assert list(items.columns) == ["item_id", "price"] and items["item_id"].is_monotonic_increasing


def test_csv_source(world: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    pd.read_parquet(world / "events.parquet").to_csv(src / "events.csv", index=False)
    pd.read_parquet(world / "users.parquet").to_csv(src / "users.csv", index=False)
    pd_dir, bm_dir = _both(src, tmp_path)
    _assert_same(pd_dir, bm_dir)


def _bad_source(world: Path, dest: Path, share: float) -> Path:
    """The world's events as two CSV shards with bad rows: a duplicate event id across shards and one inside a
    shard, unknown event types, missing users, bad timestamps, negative prices, unknown item ids."""
    events = pd.read_parquet(world / "events.parquet")
    events["timestamp"] = events["timestamp"].map(lambda t: t.isoformat())
    events = events.astype({"position": object})
    rng = np.random.default_rng(0)
    n_bad = int(len(events) * share)
    rows = rng.choice(np.arange(10, len(events)), size=n_bad, replace=False)
    for k, row in enumerate(rows):
        case = k % 6
        if case == 0:
            events.loc[row, "event_id"] = events.loc[k % 5, "event_id"]  # repeats one of the first rows
        elif case == 1:
            events.loc[row, "event_type"] = "bogus"
        elif case == 2:
            events.loc[row, "user_id"] = None
        elif case == 3:
            events.loc[row, "timestamp"] = "yesterday"
        elif case == 4:
            events.loc[row, "price"] = -1.0
        else:
            events.loc[row, "item_id"] = "no-such-item"
    events.loc[len(events) - 1, "event_id"] = events.loc[len(events) - 2, "event_id"]  # inside the last shard
    dest.mkdir(parents=True)
    _shard(events, dest / "events", 2, csv=True)
    shutil.copy(world / "items.parquet", dest / "items.parquet")
    return dest


def test_bad_rows_are_quarantined_alike(world: Path, tmp_path: Path) -> None:
    src = _bad_source(world, tmp_path / "src", share=0.004)
    validation = ValidationConfig(max_bad_share=0.01)
    pd_dir, bm_dir = _both(src, tmp_path, validation=validation)
    _assert_same(pd_dir, bm_dir)
    quarantine = pd.read_parquet(quarantine_path(bm_dir, validation))
    assert set(quarantine["reason"]) == {"duplicate", "not_allowed", "missing", "wrong_type", "below_minimum",
                                         "unknown_item"}
    assert (quarantine["file"] == str(src / "events")).all()


def test_too_many_bad_rows_fail_with_the_same_message(world: Path, tmp_path: Path) -> None:
    src = _bad_source(world, tmp_path / "src", share=0.05)
    validation = ValidationConfig(max_bad_share=0.01)
    messages = []
    for name, config in (("pd", PANDAS), ("bm", BEAM)):
        with pytest.raises(ValidationFailed) as failed:
            run_example_gen(src, tmp_path / name, config, validation)
        messages.append(str(failed.value).replace(str(tmp_path / name), "OUT"))
        assert not (tmp_path / name).exists()  # nothing half-written
    assert messages[0] == messages[1]
    assert "e.g. row" in messages[0] and "data validation failed" in messages[0]
    pd.testing.assert_frame_equal(pd.read_parquet(quarantine_path(tmp_path / "bm", validation)),
                                  pd.read_parquet(quarantine_path(tmp_path / "pd", validation)))


def test_multi_processing_two_workers_writes_the_same(world: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    _shard(pd.read_parquet(world / "events.parquet"), src / "events", 4)
    settings = BeamSettings(direct_running_mode="multi_processing", direct_num_workers=2)
    pd_dir, bm_dir = _both(src, tmp_path, settings=settings)
    _assert_same(pd_dir, bm_dir)


def test_bad_files_are_data_errors(world: Path, tmp_path: Path) -> None:
    src = tmp_path / "trunc"
    src.mkdir()
    _shard(pd.read_parquet(world / "events.parquet"), src / "events", 2)
    data = (src / "events" / "part-001.parquet").read_bytes()
    (src / "events" / "part-001.parquet").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="part-001.parquet: truncated Parquet file"):
        run_example_gen(src, tmp_path / "out", BEAM, ValidationConfig())

    src = tmp_path / "badcsv"
    src.mkdir()
    lines = pd.read_parquet(world / "events.parquet").head(300).to_csv(index=False).splitlines()
    lines.insert(200, lines[200] + ',"x",extra')  # too many fields, far from the header
    (src / "events.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    for config in (PANDAS, BEAM):
        with pytest.raises(DataError, match="events.csv: not a well-formed CSV file"):
            run_example_gen(src, tmp_path / "out", config, ValidationConfig())

    src = tmp_path / "nocol"
    src.mkdir()
    pd.read_parquet(world / "events.parquet").drop(columns=["user_id"]).to_parquet(src / "events.parquet")
    with pytest.raises(DataError, match="missing required column.s. user_id"):
        run_example_gen(src, tmp_path / "out", BEAM, ValidationConfig())
    with pytest.raises(ConfigError, match="validate_input"):
        run_example_gen(world, tmp_path / "out", ExampleGenConfig(engine="beam", validate_input=False),
                        ValidationConfig())
    assert not (tmp_path / "out").exists()


def test_shard_quantiles_are_the_fixed_count_until_rows_per_shard_binds() -> None:
    q1, q2 = 0.8, 0.9
    fixed = [lo + j * (hi - lo) / 4 for lo, hi in ((0.0, q1), (q1, q2), (q2, 1.0)) for j in range(1, 4)]
    assert shard_quantiles(q1, q2, 4, 200_000, 1_000_000) == fixed  # 800k train events: 4 ranges of 200k
    more = shard_quantiles(q1, q2, 4, 200_000, 3_000_000)
    assert len(more) == (12 - 1) + (4 - 1) + (4 - 1)  # train 2.4M -> 12 ranges; eval and test 300k -> 4
    assert more == sorted(more) and all(0 < q < 1 for q in more)
    assert shard_quantiles(1.0, 1.0, 2, 100, 100) == [0.5]  # train only
    assert shard_quantiles(1.0, 1.0, 2, 10, 100) == pytest.approx([j / 10 for j in range(1, 10)])


def test_shards_sized_by_rows_hold_the_same_splits(world: Path, tmp_path: Path) -> None:
    """rows_per_shard binding: more, smaller time ranges; the splits, items, users, stats and quarantine are the
    pandas engine's all the same."""
    rows_per_shard = 1_000
    pd_dir, bm_dir = _both(world, tmp_path, ExampleGenConfig(engine="beam", num_shards=2,
                                                             rows_per_shard=rows_per_shard))
    _assert_same(pd_dir, bm_dir)
    stats = json.loads((bm_dir / "stats.json").read_text())
    train = sorted((bm_dir / "train.parquet").glob("part-*.parquet"))
    assert len(train) >= stats["splits"]["train"]["rows"] // rows_per_shard
    # Evenly spaced quantiles: each range is about rows_per_shard events (events sharing a timestamp stay together).
    assert max(pq.ParquetFile(p).metadata.num_rows for p in train) <= 1.5 * rows_per_shard
    assert not (bm_dir / ".spill").exists()


def test_higher_rank_is_pandas_higher_interpolation() -> None:
    rng = np.random.default_rng(1)
    for n in (1, 2, 3, 7, 10, 101, 1000):
        values = np.sort(rng.integers(0, 50, size=n))  # many ties
        for q in (0.0, 0.1, 0.5, 0.8, 0.9, 0.95, 1.0):
            assert values[higher_rank(q, n)] == pd.Series(values).quantile(q, interpolation="higher")


def test_quantile_sketch_exact_when_small_and_bounded_when_collapsed() -> None:
    """The sketch's answer is the exact rank while nothing collapsed, and within epsilon * n ranks after."""
    rng = np.random.default_rng(2)
    values = rng.integers(0, 10**9, size=20_000)
    ordered = np.sort(values)
    qs = [0.8, 0.9, 0.5]
    for epsilon, exact in ((1e-4, True), (0.05, False)):
        ranks = HigherRanks(qs, epsilon)
        fn = ranks.as_combine_fn()
        accs = [fn.add_input(fn.create_accumulator(), chunk.tolist()) for chunk in np.array_split(values, 10)]
        out = fn.extract_output(fn.compact(fn.merge_accumulators(accs)))
        assert out["n"] == len(values) and out["exact"] is exact
        for q, got in zip(qs, out["values"], strict=True):
            want = higher_rank(q, len(values))
            if exact:
                assert got == ordered[want]
            else:
                assert abs(int(np.searchsorted(ordered, got)) - want) <= epsilon * len(values)


def test_downstream_reads_the_shard_layout(world: Path, tmp_path: Path) -> None:
    """Transform's feature preparation, the evaluator's and the fallback baseline's readers see the same data
    from the beam engine's shard directories as from the pandas engine's files."""
    from recflow.evaluation.evaluator import load_examples
    from recflow.features.transform import TransformConfig, prepare_features
    from recflow.servable_baseline import TRAIN_FILE, FallbackChoice, write_fallback

    pd_dir, bm_dir = _both(world, tmp_path)
    a, b = prepare_features(pd_dir, TransformConfig()), prepare_features(bm_dir, TransformConfig())
    assert a.spec == b.spec
    for name in SPLITS:
        pd.testing.assert_frame_equal(b.raw_frames[name], a.raw_frames[name])
    for x, y in zip(load_examples(pd_dir), load_examples(bm_dir), strict=True):
        pd.testing.assert_frame_equal(y, x)
    # The fallback baseline stores the train split as one file, whichever layout it came from.
    choice = FallbackChoice("popular", "Popular", "recall_at_10", 0.1, 0.2, "test")
    for ex in (pd_dir, bm_dir):
        written = write_fallback(tmp_path / f"fb-{ex.name}", ex, choice, {}, None)
        pd.testing.assert_frame_equal(pd.read_parquet(written / TRAIN_FILE), read_split(pd_dir, "train"))


@pytest.mark.slow
def test_transform_runs_on_the_beam_engine_output(world: Path, tmp_path: Path) -> None:
    from recflow.features.transform import TransformConfig, load_transformed, run_transform

    run_example_gen(world, tmp_path / "bm", BEAM, ValidationConfig())
    result = run_transform(tmp_path / "bm", tmp_path / "tf", TransformConfig())
    stats = json.loads((tmp_path / "bm" / "stats.json").read_text())
    for name in SPLITS:
        got = load_transformed(result.transformed_dirs[name], result.transform_graph_dir)
        assert len(got["row_id"]) == stats["splits"][name]["rows"]


def test_dask_runner_writes_the_same(world: Path, tmp_path: Path) -> None:
    """The pipeline uses only what Beam's Dask runner runs right (no tagged outputs): a LocalCluster of 2."""
    pytest.importorskip("distributed")
    src = tmp_path / "src"
    src.mkdir()
    _shard(pd.read_parquet(world / "events.parquet"), src / "events", 3)
    shutil.copy(world / "items.parquet", src / "items.parquet")
    pd_dir, bm_dir = _both(src, tmp_path, settings=BeamSettings(runner="DaskRunner", dask_workers=2))
    _assert_same(pd_dir, bm_dir)


def test_data_fingerprint_covers_a_shard_directory(world: Path, tmp_path: Path) -> None:
    from recflow.tracking.lifecycle import data_fingerprint

    src = tmp_path / "src"
    src.mkdir()
    _shard(pd.read_parquet(world / "events.parquet"), src / "events", 2)
    before = data_fingerprint(src)
    assert data_fingerprint(src) == before
    pd.read_parquet(src / "events" / "part-001.parquet").head(10).to_parquet(src / "events" / "part-001.parquet")
    assert data_fingerprint(src) != before


def test_validator_reads_a_shard_directory(world: Path, tmp_path: Path) -> None:
    """``recflow data validate`` on a dataset with events/ shards, or on the shard directory itself: rows numbered
    across the shards in name order, the directory named as the file."""
    from recflow.validation import validate_path

    src = _bad_source(world, tmp_path / "src", share=0.004)
    whole = validate_path(src, ValidationConfig(max_bad_share=0.01))
    alone = validate_path(src / "events", ValidationConfig(max_bad_share=0.01),
                          quarantine_path=tmp_path / "q.parquet")
    assert whole.tables["events"].path == src / "events" and whole.tables["events"].format == "csv"
    assert whole.rows["events"] == len(pd.read_parquet(world / "events.parquet"))
    last = whole.rows["events"] - 1  # the duplicate inside the last shard, numbered across both shards
    assert ((whole.issues["row"] == last) & (whole.issues["reason"] == "duplicate")).any()
    assert whole.tables["events"].row_label(5) == "row 5"  # no single CSV line number in a directory
    # Alone, there is no catalog beside it: the same issues less the unknown item ids.
    expected = whole.issues[(whole.issues["table"] == "events") & (whole.issues["reason"] != "unknown_item")]
    pd.testing.assert_frame_equal(alone.issues.reset_index(drop=True), expected.reset_index(drop=True))


def test_runner_settings_come_from_the_transform_section() -> None:
    from recflow.features.transform import TransformConfig

    settings = BeamSettings.from_transform(
        TransformConfig(direct_running_mode="multi_processing", direct_num_workers=2), ["--job_name=x"])
    assert settings == BeamSettings(direct_running_mode="multi_processing", direct_num_workers=2,
                                    beam_pipeline_args=("--job_name=x",))
