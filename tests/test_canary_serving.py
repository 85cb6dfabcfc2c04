"""The canary in a serving process, on real bundles: routing by user hash, the guardrail's promotion and
rollback, a canary rejected at load, leases, and no failed request or lost feedback event throughout."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from background_requests import recommending_in_background
from test_serving import bundle_parts, push

from recflow.model_store import ModelStore
from recflow.release import CanaryConfig
from serving.config import ServingConfig
from serving.feedback_log import read_feedback

CFG = CanaryConfig(share=0.5, min_requests=150, min_impressions=500, decide_every=25, max_requests=5000,
                   latency_budget_ms=5000.0, latency_margin_ms=1000.0)


@pytest.fixture(scope="module")
def parts() -> Path:
    return bundle_parts()


def _store_with_canary(tmp_path: Path, parts: Path, canary_parts: Path | None = None) -> Path:
    root = tmp_path / "store"
    store = ModelStore(root)
    push(store, parts)
    result = store.push({p: (canary_parts or parts) / p for p in ("model", "policy", "transform")},
                        parts / "evaluation", canary=True)
    assert result.as_canary and result.version == "v0002"
    return root


def _traffic(rec, n: int, ctr: dict[str, float], seed: int, stop_on: set[str] | None = None) -> tuple[int, int]:
    """``n`` requests from 300 users; every shown item is fed back as an impression and clicked with the
    variant's probability; the canary controller is stepped after every request. Returns (requests, events)."""
    rng = np.random.default_rng(seed)
    events = 0
    for i in range(n):
        out = rec.recommend(f"u{rng.integers(300):06d}", k=5)
        fb = [{"event_type": "impression", "item_id": s.item_id, "request_id": out.request_id} for s in out.items]
        fb += [{"event_type": "click", "item_id": s.item_id, "request_id": out.request_id}
               for s in out.items if rng.random() < ctr[out.variant]]
        events += len(rec.record_feedback(fb))
        if rec.canary.step() in (stop_on or set()):
            return i + 1, events
    return n, events


def test_a_good_canary_is_promoted_and_a_worse_one_rolled_back(parts: Path, tmp_path: Path) -> None:
    from serving.recommender import Recommender

    root = _store_with_canary(tmp_path, parts)
    store = ModelStore(root)
    rec = Recommender.load(root, ServingConfig(online_learning=False, warmup_requests=3),
                           feedback_dir=tmp_path / "fb", canary=CFG)
    try:
        assert rec.canary.version == "v0002" and set(rec.variants) == {"champion", "canary"}
        # stable routing: the same user always gets the same arm, and about half the users get the canary
        arms = {u: rec.variant_for(f"u{u:06d}").name for u in range(300)}
        assert arms == {u: rec.variant_for(f"u{u:06d}").name for u in range(300)}
        assert 0.35 < sum(a == "canary" for a in arms.values()) / 300 < 0.65
        assert set(store.leases().popitem()[1]) == {"v0001", "v0002"}  # both served: neither is deleted
        requests, events = _traffic(rec, 4000, {"champion": 0.3, "canary": 0.3}, seed=1, stop_on={"promote"})
        assert store.champion().version == "v0002" and store.canary() is None, rec.canary.last_decision
        assert rec.champion.version == "v0002" and set(rec.variants) == {"champion"}
        assert store.canary_decisions()[-1]["decision"] == "promoted"
        assert requests < 4000

        # a canary that clicks less is rolled back; its users go back to the champion
        push_canary = store.push({p: parts / p for p in ("model", "policy", "transform")}, parts / "evaluation",
                                 canary=True)
        assert push_canary.version == "v0003" and rec.canary.step() == "started"
        more, more_events = _traffic(rec, 3000, {"champion": 0.3, "canary": 0.1}, seed=2, stop_on={"rollback"})
        assert store.champion().version == "v0002" and store.canary() is None
        assert set(rec.variants) == {"champion"} and "v0003" in rec.rejected_versions
        last = store.canary_decisions()[-1]
        assert last["decision"] == "rolled_back" and last["reason"].startswith("click rate lower")
        assert last["stats"]["canary"]["requests"] >= 25
    finally:
        rec.close()
    # every feedback event of both trials is in the log, including those for slates the canary served
    logged = read_feedback(tmp_path / "fb")
    assert len(logged) == events + more_events
    assert {"champion", "canary"} <= set(logged["variant"].dropna())


def test_a_canary_that_fails_to_load_is_rolled_back_at_once(parts: Path, tmp_path: Path) -> None:
    from serving.recommender import Recommender

    broken = tmp_path / "nan"
    shutil.copytree(parts, broken)
    import pandas as pd

    items = pd.read_parquet(broken / "model" / "item_embeddings.parquet")
    items["embedding"] = [np.full(len(e), np.nan, np.float32) for e in items["embedding"]]
    items.to_parquet(broken / "model" / "item_embeddings.parquet")
    root = _store_with_canary(tmp_path, parts, broken)
    store = ModelStore(root)
    failures: list[BaseException] = []
    rec = Recommender.load(root, ServingConfig(online_learning=False, warmup_requests=3), canary=CFG)
    try:
        assert rec.canary.version is None and "v0002" in rec.rejected_versions
        assert store.canary() is None and store.champion().version == "v0001"
        decision = store.canary_decisions()[-1]
        assert decision["decision"] == "rolled_back" and decision["reason"].startswith("rejected at load")
        assert rec.canary.step() == "idle"
        for i in range(20):
            try:
                assert rec.recommend(f"u{i:06d}", k=5).variant == "champion"
            except BaseException as exc:  # noqa: BLE001
                failures.append(exc)
    finally:
        rec.close()
    assert not failures


