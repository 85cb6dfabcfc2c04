"""The baselines' integer-code paths (issue 17: no per-event Python string or frame copy) give exactly what the
previous pandas-on-strings implementations gave: the interaction matrix, the count baselines' histories, the
co-view graph and every baseline's lists, on logs with string and integer ids, ties, session ids with nulls,
users without sessions and missing timestamps. The reference functions below are the previous code."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from recflow.baselines import (
    COUNT_EVENT_WEIGHTS,
    DEFAULT_EVENT_WEIGHTS,
    ALSRecommender,
    CoViewRecommender,
    ItemKNNRecommender,
    MostRecentRecommender,
    MostViewedRecommender,
    _keep_top_per_row,
    interaction_matrix,
    string_codes,
)

T0 = pd.Timestamp("2026-01-05", tz="UTC")
KINDS = ["view", "click", "add_to_cart", "purchase", "impression", "remove_from_cart"]


def _log(seed: int, int_ids: bool = False, nat: bool = False, sessions: bool = True) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    n = 3000
    users = rng.integers(0, 150, n)
    items = rng.integers(0, 120, n)
    frame = pd.DataFrame({
        "user_id": users if int_ids else np.array([f"u{u}" for u in users], dtype=object),
        "item_id": items if int_ids else np.array([f"i{i}" for i in items], dtype=object),
        "event_type": rng.choice(KINDS, n, p=[0.35, 0.2, 0.1, 0.05, 0.25, 0.05]),
        # minutes on a coarse grid: many equal times (ties keep log order), gaps around 30 minutes
        "timestamp": T0 + pd.to_timedelta(rng.integers(0, 400, n) * 7, unit="m"),
    })
    if nat:
        frame.loc[rng.random(n) < 0.03, "timestamp"] = pd.NaT
    if sessions:
        session = np.array([f"s{s}" for s in rng.integers(0, 400, n)], dtype=object)
        session[rng.random(n) < 0.3] = None
        frame["session_id"] = session
    return frame


def ref_interaction_matrix(events, weights=None, items=None):
    w = dict(DEFAULT_EVENT_WEIGHTS if weights is None else weights)
    ev = events[["user_id", "item_id", "event_type"]].astype({"user_id": str, "item_id": str})
    value = ev["event_type"].map(w).fillna(0.0).astype(np.float64)
    ev = ev.assign(value=value)[value > 0]
    item_ids = np.array(sorted(set(ev["item_id"])) if items is None else sorted(set(map(str, items))), dtype=object)
    ev = ev[ev["item_id"].isin(item_ids)]
    user_ids = np.array(sorted(set(ev["user_id"])), dtype=object)
    rows = pd.Index(user_ids).get_indexer(ev["user_id"])
    cols = pd.Index(item_ids).get_indexer(ev["item_id"])
    matrix = sp.csr_matrix((ev["value"].to_numpy(), (rows, cols)), shape=(len(user_ids), len(item_ids)))
    matrix.sum_duplicates()
    return matrix, user_ids, item_ids


def ref_weighted_frame(train, weights):
    columns = ["user_id", "item_id", "event_type", "timestamp"]
    if "session_id" in train.columns:
        columns.append("session_id")
    ev = train[columns].astype({"user_id": str, "item_id": str})
    ev = ev.assign(timestamp=pd.to_datetime(ev["timestamp"], utc=True), order=np.arange(len(ev), dtype=np.int64))
    ev = ev[ev["event_type"].map(weights).fillna(0.0) > 0]
    return ev.sort_values(["timestamp", "order"], kind="mergesort").reset_index(drop=True)


def ref_histories(ev):
    by_user = ev.sort_values("user_id", kind="mergesort")
    users = by_user["user_id"].to_numpy()
    item_list = by_user["item_id"].tolist()
    kind_list = by_user["event_type"].astype(str).tolist()
    bounds = np.flatnonzero(users[1:] != users[:-1]) + 1
    starts = np.concatenate([[0], bounds]).astype(int)
    ends = np.concatenate([bounds, [len(users)]]).astype(int)
    return {str(users[a]): (item_list[a:b], kind_list[a:b]) for a, b in zip(starts, ends, strict=True)}


def ref_coview_similarity(train, items, gap_minutes, neighbors):
    model = MostViewedRecommender(event_weights=COUNT_EVENT_WEIGHTS)
    model.fit(train, items)  # for the popularity ranking only
    rank = model._rank
    ev = ref_weighted_frame(train, COUNT_EVENT_WEIGHTS)
    item_ids = np.array(sorted(rank), dtype=object)
    pos = {item: i for i, item in enumerate(item_ids)}
    by_user = ev.sort_values(["user_id", "timestamp", "order"], kind="mergesort")
    gap = by_user.groupby("user_id", sort=False)["timestamp"].diff()
    new_basket = gap.isna() | (gap > pd.Timedelta(minutes=gap_minutes))
    number = new_basket.groupby(by_user["user_id"], sort=False).cumsum()
    keys = ("gap:" + by_user["user_id"] + ":" + number.astype(str)).reindex(ev.index)
    if "session_id" in ev.columns:
        session = ev["session_id"]
        keys = keys.where(session.isna(), "session:" + session.astype(str))
    baskets = pd.factorize(keys)[0]
    cols = np.array([pos[i] for i in ev["item_id"]], dtype=np.int64)
    n_items = len(item_ids)
    basket_items = sp.csr_matrix((np.ones(len(cols)), (baskets, cols)), shape=(int(baskets.max()) + 1, n_items))
    basket_items.sum_duplicates()
    basket_items.data[:] = 1.0
    counts = (basket_items.T @ basket_items).tocsr()
    per_item = counts.diagonal()
    counts.setdiag(0.0)
    counts.eliminate_zeros()
    coo = counts.tocoo()
    norm = np.sqrt(per_item[coo.row] * per_item[coo.col])
    similarity = sp.csr_matrix((coo.data / norm, (coo.row, coo.col)), shape=(n_items, n_items))
    return item_ids, _keep_top_per_row(similarity, neighbors)


def _same_sparse(a: sp.spmatrix, b: sp.spmatrix) -> None:
    a, b = sp.csr_matrix(a), sp.csr_matrix(b)
    a.sort_indices()
    b.sort_indices()
    assert a.shape == b.shape
    np.testing.assert_array_equal(a.indptr, b.indptr)
    np.testing.assert_array_equal(a.indices, b.indices)
    np.testing.assert_array_equal(a.data, b.data)  # bit for bit


CASES = [dict(seed=1), dict(seed=2, int_ids=True), dict(seed=3, nat=True), dict(seed=4, sessions=False)]


def test_string_codes_group_and_order_as_astype_str() -> None:
    values = np.array(["b", 1, "1", None, "a", 2.5, "b", float("nan")], dtype=object)
    codes, ids = string_codes(values)
    text = pd.Series(values).astype(str)
    assert ids.tolist() == sorted(set(text))
    assert ids[codes].tolist() == text.tolist()
    codes, ids = string_codes(np.array([], dtype=object))
    assert len(codes) == 0 and len(ids) == 0


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("items", [None, "subset"])
def test_interaction_matrix_equals_the_string_frame_version(case: dict[str, Any], items: Any) -> None:
    train = _log(**case)
    chosen = None if items is None else sorted({str(i) for i in train["item_id"]})[::2] + ["never-seen"]
    got, users, item_ids = interaction_matrix(train, items=chosen)
    ref, ref_users, ref_items = ref_interaction_matrix(train, items=chosen)
    assert users.tolist() == ref_users.tolist() and item_ids.tolist() == ref_items.tolist()
    _same_sparse(got, ref)


@pytest.mark.parametrize("case", CASES)
def test_count_histories_equal_the_string_frame_version(case: dict[str, Any]) -> None:
    train = _log(**case)
    model = MostViewedRecommender().fit(train)
    ref = ref_histories(ref_weighted_frame(train, COUNT_EVENT_WEIGHTS))
    assert list(model._histories) == list(ref)  # same users, same order (serving enumerates them)
    assert {u: model._histories[u] for u in model._histories} == ref
    assert model._histories.get("nobody", None) is None and len(model._histories) == len(ref)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("gap", [5.0, 30.0, 1440.0])
def test_coview_graph_equals_the_string_key_baskets(case: dict[str, Any], gap: float) -> None:
    train = _log(**case)
    model = CoViewRecommender(session_gap_minutes=gap, neighbors=7).fit(train)
    item_ids, similarity = ref_coview_similarity(train, None, gap, 7)
    assert model.item_ids.tolist() == item_ids.tolist()
    _same_sparse(model.similarity, similarity)


@pytest.mark.parametrize("case", CASES)
def test_every_list_is_unchanged(case: dict[str, Any]) -> None:
    """Lists of the count baselines from the stored histories equal those from the reference histories, and
    the matrix baselines fitted on the reference matrix give the same lists."""
    train = _log(**case)
    users = sorted({str(u) for u in train["user_id"]})[:60] + ["cold-user"]
    exclude = {u: {f"i{j}" for j in range(0, 120, 9)} for u in users[::3]}
    for cls in (MostViewedRecommender, MostRecentRecommender):
        model = cls().fit(train)
        got = model.recommend(users, 10, exclude)
        model._histories = ref_histories(ref_weighted_frame(train, COUNT_EVENT_WEIGHTS))
        assert got == model.recommend(users, 10, exclude), cls.__name__
    matrix, ref_users, ref_items = ref_interaction_matrix(train)
    knn = ItemKNNRecommender().fit(train)
    _same_sparse(knn._matrix, matrix)
    als = ALSRecommender().fit(train)
    assert list(als._user_pos) == ref_users.tolist() and als.item_ids.tolist() == ref_items.tolist()


def ref_popularity(train, items, half_life_days):
    ev = train
    chosen = ev[ev["event_type"].isin(["click", "add_to_cart", "purchase"])]
    if chosen.empty:
        chosen = ev[ev["event_type"] == "view"]
    weight = pd.Series(1.0, index=chosen.index)
    if half_life_days is not None and not chosen.empty:
        ts = pd.to_datetime(chosen["timestamp"], utc=True)
        weight = 0.5 ** ((ts.max() - ts).dt.total_seconds() / 86400.0 / half_life_days)
    counts = weight.groupby(chosen["item_id"].astype(str)).sum()
    universe = set(ev["item_id"].astype(str))
    if items is not None:
        universe |= set(items["item_id"].astype(str))
    item_ids = np.array(sorted(universe), dtype=object)
    scores = counts.reindex(item_ids, fill_value=0.0).to_numpy(dtype=np.float64)
    order = np.lexsort((np.arange(len(item_ids)), -scores))
    return item_ids[order], scores[order]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("half_life", [None, 3.0])
@pytest.mark.parametrize("with_items", [False, True])
@pytest.mark.parametrize("views_only", [False, True])
def test_popularity_equals_the_string_groupby(case: dict[str, Any], half_life: Any, with_items: bool,
                                              views_only: bool) -> None:
    from recflow.baselines import PopularityRecommender

    train = _log(**case)
    if views_only:  # no positive event: views are counted
        train = train[~train["event_type"].isin(["click", "add_to_cart", "purchase"])]
    if half_life is not None:
        train = train[train["timestamp"].notna()]
    items = pd.DataFrame({"item_id": [f"i{j}" for j in range(0, 200, 3)]}) if with_items else None
    model = PopularityRecommender(half_life_days=half_life).fit(train, items)
    ids, scores = ref_popularity(train, items, half_life)
    assert model.item_ids.tolist() == ids.tolist()
    np.testing.assert_array_equal(model.scores, scores)  # bit for bit
