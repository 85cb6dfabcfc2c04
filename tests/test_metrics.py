"""Ranking metrics: hand-computed cases, a reference implementation (scikit-learn), ground truth."""

import math

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import ndcg_score

from recflow.evaluation.metrics import (
    aggregate,
    catalog_coverage,
    ground_truth,
    interacted_items,
    per_user_metrics,
)


def test_hand_computed_single_user():
    # hits at ranks 2 and 4 of 5; 3 relevant items, one never recommended
    recs = [["a", "b", "c", "d", "e"]]
    truth = [{"b", "d", "z"}]
    row = per_user_metrics(recs, truth, k=5).iloc[0]
    dcg = 1 / math.log2(3) + 1 / math.log2(5)
    idcg = 1 + 1 / math.log2(3) + 1 / math.log2(4)
    assert row["precision@5"] == pytest.approx(2 / 5)
    assert row["recall@5"] == pytest.approx(2 / 3)
    assert row["ndcg@5"] == pytest.approx(dcg / idcg)
    assert row["mrr@5"] == pytest.approx(1 / 2)
    assert row["hit@5"] == 1.0


def test_cutoff_ideal_dcg_uses_min_of_relevant_and_k():
    # 5 relevant items, k = 2, both top slots hit -> a perfect NDCG@2 of 1 (IDCG over min(5, 2) = 2 slots)
    row = per_user_metrics([["a", "b", "c"]], [{"a", "b", "c", "d", "e"}], k=2).iloc[0]
    assert row["ndcg@2"] == pytest.approx(1.0)
    assert row["recall@2"] == pytest.approx(2 / 5)
    assert row["precision@2"] == pytest.approx(1.0)


def test_misses_short_lists_duplicates_and_unscorable_users():
    recs = [["x", "y"], ["a", "a", "b"], ["q"], []]
    truth = [{"a"}, {"a"}, set(), {"a"}]
    table = per_user_metrics(recs, truth, k=3, user_ids=["u1", "u2", "u3", "u4"])
    assert list(table.index) == ["u1", "u2", "u3", "u4"]
    assert table.loc["u1"].tolist() == [0.0, 0.0, 0.0, 0.0, 0.0]
    # the duplicate "a" at rank 2 is not a second hit
    assert table.loc["u2", "precision@3"] == pytest.approx(1 / 3)
    assert table.loc["u2", "ndcg@3"] == pytest.approx(1.0)
    assert table.loc["u3"].isna().all()  # nothing relevant: cannot be scored
    assert table.loc["u4", "hit@3"] == 0.0  # an empty list scores zero, not NaN
    agg = aggregate(table)
    assert agg["users"] == 3
    assert agg["precision@3"] == pytest.approx((0 + 1 / 3 + 0) / 3)


def test_mismatched_lengths_raise():
    with pytest.raises(ValueError, match="2 recommendation lists but 1"):
        per_user_metrics([["a"], ["b"]], [{"a"}], k=1)
    with pytest.raises(ValueError, match="k must be positive"):
        per_user_metrics([["a"]], [{"a"}], k=0)


def test_against_reference_implementations_on_random_data():
    rng = np.random.default_rng(7)
    n_users, n_items, k = 300, 60, 10
    catalog = [f"i{j}" for j in range(n_items)]
    recs, truth = [], []
    for _ in range(n_users):
        order = rng.permutation(n_items)[:k]
        recs.append([catalog[j] for j in order])
        relevant = rng.choice(n_items, size=int(rng.integers(1, 15)), replace=False)
        truth.append({catalog[j] for j in relevant})
    table = per_user_metrics(recs, truth, k)

    y_true = np.zeros((n_users, n_items))
    y_score = np.zeros((n_users, n_items))
    for u in range(n_users):
        for j in truth[u]:
            y_true[u, catalog.index(j)] = 1
        for rank, item in enumerate(recs[u]):
            y_score[u, catalog.index(item)] = k - rank  # distinct positive scores for the top k, 0 elsewhere
    expected = [ndcg_score(y_true[u : u + 1], y_score[u : u + 1], k=k) for u in range(n_users)]
    np.testing.assert_allclose(table[f"ndcg@{k}"].to_numpy(), expected, rtol=1e-9)

    # precision/recall/MRR from an independent loop
    for u in (0, 17, 123, 299):
        hits = [item in truth[u] for item in recs[u]]
        assert table.iloc[u][f"precision@{k}"] == pytest.approx(sum(hits) / k)
        assert table.iloc[u][f"recall@{k}"] == pytest.approx(sum(hits) / len(truth[u]))
        first = next((i + 1 for i, h in enumerate(hits) if h), None)
        assert table.iloc[u][f"mrr@{k}"] == pytest.approx(1 / first if first else 0.0)


def test_vectorised_on_thousands_of_users_is_fast():
    import time

    rng = np.random.default_rng(0)
    recs = [[f"i{j}" for j in rng.integers(0, 5000, 20)] for _ in range(20000)]
    truth = [{f"i{j}" for j in rng.integers(0, 5000, 5)} for _ in range(20000)]
    start = time.perf_counter()
    table = per_user_metrics(recs, truth, k=20)
    assert time.perf_counter() - start < 5.0
    assert len(table) == 20000


def test_catalog_coverage():
    assert catalog_coverage([["a", "b"], ["b", "c"], ["zz"]], ["a", "b", "c", "d"]) == pytest.approx(0.75)
    assert math.isnan(catalog_coverage([["a"]], []))


def _events(rows):
    return pd.DataFrame(rows, columns=["user_id", "item_id", "event_type"])


def test_ground_truth_positives_first_then_views_and_exclusion():
    events = _events(
        [
            ("u1", "a", "view"),
            ("u1", "b", "click"),
            ("u1", "c", "purchase"),
            ("u1", "d", "impression"),
            ("u2", "e", "view"),
            ("u2", "f", "impression"),
            ("u3", "g", "impression"),
            ("u3", "h", "remove_from_cart"),
            ("u4", "i", "add_to_cart"),
        ]
    )
    truth = ground_truth(events)
    assert truth == {"u1": {"b", "c"}, "u2": {"e"}, "u4": {"i"}}
    # training items are dropped; a user left with nothing disappears
    assert ground_truth(events, exclude={"u1": {"b"}, "u4": {"i"}}) == {"u1": {"c"}, "u2": {"e"}}


def test_interacted_items_ignores_impressions():
    events = _events([("u1", "a", "impression"), ("u1", "b", "view"), ("u2", "c", "purchase")])
    assert interacted_items(events) == {"u1": {"b"}, "u2": {"c"}}