def test_requests_keep_flowing_while_the_canary_starts_and_ends(parts: Path, tmp_path: Path) -> None:
    from serving.recommender import Recommender

    root = _store_with_canary(tmp_path, parts)
    store = ModelStore(root)
    rec = Recommender.load(root, ServingConfig(online_learning=False, warmup_requests=3))
    from serving.canary import CanaryController, decide_by_hand

    rec.canary = CanaryController(rec, store, CFG)
    try:
        with recommending_in_background(rec) as load:  # any failure during a switch is the bug under test
            assert rec.canary.step() == "started"
            from fastapi.testclient import TestClient

            from serving.app import create_app

            metrics = TestClient(create_app(rec, watch=False)).get("/metrics").text
            assert "recflow_canary_active 1.0" in metrics and "recflow_canary_share 0.5" in metrics
            assert 'recflow_canary_decisions_total{decision="rollback"} 0.0' in metrics
            decide_by_hand(store, "promote", "test")  # the CLI in another process
            assert rec.canary.step() == "promote" and rec.champion.version == "v0002"
            store.push({p: parts / p for p in ("model", "policy", "transform")}, parts / "evaluation", canary=True)
            assert rec.canary.step() == "started"
            decide_by_hand(store, "abort", "test")
            assert rec.canary.step() == "dropped" and set(rec.variants) == {"champion"}
    finally:
        rec.close()
    assert not load.failures


def test_a_canary_whose_transform_comes_from_another_shop_is_refused(parts: Path, tmp_path: Path) -> None:
    from serving.recommender import Recommender

    other = bundle_parts({"users": 2000, "items": 500, "days": 7})
    mixed = tmp_path / "mixed"
    shutil.copytree(parts, mixed)
    shutil.rmtree(mixed / "transform")
    shutil.copytree(other / "transform", mixed / "transform")
    root = _store_with_canary(tmp_path, parts, mixed)
    store = ModelStore(root)
    rec = Recommender.load(root, ServingConfig(online_learning=False, warmup_requests=3), canary=CFG)
    try:
        assert rec.canary.version is None and store.canary() is None
        reason = store.canary_decisions()[-1]["reason"]
        assert reason.startswith("rejected at load: DataError: the transform's catalog (500 items")
        assert "the transform graph does not match the model" in reason
    finally:
        rec.close()


def test_with_several_workers_the_guardrail_sums_their_counts_and_one_of_them_decides(
    parts: Path, tmp_path: Path
) -> None:
    """Two workers of one service (two recommenders sharing the service's SQLite file, as `recflow serve
    --workers 2` runs them): requests alternate between them and each slate's feedback reaches the other one,
    as a load balancer would send it. The worse canary is rolled back by exactly one worker, on counts summed
    over both; the other follows the store."""
    from serving.recommender import Recommender

    root = _store_with_canary(tmp_path, parts)
    store = ModelStore(root)
    cfg = ServingConfig(online_learning=False, warmup_requests=3)
    workers = [Recommender.load(root, cfg, feedback_dir=tmp_path / "fb", canary=CFG, worker=f"w{i}",
                                shared_decisions=tmp_path / "decisions.sqlite") for i in range(2)]
    rng = np.random.default_rng(4)
    ctr = {"champion": 0.3, "canary": 0.1}
    try:
        assert all(w.canary.version == "v0002" for w in workers)
        outcomes: list[set[str]] = []
        for i in range(3000):
            serving, other = workers[i % 2], workers[1 - i % 2]
            out = serving.recommend(f"u{rng.integers(300):06d}", k=5)
            fb = [{"event_type": "impression", "item_id": s.item_id, "request_id": out.request_id}
                  for s in out.items]
            fb += [{"event_type": "click", "item_id": s.item_id, "request_id": out.request_id}
                   for s in out.items if rng.random() < ctr[out.variant]]
            assert len(other.record_feedback(fb)) == len(fb)  # attributed through the shared slates
            own = [w.variants["canary"].stats.requests for w in workers]
            outcomes.append({w.canary.step() for w in workers})
            if "rollback" in outcomes[-1]:
                break
        deciders = [w for w in workers if w.canary.decisions.get("rollback")]
        assert len(deciders) == 1  # exactly one process decided
        follower = next(w for w in workers if w is not deciders[0])
        assert outcomes[-1] == {"rollback", "dropped"} or follower.canary.step() == "dropped"
        assert all(set(w.variants) == {"champion"} for w in workers)
        last = store.canary_decisions()[-1]
        assert last["decision"] == "rolled_back" and last["reason"].startswith("click rate lower")
        summed = last["stats"]["canary"]["requests"]
        assert max(own) < summed <= sum(own)  # both workers' requests, not the decider's alone
        assert store.champion().version == "v0001" and store.canary() is None
    finally:
        for w in workers:
            w.close()
