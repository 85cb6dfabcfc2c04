"""Baseline recommenders: fit/recommend, exclusion, cold users, determinism, and that the collaborative and
content baselines find the structure of a synthetic shop that popularity cannot."""

import numpy as np
import pandas as pd
import pytest

from recflow.baselines import (
    BASELINES,
    ALSRecommender,
    BPRRecommender,
    ContentBasedRecommender,
    CoViewRecommender,
    EASERecommender,
    ItemKNNRecommender,
    MostRecentRecommender,
    MostViewedRecommender,
    PopularityRecommender,
    interaction_matrix,
    item_feature_tokens,
    make_baseline,
    top_k_indices,
)
from recflow.errors import ConfigError, DataError
from recflow.evaluation.metrics import aggregate, ground_truth, interacted_items, per_user_metrics
from recflow.recommender import Recommender

N_GROUPS, ITEMS_PER_GROUP, N_USERS = 4, 25, 240
T0 = pd.Timestamp("2026-01-05", tz="UTC")


def structured_shop(seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(train, test, items): each user belongs to a taste group and interacts with that group's item block;
    one globally popular block-0 item gets extra traffic from everyone. Test events are later than train."""
    rng = np.random.default_rng(seed)
    items = pd.DataFrame(
        {
            "item_id": [f"i{j:03d}" for j in range(N_GROUPS * ITEMS_PER_GROUP)],
            "category": [f"cat{j // ITEMS_PER_GROUP}" for j in range(N_GROUPS * ITEMS_PER_GROUP)],
            "brand": [f"brand{j % 3}" for j in range(N_GROUPS * ITEMS_PER_GROUP)],
            "price": rng.uniform(5, 200, N_GROUPS * ITEMS_PER_GROUP).round(2),
        }
    )
    rows = []
    for u in range(N_USERS):
        group = u % N_GROUPS
        block = np.arange(group * ITEMS_PER_GROUP, (group + 1) * ITEMS_PER_GROUP)
        chosen = rng.choice(block, size=12, replace=False)
        for n, j in enumerate(chosen):
            when = T0 + pd.Timedelta(hours=int(rng.integers(0, 24 * 10)) if n < 8 else 24 * 11 + n)
            kind = rng.choice(["view", "click", "add_to_cart", "purchase"], p=[0.4, 0.4, 0.1, 0.1])
            rows.append((f"u{u:03d}", f"i{j:03d}", str(kind), when))
        rows.append((f"u{u:03d}", "i000", "click", T0 + pd.Timedelta(hours=int(rng.integers(0, 240)))))
    events = pd.DataFrame(rows, columns=["user_id", "item_id", "event_type", "timestamp"])
    cut = T0 + pd.Timedelta(days=10)
    return events[events["timestamp"] < cut], events[events["timestamp"] >= cut], items


@pytest.fixture(scope="module")
def shop():
    return structured_shop()


# ALS hyper-parameters for these tiny logs (the defaults are tuned for thousands of users)
TINY_ALS = {"factors": 8, "regularization": 0.05, "alpha": 2.0}
ALL = [PopularityRecommender, ALSRecommender, ItemKNNRecommender, ContentBasedRecommender, BPRRecommender,
       EASERecommender, MostViewedRecommender, MostRecentRecommender, CoViewRecommender]


def _fit(cls, train, items):
    if cls is ALSRecommender:
        return cls(**TINY_ALS, iterations=10, seed=1).fit(train, items)
    if cls is BPRRecommender:
        return cls(factors=8, iterations=50, seed=1).fit(train, items)
    if cls is EASERecommender:
        return cls(l2=10.0).fit(train, items)
    return cls().fit(train, items)


@pytest.mark.parametrize("cls", ALL)
def test_protocol_k_items_exclude_and_cold_users(cls, shop):
    train, _, items = shop
    model = _fit(cls, train, items)
    assert isinstance(model, Recommender)
    users = ["u001", "u002", "nobody"]
    seen = interacted_items(train)
    exclude = {u: seen.get(u, set()) for u in users} | {"nobody": {"i000"}}
    recs = model.recommend(users, 10, exclude)
    assert len(recs) == 3
    for user, items_ in zip(users, recs, strict=True):
        assert len(items_) == 10 and len(set(items_)) == 10
        assert not set(items_) & exclude[user]
    # a cold user gets exactly what popularity gives them
    popularity = PopularityRecommender().fit(train, items)
    assert recs[2] == popularity.recommend(["nobody"], 10, {"nobody": {"i000"}})[0]


@pytest.mark.parametrize("cls", ALL)
def test_deterministic_refit(cls, shop):
    train, _, items = shop
    users = [f"u{u:03d}" for u in range(0, 40, 3)]
    assert _fit(cls, train, items).recommend(users, 5) == _fit(cls, train, items).recommend(users, 5)


def test_list_is_short_only_when_the_catalog_is_exhausted(shop):
    train, _, items = shop
    model = PopularityRecommender().fit(train, items)
    everything = set(items["item_id"])
    assert model.recommend(["u001"], 5, {"u001": everything - {"i007"}}) == [["i007"]]


def _ndcg(model, train, test, k=10):
    seen = interacted_items(train)
    truth = ground_truth(test, seen)
    users = sorted(truth)
    recs = model.recommend(users, k, seen)
    return aggregate(per_user_metrics(recs, [truth[u] for u in users], k))[f"ndcg@{k}"]


def test_collaborative_and_content_baselines_beat_popularity_on_a_structured_log(shop):
    train, test, items = shop
    pop = _ndcg(PopularityRecommender().fit(train, items), train, test)
    als = _ndcg(ALSRecommender(**TINY_ALS, iterations=15, seed=0).fit(train, items), train, test)
    knn = _ndcg(ItemKNNRecommender(neighbors=20).fit(train, items), train, test)
    content = _ndcg(ContentBasedRecommender().fit(train, items), train, test)
    bpr = _ndcg(BPRRecommender(factors=8, iterations=100, seed=0).fit(train, items), train, test)
    ease = _ndcg(EASERecommender(l2=10.0).fit(train, items), train, test)
    # popularity ranks other groups' items as often as the user's own; the others learn the taste groups
    assert als > 3 * pop, (als, pop)
    assert knn > 3 * pop, (knn, pop)
    assert content > 3 * pop, (content, pop)
    assert bpr > 3 * pop, (bpr, pop)
    assert ease > 3 * pop, (ease, pop)


def test_ease_weights_have_a_zero_diagonal_and_match_the_closed_form(shop):
    train, _, items = shop
    model = EASERecommender(l2=5.0).fit(train, items)
    x = model._matrix.toarray()
    gram = x.T @ x + 5.0 * np.eye(x.shape[1])
    b = model.weights
    assert np.allclose(np.diag(b), 0.0)
    # the solution of min ||X - XB||^2 + l2 ||B||^2 s.t. diag(B)=0 satisfies (X'X + l2 I) B = X'X - diag(mu)
    residual = gram @ b - (x.T @ x)
    off_diagonal = residual - np.diag(np.diag(residual))
    assert np.allclose(off_diagonal, 0.0, atol=1e-8)


def test_popularity_counts_positive_events_and_decays_with_recency():
    old, new = T0, T0 + pd.Timedelta(days=30)
    events = pd.DataFrame(
        {
            "user_id": ["a", "b", "c", "d", "e", "f"],
            "item_id": ["old", "old", "old", "new", "new", "viewed"],
            "event_type": ["click", "purchase", "add_to_cart", "click", "click", "view"],
            "timestamp": [old, old, old, new, new, new],
        }
    )
    assert PopularityRecommender().fit(events).recommend(["x"], 3) == [["old", "new", "viewed"]]
    decayed = PopularityRecommender(half_life_days=7).fit(events)
    assert decayed.recommend(["x"], 2) == [["new", "old"]]
    # without any positive event, views are counted
    only_views = events.assign(event_type="view")
    assert PopularityRecommender().fit(only_views).recommend(["x"], 1) == [["old"]]


def test_content_based_follows_metadata_and_reaches_unseen_items():
    items = pd.DataFrame(
        {
            "item_id": ["s1", "s2", "s3", "t1", "t2"],
            "category": ["shoes", "shoes", "shoes", "toys", "toys"],
            "attributes": ["color=red;size=42", "color=red", None, "age=3+", "age=3+"],
        }
    )
    events = pd.DataFrame(
        {
            "user_id": ["u", "v", "v"],
            "item_id": ["s1", "t1", "t1"],
            "event_type": ["purchase", "click", "click"],
        }
    )
    model = ContentBasedRecommender().fit(events, items)
    recs = model.recommend(["u"], 2, {"u": {"s1"}})[0]
    assert recs == ["s2", "s3"]  # s2 shares the colour too; nobody interacted with either
    assert model.recommend(["v"], 1, {"v": {"t1"}}) == [["t2"]]


def test_content_based_without_metadata_is_popularity(shop):
    train, _, items = shop
    bare = items[["item_id"]]
    content = ContentBasedRecommender().fit(train, bare)
    popularity = PopularityRecommender().fit(train, bare)
    users = ["u001", "u002"]
    assert content.recommend(users, 5) == popularity.recommend(users, 5)
    assert ContentBasedRecommender().fit(train, None).recommend(users, 5) == popularity.recommend(users, 5)


def test_item_feature_tokens():
    items = pd.DataFrame(
        {
            "item_id": ["a", "b"],
            "category": ["x", None],
            "brand": [None, "acme"],
            "attributes": ["k=v; z=1", ""],
            "price": [1.0, 10.0],
        }
    )
    tokens = item_feature_tokens(items)
    assert tokens[0] == ["category=x", "attr:k=v", "attr:z=1", "price_bucket=0"]
    assert tokens[1] == ["brand=acme", "price_bucket=1"]


def test_interaction_matrix_sums_weights_and_skips_impressions():
    events = pd.DataFrame(
        {
            "user_id": ["u", "u", "u", "v"],
            "item_id": ["a", "a", "b", "c"],
            "event_type": ["view", "purchase", "impression", "click"],
        }
    )
    matrix, users, items = interaction_matrix(events)
    assert list(users) == ["u", "v"] and list(items) == ["a", "c"]
    assert matrix.toarray().tolist() == [[9.0, 0.0], [0.0, 2.0]]


def test_top_k_ties_and_exclusions():
    scores = np.array([0.5, 0.9, 0.5, -np.inf, 0.5, np.nan])
    tiebreak = np.array([3, 0, 1, 2, 0, 5])
    assert top_k_indices(scores, 3, tiebreak).tolist() == [1, 4, 2]
    assert top_k_indices(scores, 10, tiebreak).tolist() == [1, 4, 2, 0]  # -inf / NaN never returned


# ---------------------------------------------------------------------------------- count baselines


def _log(rows, sessions=False):
    columns = ["user_id", "item_id", "event_type", "minute"] + (["session_id"] if sessions else [])
    frame = pd.DataFrame(rows, columns=columns)
    frame["timestamp"] = T0 + pd.to_timedelta(frame.pop("minute"), unit="min")
    return frame


# a views x twice (last at minute 2), y twice (last at 4), z once; b clicks p twice and buys q; c only saw an
# impression. Popularity (positive events): p, q, then the rest by id: w, x, y, z.
COUNT_LOG = _log(
    [
        ("a", "x", "view", 0), ("a", "y", "view", 1), ("a", "x", "view", 2), ("a", "z", "view", 3),
        ("a", "y", "view", 4), ("a", "w", "impression", 5),
        ("b", "p", "click", 0), ("b", "p", "click", 1), ("b", "q", "purchase", 2),
        ("c", "z", "impression", 0),
    ]
)


def test_most_viewed_counts_breaks_ties_by_recency_and_pads_with_popularity():
    model = MostViewedRecommender().fit(COUNT_LOG)
    users = ["a", "b", "c", "nobody"]
    assert model.recommend(users, 5) == [
        ["y", "x", "z", "p", "q"],  # x and y both twice: y is more recent
        ["p", "q", "w", "x", "y"],
        ["p", "q", "w", "x", "y"],  # only an impression: nothing counted, popularity
        ["p", "q", "w", "x", "y"],  # unknown user: popularity
    ]
    # exclusions are honoured; a's list runs short only because the catalog has 4 items left
    assert model.recommend(["a", "b"], 5, {"a": {"y", "p"}, "b": {"p"}}) == [
        ["x", "z", "q", "w"],
        ["q", "w", "x", "y", "z"],
    ]
    # event weights are configurable: a purchase worth 5 views, clicks not counted
    weighted = MostViewedRecommender(event_weights={"view": 1.0, "purchase": 5.0}).fit(COUNT_LOG)
    assert weighted.recommend(["b"], 3) == [["q", "p", "w"]]


def test_most_recent_lists_distinct_items_latest_first():
    model = MostRecentRecommender().fit(COUNT_LOG)
    assert model.recommend(["a", "b", "c", "nobody"], 4) == [
        ["y", "z", "x", "p"],
        ["q", "p", "w", "x"],
        ["p", "q", "w", "x"],
        ["p", "q", "w", "x"],
    ]
    assert model.recommend(["a"], 4, {"a": {"y"}}) == [["z", "x", "p", "q"]]


def test_recommend_from_history_serves_an_unseen_user_without_refitting():
    viewed = MostViewedRecommender().fit(COUNT_LOG)
    recent = MostRecentRecommender().fit(COUNT_LOG)
    # a plain list is oldest first, every entry a view
    assert recent.recommend_from_history(["x", "z"], 3) == ["z", "x", "p"]
    assert viewed.recommend_from_history(["x", "z", "x"], 3) == ["x", "z", "p"]
    # timestamps reorder the history (equal times keep the list's order)
    assert recent.recommend_from_history(["x", "z"], 3, timestamps=[T0 + pd.Timedelta(hours=1), T0]) == [
        "x", "z", "p"
    ]
    assert recent.recommend_from_history(["x", "z"], 3, timestamps=[T0, T0]) == ["z", "x", "p"]
    # impressions do not count, unknown items are ignored, exclusions are honoured
    assert viewed.recommend_from_history(
        ["x", "nope", "z", "z"], 3, event_types=["impression", "view", "view", "view"]
    ) == ["z", "p", "q"]
    assert viewed.recommend_from_history(["z", "z", "x"], 3, exclude={"z", "p"}) == ["x", "q", "w"]
    assert viewed.recommend_from_history([], 2) == ["p", "q"]
    # the stored user's recommendation equals the one from their history
    history = COUNT_LOG[COUNT_LOG["user_id"] == "a"]
    assert viewed.recommend_from_history(
        history["item_id"].tolist(), 5, event_types=history["event_type"].tolist(),
        timestamps=history["timestamp"].tolist(),
    ) == viewed.recommend(["a"], 5)[0]
    with pytest.raises(DataError, match="event types"):
        viewed.recommend_from_history(["x", "z"], 3, event_types=["view"])
    with pytest.raises(RuntimeError, match="fit"):
        MostViewedRecommender().recommend_from_history(["x"], 3)


def test_under_the_exclude_train_items_protocol_count_baselines_are_popularity(shop):
    train, _, items = shop
    seen = interacted_items(train)
    users = sorted(seen)[:30]
    popular = PopularityRecommender().fit(train, items).recommend(users, 10, seen)
    assert MostViewedRecommender().fit(train, items).recommend(users, 10, seen) == popular
    assert MostRecentRecommender().fit(train, items).recommend(users, 10, seen) == popular


# sessions s1 {A, B}, s2 {A, B, C}, s3 {C, D}, s4 {A}: baskets per item A 3, B 2, C 2, D 1; together AB 2,
# AC 1, BC 1, CD 1. Cosine: AB 2/sqrt(6) = 0.816, AC 1/sqrt(6) = 0.408, BC 1/2 = 0.5, CD 1/sqrt(2) = 0.707.
# Popularity (no positive events: views): A, B, C, D.
COVIEW_LOG = _log(
    [
        ("u1", "A", "view", 0, "s1"), ("u1", "B", "view", 1, "s1"),
        ("u2", "A", "view", 0, "s2"), ("u2", "B", "view", 1, "s2"), ("u2", "C", "view", 2, "s2"),
        ("u3", "C", "view", 0, "s3"), ("u3", "D", "view", 1, "s3"),
        ("u4", "A", "view", 0, "s4"),
    ],
    sessions=True,
)


def test_coview_cosine_of_sessions_with_recency_decay():
    model = CoViewRecommender(decay=0.5).fit(COVIEW_LOG)
    sim = pd.DataFrame(model.similarity.toarray(), index=model.item_ids, columns=model.item_ids)
    assert sim.loc["A", "B"] == pytest.approx(2 / np.sqrt(6))
    assert sim.loc["A", "C"] == pytest.approx(1 / np.sqrt(6))
    assert sim.loc["B", "C"] == pytest.approx(0.5)
    assert sim.loc["C", "D"] == pytest.approx(1 / np.sqrt(2))
    assert sim.loc["A", "D"] == 0 and np.all(np.diag(sim) == 0) and np.allclose(sim, sim.T)
    # one item: its neighbours, then popularity (A itself is not excluded unless asked)
    assert model.recommend_from_history(["A"], 3) == ["B", "C", "A"]
    assert model.recommend_from_history(["A"], 3, exclude={"A"}) == ["B", "C", "D"]
    # history C then A (A latest, weight 1; C weight 0.5): B 0.816 + 0.25, C 0.408, D 0.354, A 0.204
    assert model.recommend_from_history(["C", "A"], 4) == ["B", "C", "D", "A"]
    # u3's stored history is C, D (D latest): C 0.707, D 0.5 * 0.707 = 0.354, B 0.5 * 0.5 = 0.25
    assert model.recommend(["u3", "nobody"], 3) == [["C", "D", "B"], ["A", "B", "C"]]
    # only the strongest neighbour kept per item
    top1 = CoViewRecommender(neighbors=1).fit(COVIEW_LOG)
    assert top1.recommend_from_history(["C"], 2) == ["D", "A"]


def test_coview_without_session_ids_splits_a_users_events_at_gaps():
    log = _log([("v", "A", "view", 0), ("v", "B", "view", 10), ("v", "C", "view", 300), ("w", "C", "view", 0)])
    model = CoViewRecommender(session_gap_minutes=30).fit(log)
    assert model.recommend_from_history(["A"], 2) == ["B", "C"]  # C: popularity padding (2 views)
    assert model.recommend_from_history(["C"], 1) == ["C"]  # no neighbour: popularity
    wide = CoViewRecommender(session_gap_minutes=600).fit(log)
    assert wide.recommend_from_history(["C"], 3, exclude={"C"}) == ["A", "B"]  # A and B tie: more popular first
    with pytest.raises(ConfigError):
        CoViewRecommender(decay=0.0)


def test_make_baseline_knows_every_baseline():
    assert set(BASELINES) >= {"most_viewed", "most_recent", "coview", "popularity", "als", "ease"}
    assert isinstance(make_baseline("coview", neighbors=5), CoViewRecommender)
    assert make_baseline("als", seed=9, factors=4).seed == 9
    with pytest.raises(ConfigError, match="unknown baseline"):
        make_baseline("svd")
    with pytest.raises(ConfigError, match="bad hyper-parameters"):
        make_baseline("coview", neighbours=5)
