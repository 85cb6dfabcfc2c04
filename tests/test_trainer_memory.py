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


def test_cap_impressions_keeps_a_seeded_sample_of_train_rows_and_every_eval_row():
    from recflow.training.history_ranking import cap_impressions

    is_train = np.array([True] * 50 + [False] * 7 + [True] * 20)
    assert cap_impressions(is_train, None, 0) is None
    assert cap_impressions(is_train, 70, 0) is None  # 70 train rows: nothing to cap
    assert cap_impressions(is_train, 70, 0, eval_cap=7) is None  # 7 eval rows: nothing to cap either
    sample = cap_impressions(is_train, 30, 3)
    keep = sample.rows
    assert sample.train_of == 70 and sample.eval_of == 7 and len(keep) == 37 and (np.diff(keep) > 0).all()
    assert sample.report("train") == {"kept": 30, "of": 70, "cap": 30} and sample.report("eval") is None
    assert is_train[keep].sum() == 30 and set(np.flatnonzero(~is_train)) <= set(keep)
    again = cap_impressions(is_train, 30, 3).rows
    other = cap_impressions(is_train, 30, 4).rows
    np.testing.assert_array_equal(keep, again)
    assert not np.array_equal(keep, other)


def test_cap_impressions_eval_cap_samples_eval_rows_and_leaves_the_train_sample_unchanged():
    from recflow.training.history_ranking import cap_impressions

    rng = np.random.default_rng(0)
    is_train = rng.random(400) < 0.7
    n_eval = int((~is_train).sum())
    only_eval = cap_impressions(is_train, None, 5, eval_cap=40)
    assert only_eval is not None and only_eval.eval_of == n_eval and only_eval.train_cap is None
    assert only_eval.report("eval") == {"kept": 40, "of": n_eval, "cap": 40} and only_eval.report("train") is None
    kept = np.zeros(len(is_train), bool)
    kept[only_eval.rows] = True
    assert kept[is_train].all() and kept[~is_train].sum() == 40  # every train row, 40 eval rows
    both = cap_impressions(is_train, 60, 5, eval_cap=40)
    train_only = cap_impressions(is_train, 60, 5)
    in_both = np.zeros(len(is_train), bool)
    in_both[both.rows] = True
    in_train_only = np.zeros(len(is_train), bool)
    in_train_only[train_only.rows] = True
    # the same train sample with or without the eval cap; the same eval sample with or without the train cap
    np.testing.assert_array_equal(in_both & is_train, in_train_only & is_train)
    np.testing.assert_array_equal(in_both & ~is_train, kept & ~is_train)
    assert not np.array_equal(cap_impressions(is_train, None, 6, eval_cap=40).rows, only_eval.rows)
