"""The run's best baseline as a servable bundle (release-gate issue, item 4): history scoring of the item-item
baselines, the choice of the fallback, its directory, its refit at load, and the model store's baseline push."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from example_data import write_taste_group_examples

from recflow.baselines import EASERecommender, ItemKNNRecommender, PopularityRecommender
from recflow.errors import DataError
from recflow.evaluation.config import BlessingThresholds, EvaluatorConfig
from recflow.evaluation.evaluator import build_baselines, evaluate_recommenders
from recflow.evaluation.report import write_report
from recflow.evaluation.run import write_baseline_fallback
from recflow.model_store import ModelStore
from recflow.servable_baseline import (
    FALLBACK_DIR,
    SPEC_FILE,
    ServableBaseline,
    choose_fallback,
    read_spec,
)


@pytest.fixture(scope="module")
def examples(tmp_path_factory) -> Path:
    # users stick to one taste group's block of items; the last three events of each user are held out
    return write_taste_group_examples(tmp_path_factory.mktemp("examples"), n_users=120, per_group=15,
                                      event_p=(0.6, 0.3, 0.1), new_users=0, prices=False, impressions=False)


@pytest.mark.parametrize("make", [lambda: ItemKNNRecommender(neighbors=10), lambda: EASERecommender(l2=20.0)])
def test_a_history_in_the_request_scores_like_the_same_training_row(examples, make):
    train = pd.read_parquet(examples / "train.parquet")
    model = make().fit(train)
    by_user = train.sort_values("timestamp").groupby("user_id")
    for user in ["u000", "u001", "u017", "u042"]:
        events = by_user.get_group(user)
        banned = {events["item_id"].iloc[0]}
        from_history = model.recommend_from_history(events["item_id"].tolist(), 8, banned,
                                                    event_types=events["event_type"].tolist())
        assert from_history == model.recommend([user], 8, {user: banned})[0]
        assert events["item_id"].iloc[0] not in from_history
    # unknown items say nothing: the answer is popularity
    assert model.recommend_from_history(["nope"], 5) == PopularityRecommender().fit(train).recommend(["x"], 5)[0]


def test_the_fallback_is_the_best_servable_baseline_and_says_what_it_skipped():
    metrics = {"popularity": {"ndcg@10": 0.10}, "als": {"ndcg@10": 0.30}, "most_viewed": {"ndcg@10": 0.20},
               "ease": {"ndcg@10": 0.15}}
    choice = choose_fallback(metrics, {"als": "als (tuned)"}, "ndcg@10", 0.12)
    assert choice is not None and choice.label == "most_viewed" and choice.value == 0.20
    assert "als (0.3000) cannot answer users unseen at training time" in choice.reason
    only_ease = choose_fallback({"ease": {"ndcg@10": 0.2}, "popularity": {"ndcg@10": 0.1}}, {}, "ndcg@10", 0.0)
    assert only_ease is not None and only_ease.label == "ease" and "cannot answer" not in only_ease.reason
    assert choose_fallback({"als": {"ndcg@10": 0.3}}, {}, "ndcg@10", 0.0) is None


def _losing_candidate(examples: Path) -> PopularityRecommender:
    """A candidate that loses to every per-user baseline: global popularity under another name."""
    model = PopularityRecommender(name="candidate").fit(pd.read_parquet(examples / "train.parquet"))
    return model


CONFIG = EvaluatorConfig(k=5, baselines=("popularity", "item_knn", "ease", "most_viewed", "als"), max_users=100,
                         als={"factors": 4, "iterations": 3, "regularization": 0.1, "alpha": 1.0},
                         thresholds=BlessingThresholds(min_ndcg=0.0, min_recall=0.0),
                         baseline_tuning_trials=2)


@pytest.fixture(scope="module")
def evaluated(examples, tmp_path_factory):
    out = tmp_path_factory.mktemp("evaluation")
    result = evaluate_recommenders(examples, _losing_candidate(examples), CONFIG)
    write_report(out, result)
    chosen = write_baseline_fallback(out, examples, result, CONFIG)
    return out, result, chosen


def test_an_unblessed_run_writes_its_best_servable_baseline_and_it_serves_like_the_evaluated_one(
    evaluated, examples
):
    out, result, chosen = evaluated
    assert not result.blessing.blessed
    servable = {lbl: m.metrics["ndcg@5"] for lbl, m in result.methods.items()
                if m.role == "baseline" and lbl != "als"}
    assert chosen is not None and chosen["label"] == max(servable, key=servable.get)
    assert chosen["value"] == pytest.approx(max(servable.values()))
    spec = read_spec(out / FALLBACK_DIR)
    assert spec["label"] == chosen["label"] and sorted(spec["files"]) == ["items.parquet", "train.parquet"]
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no staging directory left behind

    served = ServableBaseline.load(out / FALLBACK_DIR)
    train = pd.read_parquet(examples / "train.parquet")
    tuned = {chosen["label"]: spec["tuned_params"]} if spec["tuned_params"] else None
    evaluated_model = build_baselines(CONFIG, tuned)[chosen["label"]].fit(train, pd.read_parquet(
        examples / "items.parquet"))
    users = sorted(train["user_id"].unique())[:30] + ["someone-new"]
    for user in users:
        assert served.recommend(user, 5) == evaluated_model.recommend([user], 5)[0]
    # a user unseen at training time is answered from the history in the request
    history = [("i000", "view", None), ("i003", "click", None), ("i007", "view", None)]
    new = served.recommend("someone-new", 5, history, exclude=["i003"])
    assert new == evaluated_model.recommend_from_history(["i000", "i003", "i007"], 5, {"i003"},
                                                         event_types=["view", "click", "view"])
    assert "i003" not in new and len(new) == 5


def test_a_bad_fallback_directory_is_named(tmp_path, evaluated):
    with pytest.raises(DataError, match="baseline.json does not exist"):
        read_spec(tmp_path)
    out, _, _ = evaluated
    spec = json.loads((out / FALLBACK_DIR / SPEC_FILE).read_text())
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / SPEC_FILE).write_text(json.dumps({**spec, "label": "als"}))
    with pytest.raises(DataError, match="'als' is not a servable baseline"):
        read_spec(bad)
    (bad / SPEC_FILE).write_text(json.dumps(spec))
    with pytest.raises(DataError, match="train.parquet does not exist"):
        read_spec(bad)


def test_the_store_publishes_the_baseline_only_while_there_is_no_champion(tmp_path, evaluated):
    out, _, chosen = evaluated
    store = ModelStore(tmp_path / "store")
    assert not store.push({}, out).pushed  # the candidate itself is not blessed
    result = store.push_baseline(out / FALLBACK_DIR, out, metadata={"mlflow_run_id": None})
    assert result.pushed and result.version == "v0001"
    champion = store.champion()
    assert champion is not None and champion.kind == "baseline"
    assert champion.metadata["baseline"]["label"] == chosen["label"]
    assert set(champion.parts) == {"baseline", "evaluation"}
    assert store.history()[-1]["reason"] == "push (baseline fallback)"
    served = ServableBaseline.load(Path(champion.path) / "baseline")
    assert served.label == chosen["label"]

    again = store.push_baseline(out / FALLBACK_DIR, out)
    assert not again.pushed and "a baseline never replaces one" in again.reason
    assert [b.version for b in store.versions()] == ["v0001"]
    # a blessed model later replaces the baseline as usual (a canary first when asked)
    blessed = tmp_path / "blessed"
    blessed.mkdir()
    (blessed / "blessing.json").write_text('{"blessed": true}')
    model = tmp_path / "model"
    model.mkdir()
    (model / "weights.bin").write_bytes(b"w")
    pushed = store.push({"model": model}, blessed, canary=True)
    assert pushed.pushed and pushed.as_canary and store.bundle(pushed.version).kind == "model"


def test_the_service_serves_a_baseline_bundle_over_python_and_http(tmp_path, evaluated, examples):
    from fastapi.testclient import TestClient

    from serving.app import create_app
    from serving.config import ServingConfig
    from serving.feedback_log import read_feedback
    from serving.recommender import Recommender

    out, _, chosen = evaluated
    store = ModelStore(tmp_path / "store")
    assert store.push_baseline(out / FALLBACK_DIR, out).pushed
    rec = Recommender.load(store, ServingConfig(), feedback_dir=tmp_path / "feedback")
    try:
        assert rec.champion.kind == "baseline" and rec.champion.label == chosen["label"]
        direct = ServableBaseline.load(out / FALLBACK_DIR)
        known = rec.recommend("u005", k=5)
        assert [s.item_id for s in known.items] == direct.recommend("u005", 5)
        assert known.policy_id == f"v0001/baseline:{chosen['label']}" and not known.cold_start
        assert all(s.propensity == 1.0 and s.click_probability is None for s in known.items)
        history = [{"item_id": "i001", "event_type": "view"}, {"item_id": "i004", "event_type": "click"}]
        new = rec.recommend("new-user", k=5, history=history, exclude=["i002"])
        assert [s.item_id for s in new.items] == direct.recommend(
            "new-user", 5, [("i001", "view", None), ("i004", "click", None)], ["i002"])
        with pytest.raises(DataError, match="served by the baseline"):
            rec.explain(new.request_id)

        key = "k" * 24
        with TestClient(create_app(rec, api_key=key, watch=False)) as client:
            r = client.post("/v1/recommendations", json={"user_id": "new-user", "k": 5, "history": history,
                                                         "exclude": ["i002"]})
            assert r.status_code == 200, r.text
            body = r.json()
            assert [it["item_id"] for it in body["items"]] == [s.item_id for s in new.items]
            assert all(it["click_probability"] is None for it in body["items"])
            events = [{"event_type": "impression", "item_id": it["item_id"], "request_id": body["request_id"]}
                      for it in body["items"]]
            events.append({"event_type": "click", "item_id": body["items"][0]["item_id"],
                           "request_id": body["request_id"]})
            r = client.post("/v1/feedback", json={"events": events}, headers={"X-API-Key": key})
            assert r.status_code == 200 and r.json() == {"accepted": 6}
            metrics = client.get("/metrics").text
            assert [ln for ln in metrics.splitlines() if ln.startswith("recflow_model_version_info")] == [
                'recflow_model_version_info{kind="baseline",variant="champion",version="v0001"} 1.0']
            assert client.get(f"/v1/recommendations/{body['request_id']}/explanation").status_code in (400, 422)
        logged = read_feedback(rec.feedback_log.log_dir)
        mine = logged[logged["request_id"] == body["request_id"]]
        assert len(mine) == 6 and set(mine["policy_id"]) == {f"v0001/baseline:{chosen['label']}"}
    finally:
        rec.close()


def test_popularity_itself_can_be_the_served_baseline(tmp_path, examples):
    config = CONFIG.model_copy(update={"baselines": ("popularity", "als")})
    out = tmp_path / "evaluation"
    out.mkdir()
    result = evaluate_recommenders(examples, _losing_candidate(examples), config)
    write_report(out, result)
    chosen = write_baseline_fallback(out, examples, result, config)
    assert chosen is not None and chosen["label"] == "popularity"
    served = ServableBaseline.load(out / FALLBACK_DIR)
    expected = PopularityRecommender().fit(pd.read_parquet(examples / "train.parquet"), pd.read_parquet(
        examples / "items.parquet")).ranking()
    assert served.catalog == [str(i) for i in expected]
    assert served.recommend("anyone", 3, [("i001", "view", None)], ["i000"]) == [
        i for i in served.catalog if i != "i000"][:3]
