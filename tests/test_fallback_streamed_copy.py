"""The fallback baseline's copy of the train split (write_split_events) is the file the whole-frame write gave:
the same rows in log order with the events schema's types, for a single file and for shards out of order."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recflow.evaluation.evaluator import write_split_events
from recflow.examplegen import read_split
from recflow.io import write_table


def _events(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "event_id": [f"e{i:05d}" for i in rng.permutation(n)],
        "user_id": [f"u{u}" for u in rng.integers(0, 30, n)],
        "item_id": [f"i{i}" for i in rng.integers(0, 50, n)],
        "event_type": rng.choice(["view", "click", "impression", "purchase"], n),
        # a coarse clock: equal times, ordered by event id in the log
        "timestamp": pd.Timestamp("2026-01-01", tz="UTC") + pd.to_timedelta(rng.integers(0, 40, n), unit="m"),
        "session_id": [f"s{s}" if s % 5 else None for s in rng.integers(0, 60, n)],
        "propensity": rng.uniform(0.1, 1.0, n),
        "shop_extra": rng.integers(0, 9, n),
    })


@pytest.mark.parametrize("layout", ["file", "sorted file", "shards"])
@pytest.mark.parametrize("batch_rows", [7, 100_000])
def test_streamed_copy_equals_the_whole_frame_write(tmp_path: Path, layout: str, batch_rows: int) -> None:
    events = _events(500, 3)
    ex = tmp_path / "ex"
    ex.mkdir()
    if layout == "shards":  # beam layout: part files, rows in no particular order
        (ex / "train.parquet").mkdir()
        for i, part in enumerate(np.array_split(events.sample(frac=1.0, random_state=1), 3)):
            part.to_parquet(ex / "train.parquet" / f"part-{i:05d}.parquet", index=False)
    else:
        frame = events.sort_values(["timestamp", "event_id"]) if layout == "sorted file" else events
        frame.to_parquet(ex / "train.parquet", index=False)
    got = write_split_events(ex, "train", tmp_path / "got.parquet", batch_rows=batch_rows)
    want = write_table(read_split(ex, "train"), tmp_path / "want.parquet", "events")
    pd.testing.assert_frame_equal(pd.read_parquet(got), pd.read_parquet(want))
    assert len(pd.read_parquet(got)) == len(events)


def test_an_empty_split_is_written(tmp_path: Path) -> None:
    ex = tmp_path / "ex"
    ex.mkdir()
    _events(10, 0).iloc[:0].to_parquet(ex / "train.parquet", index=False)
    got = write_split_events(ex, "train", tmp_path / "got.parquet")
    assert pd.read_parquet(got).empty


def _keys_of(shards: list[Path]) -> dict[str, object]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    return {name: pa.chunked_array([pq.read_table(s, columns=[name]).column(name) for s in shards]).combine_chunks()
            for name in ("timestamp", "event_id")}


@pytest.mark.parametrize("case", ["sorted", "seam tie ordered", "seam tie reversed", "seam back in time",
                                  "tie with a missing id", "missing id without ties", "missing time", "empty shard",
                                  "shuffled"])
def test_the_shard_at_a_time_order_check_agrees_with_the_whole_sort(tmp_path: Path, case: str) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from recflow.training.columnar import files_in_log_order, log_order_indices

    events = _events(300, 5).sort_values(["timestamp", "event_id"], kind="stable").reset_index(drop=True)
    if case == "missing id without ties":
        events["timestamp"] = pd.Timestamp("2026-01-01", tz="UTC") + pd.to_timedelta(np.arange(300), unit="s")
    cuts = [0, 100, 200, 300]
    parts = [events.iloc[a:b].copy() for a, b in zip(cuts, cuts[1:], strict=False)]
    if case == "seam tie ordered":  # the same time on both sides of a seam, event ids in order
        parts[1].loc[parts[1].index[0], "timestamp"] = parts[0]["timestamp"].iloc[-1]
        parts[1].loc[parts[1].index[0], "event_id"] = "zzz"
        parts[0].loc[parts[0].index[-1], "event_id"] = "zzy"
    elif case == "seam tie reversed":
        parts[1].loc[parts[1].index[0], "timestamp"] = parts[0]["timestamp"].iloc[-1]
        parts[1].loc[parts[1].index[0], "event_id"] = "a"
        parts[0].loc[parts[0].index[-1], "event_id"] = "zzz"
    elif case == "seam back in time":
        parts = [parts[1], parts[0], parts[2]]
    elif case in ("tie with a missing id", "missing id without ties"):
        parts[2].loc[parts[2].index[5], "event_id"] = None
    elif case == "missing time":
        parts[1].loc[parts[1].index[3], "timestamp"] = pd.NaT
    elif case == "empty shard":
        parts = [parts[0], parts[1].iloc[:0], parts[1], parts[2]]
    elif case == "shuffled":
        parts = [p.sample(frac=1.0, random_state=2) for p in parts]
    shards = []
    for i, part in enumerate(parts):
        shards.append(tmp_path / f"part-{i:05d}.parquet")
        part.to_parquet(shards[-1], index=False)
    types = {n: pq.read_schema(shards[0]).field(n).type for n in ("timestamp", "event_id")}
    expected = log_order_indices(pa.table(_keys_of(shards)), ["timestamp", "event_id"]) is None
    assert files_in_log_order(shards, ["timestamp", "event_id"], types) == expected
    assert expected == (case in ("sorted", "seam tie ordered", "missing id without ties", "empty shard"))
