"""The TFRS trainer end to end: ExampleGen -> Transform -> train -> exported raw-feature SavedModels -> reload."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_examplegen import write_world

from recflow.config import ValidationConfig
from recflow.errors import DataError
from recflow.examplegen import ExampleGenConfig, run_example_gen
from recflow.features.transform import TransformConfig, run_transform
from recflow.models import load_recommender
from recflow.recommender import Recommender
from recflow.training.tfrs_trainer import TrainerConfig, TrainResult, train_tfrs

pytestmark = pytest.mark.slow

POSITIVE = ["click", "add_to_cart", "purchase"]
TWO_TOWER = TrainerConfig(retrieval_model="two_tower")
# history_ranking_min_eval_clicks 0: the tests' small log must still exercise the whole candidate selection
SEQ = TrainerConfig(sequence={"epochs": 6, "embedding_dim": 32}, ranking_epochs=1, history_ranking_min_eval_clicks=0)


def _pipeline(base: Path, minimal: bool, config: TrainerConfig, **world) -> tuple[Path, TrainResult]:
    src = write_world(base / "src", minimal=minimal, **world)
    run_example_gen(src, base / "ex", ExampleGenConfig(), ValidationConfig())
    run_transform(base / "ex", base / "tf", TransformConfig())
    return base, train_tfrs(base / "ex", base / "tf", base / "model", config)


@pytest.fixture(scope="module")
def full(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, TrainResult]:
    return _pipeline(tmp_path_factory.mktemp("full"), False, TWO_TOWER)


@pytest.fixture(scope="module")
def minimal(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, TrainResult]:
    return _pipeline(tmp_path_factory.mktemp("minimal"), True, TrainerConfig(retrieval_model="two_tower", epochs=2),
                     n_users=80, sessions=5)


@pytest.fixture(scope="module")
def seq(full: tuple[Path, TrainResult]) -> tuple[Path, TrainResult]:
    """The sequence model (the default retrieval model) on the same shop as ``full``."""
    base, _ = full
    return base, train_tfrs(base / "ex", base / "tf", base / "model-seq", SEQ)


def test_exports_take_raw_features(full: tuple[Path, TrainResult]) -> None:
    import tensorflow as tf

    base, result = full
    report = json.loads(result.training_json.read_text())
    assert report["strategy"] in ("_DefaultDistributionStrategy", "MirroredStrategy")
    assert report["retrieval"]["epochs_run"] >= 1 and report["retrieval"]["examples_per_second"] > 0
    assert len(report["retrieval"]["history"]["loss"]) == report["retrieval"]["epochs_run"]
    assert list(result.logs_dir.glob("retrieval/train/events.out.tfevents.*"))

    retrieval = tf.saved_model.load(str(result.retrieval_dir))
    serve = retrieval.signatures["serving_default"]
    assert set(serve.structured_input_signature[1]) == {"user_id", "hour", "weekday", "device", "region"}
    out = serve(user_id=tf.constant(["u0001", "nobody-new"]), hour=tf.constant([9, 21], tf.int64),
                weekday=tf.constant([0, 6], tf.int64), device=tf.constant(["mobile", "fridge"]),
                region=tf.constant(["north", "mars"]))
    ids, scores = out["item_ids"].numpy(), out["scores"].numpy()
    catalog = set(pd.read_parquet(base / "ex" / "items.parquet")["item_id"])
    assert ids.shape == scores.shape == (2, min(100, len(catalog)))
    assert {i.decode() for i in ids.ravel()} <= catalog
    assert np.all(np.diff(scores, axis=1) <= 1e-6)  # best first

    assert result.ranking_dir is not None and result.metrics["ranking_eval_auc"] > 0.58
    rank = tf.saved_model.load(str(result.ranking_dir)).signatures["serving_default"]
    prob = rank(user_id=tf.constant(["u0001", "u0002"]), item_id=tf.constant(["i0001", "unknown"]),
                hour=tf.constant([9, 9], tf.int64), weekday=tf.constant([1, 1], tf.int64),
                device=tf.constant(["mobile", "mobile"]), region=tf.constant(["north", "north"]))["probability"]
    assert prob.shape == (2,) and np.all((prob.numpy() > 0) & (prob.numpy() < 1))
    # multi-task DCN: the purchase head is exported beside the click probability
    assert set(rank.structured_outputs) == {"probability", "purchase_probability"}
    assert result.metrics["ranking_eval_purchase_auc"] > 0.5

    items = pd.read_parquet(result.item_embeddings_path)
    # 32-d embeddings plus the item-bias dimension (the query side carries a constant 1 there)
    assert set(items["item_id"]) == catalog and len(items["embedding"].iloc[0]) == 33
    users = pd.read_parquet(result.user_embeddings_path)
    assert set(users["user_id"]) == set(pd.read_parquet(base / "ex" / "train.parquet")["user_id"])


def test_index_recall_is_measured_and_reported(full: tuple[Path, TrainResult]) -> None:
    from recflow.index import read_index_report

    _base, result = full
    report = read_index_report(result.out_dir)
    assert report["kind"] == "brute_force" and report["index_recall@10"] == 1.0
    assert result.metrics["index_recall@10"] == 1.0 and report["queries"] > 0


def test_hnsw_index_serves_the_same_lists_as_exact_search_here(full: tuple[Path, TrainResult]) -> None:
    base, _ = full
    result = train_tfrs(base / "ex", base / "tf", base / "model-hnsw",
                        TrainerConfig(retrieval_model="two_tower", index={"kind": "hnsw"}, ranking_epochs=1))
    assert result.metrics["index_recall@10"] >= 0.95  # a small catalog: HNSW finds (almost) every neighbour
    rec = load_recommender(result.out_dir)
    assert rec._index is not None
    lists = rec.recommend(["u0003", "cold-user"], 10, exclude={"u0003": {"i0000"}})
    assert [len(x) for x in lists] == [10, 10] and "i0000" not in lists[0]


def test_cold_users_get_their_segments_taste(full: tuple[Path, TrainResult]) -> None:
    _base, result = full
    rec = load_recommender(result.out_dir)
    items = pd.read_parquet(_base / "ex" / "items.parquet").set_index("item_id")["category"]
    new = [f"new-c{c}" for c in range(6)]  # in users.parquet with a segment, no events
    lists = rec.recommend(new, 10)
    share = np.mean([np.mean([items[i] == f"c{c}" for i in row]) for c, row in enumerate(lists)])
    # a segment-blind model gives every cold user the same list, whose share of "their" category averages 1/6
    assert share > 0.25, share
    emb = rec.user_embeddings(new)
    assert not np.allclose(emb[0], emb[1])


def test_warm_start_copies_the_previous_models_towers(full: tuple[Path, TrainResult]) -> None:
    base, first = full
    warm = train_tfrs(base / "ex", base / "tf", base / "model-warm",
                      TrainerConfig(retrieval_model="two_tower", warm_start_from=str(first.out_dir), epochs=1,
                                    ranking_epochs=1))
    cold = train_tfrs(base / "ex", base / "tf", base / "model-cold",
                      TrainerConfig(retrieval_model="two_tower", epochs=1, ranking_epochs=1))
    copied = warm.history["warm_start"]
    assert copied["variables_copied"] > 0 and copied["id_rows_copied"] > 100
    # one epoch from the trained towers is as good as the trained model, better than one epoch from scratch
    assert warm.metrics["retrieval_eval_top10_accuracy"] > cold.metrics["retrieval_eval_top10_accuracy"]
    missing = train_tfrs(base / "ex", base / "tf", base / "model-nowarm",
                         TrainerConfig(retrieval_model="two_tower", warm_start_from=str(base / "nothing"),
                                       epochs=1, ranking_epochs=1))
    assert any("cold start" in n for n in missing.notes)


def test_reload_recommend_cold_users_and_exclusions(full: tuple[Path, TrainResult]) -> None:
    _base, result = full
    rec = load_recommender(result.out_dir)
    assert isinstance(rec, Recommender) and rec.has_ranking
    lists = rec.recommend(["u0003", "cold-user"], 10, exclude={"u0003": {"i0000", "i0001"}})
    assert [len(x) for x in lists] == [10, 10] and not {"i0000", "i0001"} & set(lists[0])
    assert len(set(lists[1])) == 10
    # Excluding more than the exported top-K forces the full-catalog signature; still k items, none excluded.
    n = rec.num_items
    banned = {f"i{i:04d}" for i in range(n - 5)}
    assert rec.recommend(["u0003"], 5, exclude={"u0003": banned})[0] == \
        [i for i in rec.recommend(["u0003"], n)[0] if i not in banned][:5]
    scores = rec.score(["u0003", "u0003"], ["i0000", "i0001"])
    assert scores.shape == (2,) and np.all((scores > 0) & (scores < 1))


def _recall_at_10(rec: Recommender, base: Path) -> tuple[float, float]:
    train = pd.read_parquet(base / "ex" / "train.parquet")
    test = pd.read_parquet(base / "ex" / "test.parquet")
    truth = test[test["event_type"].isin(POSITIVE)].groupby("user_id")["item_id"].apply(set)
    popular = train[train["event_type"].isin(POSITIVE)]["item_id"].value_counts().index[:10].tolist()

    def recall(lists: list[list[str]]) -> float:
        return float(np.mean([len(set(r) & t) / len(t) for r, t in zip(lists, truth, strict=True)]))

    return recall(rec.recommend(list(truth.index), 10)), recall([popular] * len(truth))


def test_beats_popularity_on_held_out_test(full: tuple[Path, TrainResult]) -> None:
    base, result = full
    model, popularity = _recall_at_10(load_recommender(result.out_dir), base)
    assert model > popularity + 0.03, (model, popularity)


def test_ids_only_log_trains_and_serves(minimal: tuple[Path, TrainResult]) -> None:
    _base, result = minimal
    assert result.ranking_dir is None and any("ranking model skipped" in n for n in result.notes)
    rec = load_recommender(result.out_dir)
    assert not rec.has_ranking
    assert [len(x) for x in rec.recommend(["u0001", "cold"], 7)] == [7, 7]
    assert rec.score(["u0001"], ["i0002"]).shape == (1,)


def test_same_seed_same_metrics(minimal: tuple[Path, TrainResult]) -> None:
    base, first = minimal
    again = train_tfrs(base / "ex", base / "tf", base / "model-again",
                       TrainerConfig(retrieval_model="two_tower", epochs=2))
    assert again.metrics["retrieval_eval_top10_accuracy"] == first.metrics["retrieval_eval_top10_accuracy"]
    assert again.history["retrieval"]["history"]["loss"] == first.history["retrieval"]["history"]["loss"]
    a = pd.read_parquet(first.item_embeddings_path)["embedding"]
    b = pd.read_parquet(again.item_embeddings_path)["embedding"]
    assert np.array_equal(np.stack(a.to_numpy()), np.stack(b.to_numpy()))


def test_missing_transform_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="run the Transform step first"):
        train_tfrs(tmp_path, tmp_path, tmp_path / "model", TrainerConfig())


# ------------------------------------------------------------------------------------ learning from every signal
def test_event_weights_are_validated_and_decide_the_targets(full: tuple[Path, TrainResult]) -> None:
    from pydantic import ValidationError

    from recflow.features.transform import EVENT_CODES
    from recflow.training.tfrs_trainer import target_weights

    with pytest.raises(ValidationError, match="unknown event type"):
        TrainerConfig(event_weights={"impression": 1.0})
    with pytest.raises(ValidationError, match="at least one"):
        TrainerConfig(event_weights={"view": 0.0, "click": 0.0})
    weights = TrainerConfig(event_weights={"view": 0.25, "purchase": 3.0}).event_weights
    codes = np.array([EVENT_CODES[t] for t in ("impression", "view", "click", "purchase")])
    assert target_weights(codes, EVENT_CODES, weights).tolist() == [0.0, 0.25, 0.0, 3.0]
    _base, result = full  # default weights: views are targets beside clicks, carts and purchases
    by_type = result.history["retrieval"]["train_examples_by_type"]
    assert by_type.get("view", 0) > 0 and by_type.get("click", 0) > 0 and "impression" not in by_type
    base, _ = full
    with pytest.raises(DataError, match="event_weights"):
        train_tfrs(base / "ex", base / "tf", base / "model-none",
                   TrainerConfig(retrieval_model="two_tower", event_weights={"add_to_cart": 1.0}, epochs=1))


# ------------------------------------------------------------------------------------------- the sequence model
def test_sequence_model_exports_a_history_signature_equal_to_the_numpy_encoder(seq: tuple[Path, TrainResult]) -> None:
    import tensorflow as tf

    from recflow.models.sequence import EVENT_TYPE_CODES, load_encoder_weights, numpy_user_state
    from serving.bundle import SequenceState
    from serving.history import HistoryEntry

    base, result = seq
    out = result.out_dir
    assert (out / "sequence_encoder.npz").is_file() and (out / "user_history.parquet").is_file()
    assert result.history["retrieval"]["model"] == "sequence" and result.metrics["retrieval_eval_top10_accuracy"] > 0
    retrieval = tf.saved_model.load(str(result.retrieval_dir))
    ids = [["", "i0003", "i0007", "i0012"], ["i0001", "i0001", "nope", "i0040"]]
    types = [[0, 2, 3, 2], [0, 0, 0, 4]]
    gaps = [[-1.0, 300.0, 60.0, 0.0], [-1.0, -1.0, -1.0, -1.0]]
    saved = retrieval.signatures["history_embedding"](
        hist_item_ids=tf.constant(ids), hist_types=tf.constant(types, tf.int64),
        hist_gaps=tf.constant(gaps, tf.float32))["embedding"].numpy()
    weights, _meta = load_encoder_weights(out)
    rows = pd.read_parquet(out / "sequence_items.parquet").set_index("item_id")["row"]
    items = np.array([[rows.get(i, -1) if i else -1 for i in row] for row in ids])
    assert np.allclose(numpy_user_state(weights, items, np.array(types), np.array(gaps)), saved, atol=1e-4)
    # serving's numpy path (serving.bundle.SequenceState) gives the SavedModel's state for the same history
    state = SequenceState(out)
    entries = [HistoryEntry("i0003", "view", 1000.0), HistoryEntry("i0007", "click", 1240.0),
               HistoryEntry("i0012", "view", 1300.0)]
    assert np.allclose(state.encode(entries), saved[0], atol=1e-4)
    assert EVENT_TYPE_CODES["view"] == 2 and EVENT_TYPE_CODES["click"] == 3
    # a known user's query_embedding (stored history looked up inside) is the exported user embedding
    users = pd.read_parquet(result.user_embeddings_path).set_index("user_id")["embedding"]
    some = sorted(users.index)[:3]
    ctx = json.loads((out / "default_context.json").read_text())
    inputs = {"user_id": tf.constant(some)}
    for name, spec in retrieval.signatures["query_embedding"].structured_input_signature[1].items():
        if name != "user_id":
            inputs[name] = tf.constant([ctx[name]] * len(some), spec.dtype)
    emb = retrieval.signatures["query_embedding"](**inputs)["embedding"].numpy()
    assert np.allclose(emb, np.stack(users[some].to_numpy()), atol=1e-4)
    stored = state.stored[some[0]]
    assert np.allclose(state.encode(stored), emb[0], atol=1e-4)


def test_sequence_model_trains_the_history_ranker_and_point_in_time_decision_states(
        seq: tuple[Path, TrainResult]) -> None:
    from recflow.models.history_ranking import HistoryRanker
    from recflow.policy.logged_data import DECISION_STATES_FILE

    base, result = seq
    report = result.history["history_ranking"]
    assert report["train_examples"] > 0 and report["train_clicks"] > 0 and report["eval_clicks"] > 0
    # candidates simplest first: the score alone, no per-item vectors, then the L2 grid from the strongest penalty
    trials = report["l2_trials"]
    assert [t["candidate"] for t in trials] == ["score_only", "personal_off",
                                                *sorted(SEQ.history_ranking_l2, reverse=True)]
    assert report["selection"] == "one_standard_error" and sum(t["chosen"] for t in trials) == 1
    best = min(t["eval_log_loss"] for t in trials)
    first_within = next(t for t in trials if t["eval_log_loss"] - best <= t["standard_error"])
    assert first_within["chosen"] and report["chosen_candidate"] == first_within["candidate"]
    assert 0.0 <= result.metrics["history_ranker_eval_auc"] <= 1.0
    ranker = HistoryRanker.load(result.out_dir)
    items = pd.read_parquet(result.item_embeddings_path)["item_id"].astype(str).tolist()
    assert ranker is not None and ranker.meta["item_ids"] == items
    # one state per (user, impression time), each the encoder's state of the history strictly before it
    states = pd.read_parquet(result.out_dir / DECISION_STATES_FILE)
    assert not states.duplicated(["user_id", "seconds"]).any()
    train = pd.read_parquet(base / "ex" / "train.parquet")
    imp = train[train["event_type"] == "impression"]
    assert 0 < len(states) <= imp.groupby(["user_id", "timestamp"]).ngroups + 10_000
    from recflow.io import epoch_seconds
    from serving.bundle import SequenceState
    from serving.history import HistoryEntry

    events = pd.concat([pd.read_parquet(base / "ex" / f"{s}.parquet") for s in ("train", "eval")])
    events = events[events["event_type"].isin(["view", "click", "add_to_cart", "purchase"])]
    events = events.assign(seconds=epoch_seconds(events["timestamp"]))
    seq_state = SequenceState(result.out_dir)
    row = states.iloc[len(states) // 2]
    before = events[(events["user_id"] == row["user_id"]) & (events["seconds"] < row["seconds"])]
    before = before.sort_values("seconds", kind="stable")
    entries = [HistoryEntry(str(i), str(t), float(x)) for i, t, x in
               zip(before["item_id"], before["event_type"], before["seconds"], strict=True)]
    assert np.allclose(seq_state.encode(entries), np.asarray(row["embedding"]), atol=1e-4)


def test_sequence_model_reloads_recommends_and_beats_popularity(seq: tuple[Path, TrainResult]) -> None:
    base, result = seq
    rec = load_recommender(result.out_dir)
    lists = rec.recommend(["u0003", "cold-user"], 10, exclude={"u0003": {"i0000"}})
    assert [len(x) for x in lists] == [10, 10] and "i0000" not in lists[0]
    model, popularity = _recall_at_10(rec, base)
    assert model > popularity, (model, popularity)
    # the hybrid stage ran (trainer.hybrid is on by default): its choice is on record, and the loader uses it
    info = json.loads((result.out_dir / "hybrid.json").read_text())
    assert result.history["hybrid"] == info and info["skipped"] is None and info["validation_users"] > 0
    assert info["weight"] in SEQ.hybrid.weight_grid and info["l2"] in SEQ.hybrid.l2_grid
    assert result.metrics["hybrid_weight"] == info["weight"]
    assert result.metrics["hybrid_eval_ndcg@10"] == max(info["weight_candidates"].values())
    assert (result.out_dir / "item_item.npy").is_file() == (info["weight"] > 0)
    assert (rec.hybrid is not None) == (info["weight"] > 0)


def test_sequence_warm_start_same_kind_copies_other_kind_is_a_cold_start(
        full: tuple[Path, TrainResult], seq: tuple[Path, TrainResult]) -> None:
    base, first = seq
    cfg = {"sequence": {"epochs": 1, "embedding_dim": 32}, "ranking_epochs": 1}
    warm = train_tfrs(base / "ex", base / "tf", base / "model-seq-warm",
                      TrainerConfig(warm_start_from=str(first.out_dir), **cfg))
    copied = warm.history["retrieval"]["warm_start"]
    assert copied["variables_copied"] > 10 and copied["id_rows_copied"] > 50
    cold = train_tfrs(base / "ex", base / "tf", base / "model-seq-cold", TrainerConfig(**cfg))
    assert warm.metrics["retrieval_eval_top10_accuracy"] > cold.metrics["retrieval_eval_top10_accuracy"]
    _, two_tower = full
    other = train_tfrs(base / "ex", base / "tf", base / "model-seq-other",
                       TrainerConfig(warm_start_from=str(two_tower.out_dir), **cfg))
    assert any("cold start" in n and "not a sequence model" in n for n in other.notes)


def _chain_world(path: Path, n_users: int = 150, n_items: int = 30, sessions: int = 8, seed: int = 0) -> Path:
    """A views-only shop where the next item is clear: every session views items s, s+1, s+2, s+3 (mod
    n_items) one minute apart, from a random start s."""
    from recflow.io import write_dataset

    rng = np.random.default_rng(seed)
    start = pd.Timestamp("2026-01-05", tz="UTC")
    rows = []
    for u in range(n_users):
        for _ in range(sessions):
            t = start + pd.Timedelta(seconds=int(rng.integers(0, 14 * 86400)))
            first = int(rng.integers(n_items))
            for step in range(4):
                rows.append({"user_id": f"u{u:04d}", "item_id": f"i{(first + step) % n_items:04d}",
                             "event_type": "view", "timestamp": t + pd.Timedelta(minutes=step)})
    events = pd.DataFrame(rows).sort_values("timestamp", kind="stable").reset_index(drop=True)
    write_dataset(path, events=events)
    return path


def test_a_new_users_history_drives_what_the_sequence_model_serves(tmp_path: Path) -> None:
    from serving.bundle import SequenceState
    from serving.history import HistoryEntry

    run_example_gen(_chain_world(tmp_path / "src"), tmp_path / "ex", ExampleGenConfig(), ValidationConfig())
    run_transform(tmp_path / "ex", tmp_path / "tf", TransformConfig())
    result = train_tfrs(tmp_path / "ex", tmp_path / "tf", tmp_path / "model",
                        TrainerConfig(sequence={"epochs": 15, "embedding_dim": 32, "dropout": 0.1},
                                      hybrid={"enabled": False}))  # the sequence model alone is tested here
    assert result.history["retrieval"]["train_examples_by_type"] == {
        "view": result.history["retrieval"]["train_examples"]}  # a views-only shop trains on its views
    state = SequenceState(result.out_dir)
    items = pd.read_parquet(result.item_embeddings_path)
    ids, matrix = items["item_id"].tolist(), np.stack(items["embedding"].to_numpy())
    hits = []
    for x in range(30):  # a user nobody has seen, with the two items they just viewed
        history = [HistoryEntry(f"i{(x - 1) % 30:04d}", "view", 0.0), HistoryEntry(f"i{x:04d}", "view", 60.0)]
        best = [ids[r] for r in np.argsort(-(matrix @ state.encode(history)))[:3]]
        hits.append(f"i{(x + 1) % 30:04d}" in best)
    # the item that follows the history is in the top 3 for most histories (chance: 3/30)
    assert np.mean(hits) > 0.6, np.mean(hits)
    # the SavedModel's history signature, through the count baselines' API, agrees
    rec = load_recommender(result.out_dir)
    assert rec.is_sequence and rec.hybrid is None
    assert "enabled is false" in json.loads((result.out_dir / "hybrid.json").read_text())["skipped"]
    best = rec.recommend_from_history(["i0004", "i0005"], 3, event_types=["view", "view"], timestamps=[0.0, 60.0])
    direct = np.argsort(-(matrix @ state.encode([HistoryEntry("i0004", "view", 0.0),
                                                 HistoryEntry("i0005", "view", 60.0)])))[:3]
    assert best[0] == ids[direct[0]] and set(best) == {ids[r] for r in direct}
    assert "i0006" not in rec.recommend_from_history(["i0004", "i0005"], 3, exclude={"i0006"})


def test_history_ranker_train_impressions_cap_is_a_seeded_sample_and_reported(
        seq: tuple[Path, TrainResult], tmp_path: Path) -> None:
    from recflow.policy.logged_data import DECISION_STATES_FILE

    base, whole = seq
    n_train = whole.history["history_ranking"]["train_examples"]
    n_eval = whole.history["history_ranking"]["eval_examples"]
    cap, eval_cap = n_train // 3, n_eval // 2
    config = SEQ.model_copy(update={"history_ranking_max_train_impressions": cap,
                                    "history_ranking_max_eval_impressions": eval_cap, "history_ranking_epochs": 2})
    capped = train_tfrs(base / "ex", base / "tf", tmp_path / "model", config)
    report = capped.history["history_ranking"]
    assert report["train_examples"] == cap and report["eval_examples"] == eval_cap
    assert report["train_impressions_sampled"] == {"kept": cap, "of": n_train, "cap": cap}
    assert report["eval_impressions_sampled"] == {"kept": eval_cap, "of": n_eval, "cap": eval_cap}
    assert any("history_ranking_max_train_impressions" in n for n in capped.notes)
    assert any("history_ranking_max_eval_impressions" in n for n in capped.notes)
    assert whole.history["history_ranking"]["train_impressions_sampled"] is None
    assert whole.history["history_ranking"]["eval_impressions_sampled"] is None
    # the policy's point-in-time states still cover every impression
    states = pd.read_parquet(capped.out_dir / DECISION_STATES_FILE)
    pd.testing.assert_frame_equal(states[["user_id", "seconds"]],
                                  pd.read_parquet(whole.out_dir / DECISION_STATES_FILE)[["user_id", "seconds"]])
