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
