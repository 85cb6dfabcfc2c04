"""Serving: the in-process Recommender, feedback log, online learning, hot swap, cold start, A/B report.

The model bundle comes from one real pipeline run on tiny simulator data (300 users, 150 items, 10 days),
built once and cached on disk by ``pipelines.sample_bundle`` (``$RECFLOW_TEST_CACHE``, default
``<tmp>/recflow-test-cache``): the first run takes about three minutes, later runs reuse it.
"""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from background_requests import recommending_in_background

from pipelines.sample_bundle import SMALL_WORLD as WORLD
from pipelines.sample_bundle import bundle_parts, push
from recflow.errors import DataError
from recflow.model_store import ModelStore
from recflow.policy.online import OnlineLinUCB
from recflow.simulator import SimulatorConfig
from serving.ab_report import ab_report, plot_ab_report
from serving.config import ServingConfig
from serving.feedback_log import FeedbackLog, iter_feedback, read_feedback, segment_paths
from serving.recommender import epsilon_greedy_slate


@pytest.fixture(scope="session")
def parts() -> Path:
    return bundle_parts()


@pytest.fixture(scope="session")
def store_root(parts: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("store")
    push(ModelStore(root), parts)
    return root


@pytest.fixture(scope="session")
def rec(store_root: Path, tmp_path_factory: pytest.TempPathFactory):
    from serving.recommender import Recommender

    r = Recommender.load(
        store_root, ServingConfig(online_learning=True, online_publish_every=5),
        feedback_dir=tmp_path_factory.mktemp("feedback"),
    )
    yield r
    r.close()


# ---------------------------------------------------------------------------------------------- feedback log


def test_feedback_log_round_trip_rotation_and_torn_last_line(tmp_path: Path) -> None:
    log = FeedbackLog(tmp_path, segment_bytes=1024)
    events = [
        {
            "event_id": f"e{i}",
            "event_type": "click",
            "timestamp": "2026-01-01T00:00:00.123Z",
            "user_id": f"u{i}",
            "item_id": "i1",
            "position": 2,
            "propensity": 0.5,
            "variant": "champion",
        }
        for i in range(60)
    ]
    for chunk in range(0, 60, 6):
        assert log.append(events[chunk : chunk + 6]) == 6
    log.close()
    assert len(segment_paths(tmp_path)) > 1  # rotated by size
    with open(segment_paths(tmp_path)[-1], "ab") as fh:  # a crash mid-write leaves a torn last line
        fh.write(b'{"event_id": "torn", "event_ty')
    frame = read_feedback(tmp_path)
    assert frame["event_id"].tolist() == [f"e{i}" for i in range(60)]
    assert str(frame["timestamp"].dtype) == "datetime64[ms, UTC]"
    assert frame["position"].tolist() == [2] * 60 and frame["variant"].eq("champion").all()


def test_feedback_log_concurrent_appends_are_all_durable(tmp_path: Path) -> None:
    log = FeedbackLog(tmp_path)

    def worker(w: int) -> None:
        for i in range(40):
            log.append(
                [
                    {
                        "event_id": f"{w}-{i}",
                        "event_type": "impression",
                        "timestamp": "2026-01-01T00:00:00Z",
                        "user_id": "u",
                        "item_id": "i",
                    }
                ]
            )

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    log.close()
    ids = read_feedback(tmp_path)["event_id"]
    assert len(ids) == 240 and ids.is_unique


def test_corrupt_line_in_the_middle_is_a_data_error(tmp_path: Path) -> None:
    (tmp_path / "feedback-0000000000001-000001.jsonl").write_bytes(b'{"a": 1}\nnot json\n{"b": 2}\n')
    with pytest.raises(DataError, match="line 2"):
        read_feedback(tmp_path)


# ---------------------------------------------------------------------------------------------- policy pieces


def test_epsilon_greedy_propensities_match_empirical_frequencies() -> None:
    scores = np.array([0.9, 0.5, 0.4, 0.1])
    rng = np.random.default_rng(0)
    first: dict[int, int] = {}
    n = 20000
    for _ in range(n):
        slots, props = epsilon_greedy_slate(scores, 2, 0.2, rng)
        first[slots[0]] = first.get(slots[0], 0) + 1
        expected = 0.8 * (slots[0] == 0) + 0.2 / 4
        assert props[0] == pytest.approx(expected)
    assert first[0] / n == pytest.approx(0.8 + 0.05, abs=0.01)
    assert first[3] / n == pytest.approx(0.05, abs=0.01)


def test_online_linucb_equals_batch_ridge_and_learns_the_better_arm() -> None:
    rng = np.random.default_rng(1)
    dim = 5
    model = OnlineLinUCB(dim, ridge=1.0, alpha=0.0, publish_every=1000)
    xs, rs, bases = [], [], []
    true = np.array([1.0, -1.0, 0.0, 0.5, 0.0])
    for _ in range(400):
        x = rng.normal(size=dim)
        base = 0.1
        r = float(rng.random() < 1 / (1 + np.exp(-x @ true)))
        model.learn("impression", x, base)
        if r:
            model.learn("click", x, base)
        xs.append(x), rs.append(r), bases.append(base)
    model.publish()
    x, y = np.array(xs), np.array(rs) - np.array(bases)
    batch = np.linalg.solve(np.eye(dim) + x.T @ x, x.T @ y)
    np.testing.assert_allclose(model.snapshot.theta, batch, rtol=1e-9, atol=1e-12)
    good, bad = true / np.linalg.norm(true), -true / np.linalg.norm(true)
    adjusted = model.adjust(np.stack([good, bad]), np.zeros(2))
    assert adjusted[0] > adjusted[1]


def test_online_learner_thread_drains_queue() -> None:
    model = OnlineLinUCB(3, publish_every=1000)
    model.start()
    for _ in range(50):
        model.submit("impression", np.ones(3), 0.0)
        model.submit("click", np.ones(3), 0.0)
    model.drain()
    assert model.lag == 0 and model.snapshot.decisions == 50 and model.snapshot.theta.sum() > 0
    model.stop()


def test_ab_report_detects_the_known_better_variant(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    rows = []
    for variant, ctr in (("champion", 0.03), ("challenger", 0.06)):
        for u in range(400):
            for _ in range(20):
                rows.append({"event_type": "impression", "user_id": f"{variant}{u}", "variant": variant})
                if rng.random() < ctr:
                    rows.append({"event_type": "click", "user_id": f"{variant}{u}", "variant": variant})
                    if rng.random() < 0.3:
                        rows.append(
                            {
                                "event_type": "purchase",
                                "user_id": f"{variant}{u}",
                                "variant": variant,
                                "price": 20.0 + rng.random(),
                            }
                        )
    report = ab_report(pd.DataFrame(rows))
    by = {v.variant: v for v in report.variants}
    assert by["challenger"].ctr_ci[0] > by["champion"].ctr_ci[1] - 0.01
    assert by["challenger"].ctr == pytest.approx(0.06, abs=0.01)
    c = report.comparison
    assert c["treatment"] == "challenger" and c["ctr_lift"] > 0
    assert c["z_test_p"] < 1e-6 and c["t_test_p"] < 1e-3 and c["wilcoxon_p"] < 1e-3
    assert 20 < by["champion"].average_order_value < 21
    assert "z-test" in report.format()
    assert plot_ab_report(report, tmp_path / "ab.png").stat().st_size > 1000


def test_ab_report_without_variants_is_a_clear_error() -> None:
    with pytest.raises(DataError, match="variant"):
        ab_report(pd.DataFrame({"event_type": ["click"], "user_id": ["u"], "variant": [None]}))


# ---------------------------------------------------------------------------------------------- with a bundle


def test_numpy_policy_and_context_encoding_equal_the_exported_policy(rec) -> None:
    from recflow.policy.logged_data import context_onehots

    b = rec.champion
    assert b.reward_network is not None  # the numpy re-implementation passed its load-time check
    rng = np.random.default_rng(5)
    for _ in range(5):
        rows = rng.choice(len(b.item_ids), size=25, replace=False)
        ctx = {
            "hour": int(rng.integers(24)),
            "weekday": int(rng.integers(7)),
            "device": str(rng.choice(["mobile", "desktop", "tablet", "fridge"])),
        }
        user = b.user_matrix[int(rng.integers(len(b.user_matrix)))]
        g, a = b.policy_features(user, ctx, rows)
        layout = b.policy_scorer.layout
        np.testing.assert_array_equal(
            g[0, layout.embedding_dim :], context_onehots(ctx, layout.context_columns, 1)[0]
        )
        np.testing.assert_allclose(b.reward_network(g, a)[0], b._policy_scores_tf(g, a), rtol=1e-5, atol=1e-6)
        # ... and the policy's own scorer agrees for catalog items
        mean = b.policy_scorer.scores(user[None, :], ctx, b.item_ids[rows].tolist(), 1)["mean"][0]
        np.testing.assert_allclose(b.reward_network(g, a)[0], mean, rtol=1e-5, atol=1e-6)


def test_numpy_ranking_engine_equals_the_ranking_savedmodel(rec) -> None:
    import copy

    b = rec.champion
    assert b.ranking_engine == "numpy"  # built and passed its load-time check
    rng = np.random.default_rng(11)
    users = [*list(b.numpy_ranker.user_row)[:4], "someone-never-seen", ""]
    contexts = [{"hour": 3, "weekday": 1, "device": "mobile", "region": "west"}, {"device": "fridge"}, {},
                {"hour": 22, "weekday": 6, "region": "nowhere"}]
    for n, user in enumerate(users):
        rows = rng.choice(len(b.item_ids), size=30, replace=False)
        ctx = b.context_for(user, contexts[n % len(contexts)])
        np.testing.assert_allclose(b.rank_candidates(user, rows, ctx),
                                   b._rank_savedmodel(user, b.item_ids[rows].tolist(), ctx), atol=1e-5, rtol=0)
    # the load-time check fails for an engine that is wrong (here: a shifted click head)
    broken = copy.copy(b)
    broken.numpy_ranker = copy.copy(b.numpy_ranker)
    kernel, bias = b.numpy_ranker.head
    broken.numpy_ranker.head = (kernel, bias + 0.05)
    assert not broken.numpy_ranking_matches()


def test_requests_without_a_sequence_state_are_ranked_without_tensorflow(rec, monkeypatch) -> None:
    from serving.bundle import ServingBundle

    b = rec.champion
    savedmodel = ServingBundle._rank_savedmodel

    def refuse(*args, **kwargs):
        raise AssertionError("the request path called the ranking SavedModel")

    monkeypatch.setattr(ServingBundle, "_rank_savedmodel", refuse)
    out = rec.recommend("ranked-without-tf", {"hour": 14, "device": "desktop"}, k=5)
    assert out.cold_start  # no sequence state: the DCN ranking model's path
    monkeypatch.setattr(ServingBundle, "_rank_savedmodel", savedmodel)
    ids = [s.item_id for s in out.items]
    expected = b._rank_savedmodel("ranked-without-tf", ids, b.context_for("ranked-without-tf", out.context))
    np.testing.assert_allclose([s.click_probability for s in out.items], expected, atol=1e-5, rtol=0)


def test_micro_batcher_gathers_queued_calls_in_order_and_bounds_batches() -> None:
    import asyncio

    from serving.batching import MicroBatcher

    batcher: MicroBatcher = MicroBatcher(max_batch=4)
    gate = threading.Event()
    seen: list[int] = []

    def work(i: int) -> int:
        gate.wait(5)  # the first call holds the thread while the others queue
        if i == 5:
            raise ValueError("bad five")
        seen.append(i)
        return i * i

    async def main() -> list:
        tasks = [asyncio.ensure_future(batcher.submit(work, i)) for i in range(10)]
        await asyncio.sleep(0.05)
        gate.set()
        return await asyncio.gather(*tasks, return_exceptions=True)

    try:
        out = asyncio.run(main())
    finally:
        batcher.stop()
    assert [o for i, o in enumerate(out) if i != 5] == [i * i for i in range(10) if i != 5]
    assert isinstance(out[5], ValueError)  # one call's error is that request's alone
    assert seen == [i for i in range(10) if i != 5]  # arrival order
    assert batcher.calls == 10 and batcher.largest == 4 and batcher.batches >= 3  # queued calls gathered, bounded


def test_batched_recommendations_equal_unbatched(rec) -> None:
    import asyncio

    from serving.batching import MicroBatcher
    from serving.recommender import Recommender

    config = ServingConfig(online_learning=False)
    alone, batched = Recommender(rec.champion, config), Recommender(rec.champion, config)
    users = [f"u{n:06d}" for n in range(1, 15)] + ["batch-newcomer-1", "batch-newcomer-2"]
    batcher: MicroBatcher = MicroBatcher(max_batch=8)

    async def main() -> list:
        return await asyncio.gather(*[batcher.submit(batched.recommend, u, {"hour": 9}, 6) for u in users])

    try:
        expected = [alone.recommend(u, {"hour": 9}, 6) for u in users]
        got = asyncio.run(main())
    finally:
        batcher.stop()
        alone.close()
        batched.close()
    assert batcher.largest > 1  # the requests really were computed in batches
    for a, b in zip(expected, got, strict=True):
        assert [(s.item_id, s.propensity, s.click_probability) for s in a.items] == \
            [(s.item_id, s.propensity, s.click_probability) for s in b.items]


def test_recommend_known_user_slate_fields_and_exclusions(rec) -> None:
    out = rec.recommend("u000001", {"hour": 9, "device": "mobile"}, k=7)
    ids = [s.item_id for s in out.items]
    assert len(ids) == 7 and len(set(ids)) == 7 and not out.cold_start
    assert out.model_version == "v0001" and out.variant == "champion"
    assert all(0 < s.propensity <= 1 for s in out.items)
    assert [s.position for s in out.items] == list(range(7))
    assert out.context["hour"] == 9 and out.context["device"] == "mobile"
    again = rec.recommend("u000001", {"hour": 9, "device": "mobile"}, k=7, exclude=ids[:3])
    assert not set(ids[:3]) & {s.item_id for s in again.items}
    with pytest.raises(DataError, match="k"):
        rec.recommend("u000001", k=0)
    everything = rec.champion.item_ids.tolist()
    with pytest.raises(DataError, match="exclude"):
        rec.recommend("u000001", exclude=everything)


def test_cold_start_is_context_aware_uses_history_and_explores(rec) -> None:
    b = rec.champion
    q_morning = b.cold_query(8, 0, "mobile", "west")
    q_night = b.cold_query(23, 5, "desktop", "east")
    if not b.is_sequence:  # the sequence model's cold query is its empty-history state: context-free
        assert not np.allclose(q_morning, q_night)  # the query tower sees the context
    slates = [
        tuple(s.item_id for s in rec.recommend("newcomer-1", {"hour": 8}, k=5).items) for _ in range(30)
    ]
    out = rec.recommend("newcomer-1", {"hour": 8}, k=5)
    assert out.cold_start and len(out.items) == 5
    assert len(set(slates)) > 1  # exploration: not the same slate every time
    assert any(s.propensity < 0.9 for s in out.items)
    popular = np.argsort(-b.item_log_popularity)[:20]
    shown = [b.item_index[i] for s in slates for i in s]
    assert np.isin(shown, popular).mean() > 0.2  # the popularity prior pulls popular items in
    # history moves an unknown user's retrieval towards the items they looked at
    ctx = b.context_for("newcomer-2", {"hour": 8})
    plain, _, cold = rec.retrieve(b, "newcomer-2", ctx, None, None)
    looked = [str(i) for i in b.item_ids[plain[-3:]]]  # items retrieval ranked low for this context
    with_hist, _, _ = rec.retrieve(b, "newcomer-2", ctx, looked, None)
    near = np.argsort(-(b.item_matrix @ b.item_matrix[[b.item_index[i] for i in looked]].mean(axis=0)))[:10]
    assert cold and np.isin(near, with_hist).sum() > np.isin(near, plain).sum()


def test_sequence_bundle_serves_every_user_from_their_history(rec) -> None:
    from serving.history import HistoryEntry

    b = rec.champion
    assert b.is_sequence  # the default retrieval model
    # known users without a request history: their stored history's state is the trained user embedding
    known = sorted(b.user_index)[-5:]  # users no other test posts feedback for
    for user in known:
        ctx = b.context_for(user, None)
        top, policy_user, cold = rec.retrieve(b, user, ctx, None, None)
        stored = b.user_matrix[b.user_index[user]]
        assert not cold and np.allclose(policy_user, stored, atol=1e-4)
        # the stored state's scores (blended with EASE's scores of the stored history when the bundle has a
        # blend: the pipeline's trainer chose its weight, tests/test_hybrid_bundle.py tests the blend itself)
        assert b.sequence is not None
        seen = b.sequence.history_for(user, None, [])
        blended = b.hybrid_scores(stored, seen) if b.sequence.known(seen) else None
        expected = rec._top(b, stored, None) if blended is None else np.argsort(-blended, kind="stable")
        assert len(set(top[:20]) & set(expected[:20])) >= 18
    # a new user with a history is served from it (the numpy encoder), not as a cold start, and without extra
    # exploration; different histories retrieve different items (that the history drives *which* items is
    # tested on a shop where the next item is clear: test_tfrs_trainer.py, the chain world)
    ctx = b.context_for("newcomer-seq", None)
    cold_top, _, cold = rec.retrieve(b, "newcomer-seq", ctx, None, None)
    assert cold
    tops = []
    for start in (0, 40, 80):
        history = [{"item_id": str(b.item_ids[start + n]), "event_type": "view", "timestamp": 1000.0 + 60 * n}
                   for n in range(4)]
        top, policy_user, cold = rec.retrieve(b, "newcomer-seq", ctx, history, None)
        assert not cold and policy_user is not None
        expected = b.sequence_query("newcomer-seq", rec_history(history), [])
        assert np.allclose(policy_user, expected)
        tops.append(tuple(top[:10]))
    assert len(set(tops)) == 3 and tuple(cold_top[:10]) not in tops
    out = rec.recommend("newcomer-seq", k=5, history=[str(b.item_ids[0]), str(b.item_ids[1])])
    assert not out.cold_start
    eps = rec.config.epsilon if rec.config.epsilon is not None else float(b.policy_meta.get("epsilon", 0.1))
    assert max(s.propensity for s in out.items) >= 1 - eps  # the known users' exploration, not the cold one's
    # the request's history wins over the stored one for a known user
    user = known[0]
    other = b.sequence_query(user, [HistoryEntry(str(b.item_ids[3]), "view", 5.0)], [])
    assert not np.allclose(other, b.user_matrix[b.user_index[user]])
    # a new user with no history at all is a cold start
    assert rec.recommend("newcomer-nothing", k=5).cold_start
    with pytest.raises(DataError, match=r"history\[1\]\.event_type"):
        rec.recommend("newcomer-seq", history=["x", {"item_id": "y", "event_type": "impression"}])


def test_requests_with_a_sequence_state_are_ranked_by_the_history_ranker(store_root: Path, rec) -> None:
    """A sequence bundle ranks a request that has a history with the history-aware model (numpy); with
    ``policy_rerank`` false and no exploration the slate is exactly its top-k."""
    from serving.recommender import Recommender

    b = rec.champion
    assert b.has_history_ranker
    history = [{"item_id": str(b.item_ids[n]), "event_type": "view", "timestamp": 1000.0 + 60 * n}
               for n in (5, 9, 5)]
    entries = rec_history(history)
    ctx = b.context_for("ranker-newcomer", {"device": "mobile"})
    top, state, cold = rec.retrieve(b, "ranker-newcomer", ctx, entries, None)
    assert not cold and state is not None
    prob = b.rank_with_history(state, entries, top, ctx)
    assert prob.shape == (len(top),) and np.all((prob > 0) & (prob < 1))
    # the history matters: a history without item 5 gives another user state and so other probabilities
    other = rec_history([{"item_id": str(b.item_ids[n]), "event_type": "view", "timestamp": 1000.0 + 60 * n}
                         for n in (7, 9, 7)])
    other_state = b.sequence_query("ranker-newcomer", other, [])
    assert not np.allclose(prob, b.rank_with_history(other_state, other, top, ctx))
    # and beyond the state, the history features themselves whenever the chosen model uses them (the simplest
    # candidate, score_only, scores by the retrieval score alone: chosen when the eval split has few clicks)
    assert b.sequence is not None and b.sequence.ranker is not None
    chosen = b.sequence.ranker.meta["report"]["chosen_candidate"]
    same_state = np.allclose(prob, b.rank_with_history(state, other, top, ctx))
    assert same_state == (chosen == "score_only"), chosen
    greedy = Recommender.load(store_root, ServingConfig(policy_rerank=False, epsilon=0.0))
    try:
        out = greedy.recommend("ranker-newcomer", {"device": "mobile"}, k=5, history=history)
        gb = greedy.champion
        g_ctx = gb.context_for("ranker-newcomer", {"device": "mobile"})
        g_top, g_state, _ = greedy.retrieve(gb, "ranker-newcomer", g_ctx, entries, None)
        g_prob = gb.rank_with_history(g_state, entries, g_top, g_ctx)
        expected = [str(gb.item_ids[r]) for r in g_top[np.argsort(-g_prob, kind="stable")[:5]]]
        assert [s.item_id for s in out.items] == expected
        assert [s.click_probability for s in out.items] == pytest.approx(np.sort(g_prob)[::-1][:5])
    finally:
        greedy.close()


def rec_history(history):
    from serving.history import parse_history

    return parse_history(history)


def test_feedback_extends_the_users_history_for_the_next_request(rec) -> None:
    b = rec.champion
    user = "feedback-newcomer"
    ctx = b.context_for(user, None)
    _, _, cold = rec.retrieve(b, user, ctx, None, None)
    assert cold
    item = str(b.item_ids[7])
    rec.record_feedback([{"event_type": "view", "item_id": item, "user_id": user},
                         {"event_type": "impression", "item_id": str(b.item_ids[8]), "user_id": user}])
    assert [e.item_id for e in rec.histories.get(user)] == [item]  # impressions are not the user's choice
    _, state, cold = rec.retrieve(b, user, ctx, None, None)
    assert not cold and np.allclose(state, b.sequence_query(user, None, rec.histories.get(user)))


def test_user_histories_are_bounded_and_thread_safe() -> None:
    import threading

    from serving.history import HistoryEntry, UserHistories

    h = UserHistories(max_events=3, max_users=2)

    def add(user: str) -> None:
        for n in range(200):
            h.extend(user, [HistoryEntry(f"i{n}", "view", float(n))])

    threads = [threading.Thread(target=add, args=(u,)) for u in ("a", "b", "a")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(h.get("a")) == 3 and len(h.get("b")) == 3 and len(h) == 2
    h.extend("b", [HistoryEntry("y")])
    h.extend("c", [HistoryEntry("x")])
    assert len(h) == 2 and h.get("a") == []  # the least recently updated user is forgotten


def test_new_catalog_items_are_recommendable_from_content(parts: Path, tmp_path: Path) -> None:
    from serving.bundle import ServingBundle
    from serving.recommender import Recommender

    bundle = ServingBundle.load(parts, "t")
    cat = bundle.item_category[0]
    new = pd.DataFrame(
        {"item_id": ["brand-new-1", "brand-new-2"], "category": [cat, "unknown-cat"], "price": [10.0, 20.0]}
    )
    r = Recommender(
        bundle,
        ServingConfig(
            online_learning=False, retrieval_candidates=200, ranked_candidates=200, cold_start_epsilon=1.0
        ),
        catalog=new,
    )
    try:
        assert "brand-new-1" in r.champion.item_index
        row = r.champion.item_index["brand-new-1"]
        same = r.champion.item_matrix[: bundle.trained_items][
            bundle.item_category[: bundle.trained_items] == cat
        ]
        np.testing.assert_allclose(r.champion.item_matrix[row], same.mean(axis=0), rtol=1e-5)
        ids = ["brand-new-1", "brand-new-2", str(bundle.item_ids[0])]  # unknown to the ranking model: OOV row
        ctx = r.champion.context_for("someone-new", None)
        np.testing.assert_allclose(r.champion.rank("someone-new", ids, ctx),
                                   r.champion._rank_savedmodel("someone-new", ids, ctx), atol=1e-5, rtol=0)
        seen = {s.item_id for _ in range(40) for s in r.recommend("someone-new", k=10).items}
        assert {"brand-new-1", "brand-new-2"} & seen
    finally:
        r.close()


def test_feedback_is_enriched_logged_and_learned(rec) -> None:
    out = rec.recommend("u000002", {"hour": 12, "weekday": 3, "device": "desktop"}, k=5)
    before = rec.variants["champion"].online.snapshot.theta.copy()
    events = [
        {"event_type": "impression", "item_id": s.item_id, "request_id": out.request_id} for s in out.items
    ]
    events += [
        {"event_type": "click", "item_id": out.items[1].item_id, "request_id": out.request_id},
        {
            "event_type": "purchase",
            "item_id": out.items[1].item_id,
            "request_id": out.request_id,
            "order_value": 42.5,
        },
    ]
    rows = rec.record_feedback(events)
    assert len(rows) == 7
    rec.variants["champion"].online.drain()
    assert not np.allclose(rec.variants["champion"].online.snapshot.theta, before)
    logged = read_feedback(rec.feedback_log.log_dir)
    mine = logged[logged["request_id"] == out.request_id]
    click = mine[mine["event_type"] == "click"].iloc[0]
    assert click["user_id"] == "u000002" and click["position"] == 1 and click["variant"] == "champion"
    assert click["propensity"] == pytest.approx(out.items[1].propensity)
    assert click["hour"] == 12 and click["device"] == "desktop" and click["policy_id"].startswith("v0001/")
    assert mine[mine["event_type"] == "purchase"]["order_value"].iloc[0] == 42.5
    # impressions carry the model's view for the drift job (in the log's JSON lines, beyond the events schema)
    shown = [r for r in iter_feedback(rec.feedback_log.log_dir)
             if r.get("request_id") == out.request_id and r["event_type"] == "impression"]
    assert [r["score"] for r in shown] == pytest.approx([it.score for it in out.items])
    assert [r["click_probability"] for r in shown] == pytest.approx([it.click_probability for it in out.items])
    assert "score" not in next(r for r in rows if r["event_type"] == "click")
    with pytest.raises(DataError, match=r"events\[0\].*user_id"):
        rec.record_feedback([{"event_type": "click", "item_id": "i1", "request_id": "nope"}])
    with pytest.raises(DataError, match=r"events\[0\].event_type"):
        rec.record_feedback([{"event_type": "like", "item_id": "i1", "user_id": "u"}])


@pytest.mark.slow  # the first shap import compiles for ~30 s
def test_explanation_attributes_the_ranking_score_to_raw_features(rec) -> None:
    out = rec.recommend("u000003", {"hour": 20}, k=3)
    exp = rec.explain(out.request_id)
    assert exp["method"] == "shap.PermutationExplainer" and len(exp["items"]) == 3
    for item in exp["items"]:
        feats = {a["feature"] for a in item["attributions"]}
        assert feats == {"user_id", "item_id", "hour", "weekday", "device", "region"}
        total = item["base_value"] + sum(a["shap_value"] for a in item["attributions"])
        assert total == pytest.approx(item["click_probability"], abs=1e-5)  # SHAP values add up to the score
    with pytest.raises(KeyError):
        rec.explain("unknown-request")


@pytest.mark.slow
def test_hot_swap_rollback_broken_bundle_and_no_failed_requests(
    parts: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    from recflow.cli import main as recflow_main
    from serving.logs import EVENT_LOGGER
    from serving.recommender import Recommender

    caplog.set_level(logging.INFO, logger=EVENT_LOGGER)

    root = tmp_path / "store"
    store = ModelStore(root)
    push(store, parts)
    r = Recommender.load(root, ServingConfig(online_learning=False, warmup_requests=5))
    try:
        with recommending_in_background(r) as load:  # any failure during a swap is the bug under test
            assert r.check_for_new_champion() == "unchanged"
            push(store, parts)
            assert r.check_for_new_champion() == "swapped" and r.champion.version == "v0002"
            # rollback through the CLI moves the alias back; the next poll serves v0001 again
            assert recflow_main(["models", "rollback", "--store", str(root), "--no-registry"]) == 0
            assert r.check_for_new_champion() == "swapped" and r.champion.version == "v0001"
            push(store, parts)  # v0003, then rolled back by the service itself
            assert r.check_for_new_champion() == "swapped" and r.champion.version == "v0003"
            assert r.rollback() == "swapped" and r.champion.version == "v0001"
            # a broken bundle: pushed fine, but its ranking SavedModel is garbage
            broken = tmp_path / "broken"
            shutil.copytree(parts, broken)
            (broken / "model" / "ranking" / "saved_model.pb").write_bytes(b"not a saved model")
            push(store, broken)
            assert r.check_for_new_champion() == "rejected"
            assert r.champion.version == "v0001" and "v0004" in r.rejected_versions
            assert r.check_for_new_champion() == "unchanged"  # not retried on every poll
    finally:
        r.close()
    assert not load.failures
    assert {"v0001", "v0002", "v0003"} <= set(load.served)
    events = [(rec.getMessage(), getattr(rec, "fields", {})) for rec in caplog.records if rec.name == EVENT_LOGGER]
    swaps = [f["version"] for e, f in events if e == "swap"]
    assert swaps[:4] == ["v0002", "v0001", "v0003", "v0001"], events
    assert [f["previous"] for e, f in events if e == "rollback"] == ["v0003"]
    assert [f["version"] for e, f in events if e == "swap_rejected"] == ["v0004"]
    assert [e for e, _ in events][-1] == "shutdown"


@pytest.mark.slow
def test_ab_test_on_simulated_traffic_finds_the_better_variant(parts: Path, tmp_path: Path) -> None:
    """Champion: the trained bundle. Challenger: the same bundle with retrieval turned upside down (it fetches
    the items the model likes least), which is known to be worse. ShopEnv users react to the served slates."""
    from recflow.simulator import ShopEnv
    from serving.bundle import ServingBundle
    from serving.recommender import Recommender

    good = ServingBundle.load(parts, "good")
    bad = ServingBundle.load(parts, "bad")
    bad.item_matrix = -bad.item_matrix
    bad.user_matrix = bad.user_matrix.copy()
    bad.hybrid = None  # the blend's EASE scores would otherwise still rank the good items first
    cfg = ServingConfig(online_learning=False, challenger="bad", challenger_share=0.5, seed=1)
    r = Recommender(good, cfg, challenger=bad, feedback_log=FeedbackLog(tmp_path / "fb"))
    env = ShopEnv(SimulatorConfig(**WORLD), seed=7)
    try:
        for _ in range(500):
            obs = env.reset()
            done = False
            while not done:
                out = r.recommend(
                    obs.user_id,
                    {"hour": obs.hour, "weekday": obs.weekday, "device": obs.device, "region": obs.region},
                    k=5,
                )
                step = env.step_ids([s.item_id for s in out.items])
                events = [
                    {"event_type": "impression", "item_id": s.item_id, "request_id": out.request_id}
                    for s in out.items
                ]
                for _, ev in step.events.iterrows():
                    if ev["event_type"] in ("click", "purchase"):
                        events.append(
                            {
                                "event_type": ev["event_type"],
                                "item_id": ev["item_id"],
                                "request_id": out.request_id,
                            }
                        )
                r.record_feedback(events)
                obs, done = step.observation, step.done
    finally:
        r.close()
    report = ab_report(read_feedback(tmp_path / "fb"))
    by = {v.variant: v for v in report.variants}
    assert set(by) == {"champion", "challenger"}
    assert by["champion"].ctr > by["challenger"].ctr
    assert report.comparison["z_test_p"] < 0.05


def test_ab_report_command_reads_the_feedback_log(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from recflow.cli import main as recflow_main

    log = FeedbackLog(tmp_path / "fb")
    rows = []
    for variant, clicks in (("champion", 2), ("challenger", 8)):
        for u in range(30):
            for i in range(10):
                rows.append({"event_type": "impression", "user_id": f"{variant}-{u}", "item_id": "i",
                             "timestamp": "2026-01-01T00:00:00Z", "variant": variant})
                if (u + i) % 10 < clicks:
                    rows.append({"event_type": "click", "user_id": f"{variant}-{u}", "item_id": "i",
                                 "timestamp": "2026-01-01T00:00:01Z", "variant": variant})
    log.append(rows)
    log.close()
    fb, png = str(tmp_path / "fb"), str(tmp_path / "ab.png")
    code = recflow_main(["ab", "report", "--feedback-dir", fb, "--plot", png])
    out = capsys.readouterr().out
    assert code == 0 and "challenger vs champion" in out and "z-test" in out
    assert (tmp_path / "ab.png").is_file()
    assert recflow_main(["ab", "report", "--feedback-dir", str(tmp_path / "empty")]) == 2  # a clear error


# ---------------------------------------------------------------------------------------- approximate index


def _with_index(parts: Path, out: Path, config, recorded: float | None = None) -> Path:
    """A copy of the bundle whose model/index/ is an approximate index built with ``config`` over its items
    (``recorded`` overwrites the recall@10 written into index.json)."""
    from recflow.index import build_index, measure_index_recall, save_index

    shutil.copytree(parts, out)
    items = pd.read_parquet(out / "model" / "item_embeddings.parquet")
    users = pd.read_parquet(out / "model" / "user_embeddings.parquet")
    emb = np.stack(items["embedding"].to_numpy()).astype(np.float32)
    index = build_index(items["item_id"].astype(str).tolist(), emb, config)
    report = measure_index_recall(index, np.stack(users["embedding"].to_numpy()), emb, config)
    if recorded is not None:
        report["index_recall@10"] = recorded
    shutil.rmtree(out / "model" / "index", ignore_errors=True)
    save_index(index, out / "model" / "index", report)
    return out


def test_retrieval_through_an_approximate_index_checked_at_load(parts: Path, tmp_path: Path) -> None:
    from recflow.index import CandidateIndexConfig
    from serving.bundle import ServingBundle
    from serving.recommender import Recommender, load_bundle

    cfg = ServingConfig(online_learning=False, retrieval_candidates=20)
    good = _with_index(parts, tmp_path / "hnsw", CandidateIndexConfig(kind="hnsw", recall_ks=(10,)))
    ann = load_bundle(good, "ann", cfg)
    assert ann.ann_index is not None and ann.index_report["load_recall@10"] >= 0.95
    exact = load_bundle(good, "exact", cfg.model_copy(update={"ann_index": False}))
    assert exact.ann_index is None
    r_ann, r_exact = Recommender(ann, cfg), Recommender(exact, cfg)
    overlap = []
    for user in list(ann.user_index)[:30] + ["never-seen"]:
        ctx = ann.context_for(user, None)
        a = r_ann.retrieve(ann, user, ctx, None, None)[0]
        e = r_exact.retrieve(exact, user, ctx, None, None)[0]
        overlap.append(len(set(a[:10]) & set(e[:10])) / 10)
        assert len(a) == 20 and len(set(a)) == 20
    assert np.mean(overlap) >= 0.95
    user = next(iter(ann.user_index))
    banned = ann.item_ids[r_ann.retrieve(ann, user, ann.context_for(user, None), None, None)[0][:5]].tolist()
    again = r_ann.retrieve(ann, user, ann.context_for(user, None), None, banned)[0]
    assert len(again) == 20 and not set(ann.item_ids[again]) & set(banned)
    # new catalog items join the index with their rows
    n = ann.add_items(pd.DataFrame({"item_id": ["brand-new"], "category": [str(ann.item_category[0])]}))
    assert n == 1 and ann.ann_index.item_ids[-1] == "brand-new"
    assert ann.ann_index.faiss_index.ntotal == len(ann.item_ids)
    # an index whose recorded recall is too low is refused, and so is one whose recorded recall is a lie
    low = _with_index(parts, tmp_path / "low", CandidateIndexConfig(kind="hnsw", recall_ks=(10,)), recorded=0.5)
    with pytest.raises(DataError, match="min_index_recall"):
        ServingBundle.load(low, "low", ann_index=True)
    weak = CandidateIndexConfig(kind="ivf", ivf_lists=3, ivf_nprobe=1, recall_ks=(10,))
    lying = _with_index(parts, tmp_path / "lying", weak, recorded=0.99)
    with pytest.raises(DataError, match="re-measured at load"):
        ServingBundle.load(lying, "lying", ann_index=True)
