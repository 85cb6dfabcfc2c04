"""The trainers' bounded-memory paths compute what the whole-array paths computed (issue 17)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recflow.errors import DataError
from recflow.training.reading import read_split_columns, split_columns
from recflow.training.sequence_retrieval import top_k_accuracy


def test_top_k_accuracy_in_small_blocks_equals_one_block():
    rng = np.random.default_rng(0)
    states = rng.normal(size=(300, 8)).astype(np.float32)
    items = rng.normal(size=(57, 8)).astype(np.float32)
    targets = rng.integers(0, 57, size=300)
    weights = rng.random(300).astype(np.float32)
    whole = top_k_accuracy(states, items, targets, weights, ks=(1, 5, 10))
    for cells in (1, 57, 58, 1000):  # one example a block, exactly one, just over one, several
        assert top_k_accuracy(states, items, targets, weights, ks=(1, 5, 10), max_cells=cells) == whole
    # And the ranks are right: a target scored best by construction is at the top.
    unit = items / np.linalg.norm(items, axis=1, keepdims=True)
    assert top_k_accuracy(unit[targets], unit, targets, np.ones(300), ks=(1,), max_cells=100)[1] == 1.0


def _split(tmp_path: Path) -> Path:
    ex = tmp_path / "ex"
    ex.mkdir()
    t0 = pd.Timestamp("2026-01-05", tz="UTC")
    pd.DataFrame({"event_id": [f"e{i}" for i in range(6)], "user_id": ["u1", "u2", "u1", "u3", "u2", "u1"],
                  "timestamp": [t0 + pd.Timedelta(minutes=m) for m in (5, 1, 3, 3, 0, 9)],
                  "item_id": list("abcdef"), "device": ["mobile"] * 6, "dwell_time_s": np.arange(6.0)}
                 ).to_parquet(ex / "train.parquet", index=False)
    return ex


def test_read_split_columns_reads_the_wanted_columns_the_split_has_in_log_order(tmp_path):
    ex = _split(tmp_path)
    assert "dwell_time_s" in split_columns(ex, "train")
    got = read_split_columns(ex, "train", ["user_id", "timestamp", "device", "region", "user_id"])
    assert list(got.columns) == ["user_id", "timestamp", "device"]  # region: not in the split; no duplicates
    from recflow.examplegen import read_split

    whole = read_split(ex, "train")
    pd.testing.assert_frame_equal(got, whole[["user_id", "timestamp", "device"]])
    with pytest.raises(DataError, match="no eval.parquet"):
        read_split_columns(ex, "eval", ["user_id"])


def test_cap_train_impressions_keeps_a_seeded_sample_of_train_rows_and_every_eval_row():
    from recflow.training.history_ranking import cap_train_impressions

    is_train = np.array([True] * 50 + [False] * 7 + [True] * 20)
    assert cap_train_impressions(is_train, None, 0) is None
    assert cap_train_impressions(is_train, 70, 0) is None  # 70 train rows: nothing to cap
    keep, n_train = cap_train_impressions(is_train, 30, 3)
    assert n_train == 70 and len(keep) == 37 and (np.diff(keep) > 0).all()
    assert is_train[keep].sum() == 30 and set(np.flatnonzero(~is_train)) <= set(keep)
    again, _ = cap_train_impressions(is_train, 30, 3)
    other, _ = cap_train_impressions(is_train, 30, 4)
    np.testing.assert_array_equal(keep, again)
    assert not np.array_equal(keep, other)
