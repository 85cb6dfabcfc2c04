"""The Evaluator reads splits with the trainers' reader (recflow.training.columnar.read_split_events, a row group at
a time) and hands on object columns: the same frame as the whole pandas read, whatever the order and layout."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from recflow.evaluation.evaluator import _TRAIN_COLUMNS, load_examples, read_split_objects
from recflow.examplegen import read_split_path


def _events(n: int, seed: int, ordered: bool) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    ts = pd.Timestamp("2026-01-01", tz="UTC") + pd.to_timedelta(rng.integers(0, n // 3, n), unit="s")
    frame = pd.DataFrame({
        "event_id": [f"e{i:05d}" for i in rng.permutation(n)],
        "event_type": rng.choice(["impression", "click", "purchase", "view"], n),
        "timestamp": ts.astype("datetime64[ms, UTC]"),
        "user_id": [f"u{i}" for i in rng.integers(0, 40, n)],
        "item_id": [f"i{i}" for i in rng.integers(0, 90, n)],
        "session_id": [None if i % 7 == 0 else f"s{i % 23}" for i in range(n)],
        "price": rng.random(n),
    })
    if ordered:
        frame = frame.sort_values(["timestamp", "event_id"], kind="stable").reset_index(drop=True)
    return frame


@pytest.mark.parametrize("layout", ["file", "shards"])
@pytest.mark.parametrize("ordered", [True, False])
def test_chunked_split_equals_the_whole_read(tmp_path, layout, ordered):
    events = _events(1000, seed=3, ordered=ordered)
    path = tmp_path / "train.parquet"
    if layout == "file":
        events.to_parquet(path, index=False, row_group_size=300)
    else:  # shards in an order that is not the log's
        path.mkdir()
        shuffled = events.sample(frac=1.0, random_state=1)
        for k in range(3):
            shuffled.iloc[k * 334:(k + 1) * 334].to_parquet(path / f"part-{k:05d}.parquet", index=False)
    columns = [*_TRAIN_COLUMNS, "price"]
    whole = read_split_path(path, columns)
    chunked = read_split_objects(path, columns)
    pd.testing.assert_frame_equal(chunked, whole)
    assert chunked["session_id"].isna().any() and chunked["session_id"].map(type).isin([str, type(None)]).all()
    # Equal strings share one object across row groups and shards: the held frame is a pointer per cell.
    assert len({id(v) for v in chunked["user_id"]}) == chunked["user_id"].nunique()


def test_load_examples_reads_the_splits_in_chunks_with_the_same_result(tmp_path):
    for split, seed in (("train", 1), ("eval", 2), ("test", 3)):
        frame = _events(400, seed=seed, ordered=True)
        frame["user_id"] = frame["user_id"].str[1:].astype(int)  # numeric ids are read as strings, as before
        frame.to_parquet(tmp_path / f"{split}.parquet", index=False)
    train, held_out, items = load_examples(tmp_path, "test", _TRAIN_COLUMNS)
    expected = read_split_path(tmp_path / "train.parquet", list(_TRAIN_COLUMNS))
    expected["user_id"] = expected["user_id"].astype(str)
    pd.testing.assert_frame_equal(train, expected)
    assert items is None and held_out["user_id"].map(type).eq(str).all()


def test_list_level_metrics_get_seeded_bootstrap_intervals():
    from recflow.evaluation.beyond_accuracy import CatalogContext, beyond_accuracy_metrics, list_metric_intervals
    from recflow.evaluation.metrics import catalog_coverage

    rng = np.random.default_rng(0)
    catalog = [f"i{j}" for j in range(200)]
    weights = 1.0 / np.arange(1, 201)
    train = pd.DataFrame({"user_id": "u", "event_type": "click",
                          "item_id": rng.choice(catalog, 3000, p=weights / weights.sum())})
    items = pd.DataFrame({"item_id": catalog, "category": [f"c{j % 7}" for j in range(200)]})
    context = CatalogContext.from_train(train, items, catalog)

    def recs(users):
        return [list(rng.choice(catalog, 10, replace=False, p=weights / weights.sum())) for _ in range(users)]

    few, many = recs(40), recs(2000)
    small = list_metric_intervals(few, catalog, context, 10, seed=1)
    assert small == list_metric_intervals(few, catalog, context, 10, seed=1)  # seeded
    point = {"coverage@10": catalog_coverage(few, catalog), **beyond_accuracy_metrics(few, context, 10)}
    assert set(small) == set(point) and len(point) == 5
    for name, value in point.items():
        low, high = small[name]
        assert low <= value <= high, name
    wide = list_metric_intervals(many, catalog, context, 10, seed=1)
    for name in ("novelty@10", "long_tail_share@10", "diversity@10"):
        assert wide[name][1] - wide[name][0] < small[name][1] - small[name][0], name
    assert all(np.isnan(v) for v in list_metric_intervals(few[:1], catalog, context, 10, seed=1)["novelty@10"])


def test_chunked_split_sorts_missing_event_ids_and_timestamps_like_pandas(tmp_path):
    events = _events(300, seed=5, ordered=False)
    events.loc[events.index % 11 == 0, "event_id"] = None
    events.to_parquet(tmp_path / "train.parquet", index=False)
    whole = read_split_path(tmp_path / "train.parquet", list(_TRAIN_COLUMNS))
    pd.testing.assert_frame_equal(read_split_objects(tmp_path / "train.parquet", _TRAIN_COLUMNS), whole)
