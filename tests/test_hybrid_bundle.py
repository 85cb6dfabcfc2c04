"""The sequence + EASE blend in a real bundle: what the pipeline's trainer records, and that the evaluation
loader (recflow.models.loading) and serving (serving.slates) retrieve the same items with it.

The bundle is the cached sample bundle of ``pipelines.sample_bundle`` (one real pipeline run on a tiny simulated
shop; about three minutes the first time). Its blend is replaced by one of weight 0.5 over EASE fitted on the
bundle's stored histories, so the readers are tested with a blend whatever weight the tiny shop's eval split
chose.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipelines.sample_bundle import bundle_parts, push
from recflow import bundle_layout
from recflow.errors import DataError
from recflow.model_store import ModelStore
from recflow.models.hybrid import BLEND_GRID, blend_scores

WEIGHT = 0.5


@pytest.fixture(scope="module")
def parts() -> Path:
    return bundle_parts()


def _with_blend(parts: Path, out: Path, weight: float) -> Path:
    """A copy of the bundle ``parts`` whose blend has ``weight``, EASE fitted on its stored histories."""
    from recflow.training.hybrid import ease_item_item

    shutil.copytree(parts, out)
    model = out / "model"
    items = pd.read_parquet(model / bundle_layout.ITEM_EMBEDDINGS_FILE)["item_id"].astype(str).tolist()
    hist = pd.read_parquet(model / bundle_layout.USER_HISTORY_FILE)
    events = pd.DataFrame([(u, i, "view") for u, ids in zip(hist["user_id"], hist["item_ids"], strict=True)
                           for i in ids], columns=["user_id", "item_id", "event_type"])
    (model / bundle_layout.ITEM_ITEM_FILE).unlink(missing_ok=True)
    if weight > 0:
        np.save(model / bundle_layout.ITEM_ITEM_FILE, ease_item_item(events, items, 50.0, {"view": 1.0}))
    (model / bundle_layout.HYBRID_FILE).write_text(json.dumps(
        {"skipped": None, "weight": weight, "l2": 50.0, "history_max_len": 20, "items": len(items)}))
    return out


@pytest.fixture(scope="module")
def blended(parts: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _with_blend(parts, tmp_path_factory.mktemp("blended") / "bundle", WEIGHT)


@pytest.fixture(scope="module")
def readers(blended: Path, tmp_path_factory: pytest.TempPathFactory):
    """The evaluation loader and serving's Recommender (greedy, one store version) of the blended bundle."""
    from recflow.models import load_recommender
    from serving.config import ServingConfig
    from serving.recommender import Recommender

    root = tmp_path_factory.mktemp("store")
    push(ModelStore(root), blended)
    server = Recommender.load(root, ServingConfig(epsilon=0.0, policy_rerank=False))
    yield load_recommender(blended / "model"), server
    server.close()


def test_the_pipeline_trainer_records_its_blend(parts: Path) -> None:
    model = parts / "model"
    info = json.loads((model / bundle_layout.HYBRID_FILE).read_text())
    report = json.loads((model / bundle_layout.TRAINING_REPORT_FILE).read_text())
    assert report["hybrid"] == info
    if info["skipped"] is None:  # the tiny shop may or may not gain from EASE; either way it is on record
        assert info["weight"] in BLEND_GRID and info["validation_users"] > 0
        assert report["metrics"]["hybrid_weight"] == info["weight"]
        assert report["metrics"]["hybrid_eval_ndcg@10"] == max(info["weight_candidates"].values())
        assert (model / bundle_layout.ITEM_ITEM_FILE).is_file() == (info["weight"] > 0)
    else:
        assert not (model / bundle_layout.ITEM_ITEM_FILE).exists()


def _histories(item_ids: np.ndarray) -> list[list[dict]]:
    return [[{"item_id": str(item_ids[s + 7 * n]), "event_type": t, "timestamp": 1000.0 + 60 * n}
             for n, t in enumerate(("view", "click", "view", "view"))] for s in (0, 11, 40, 90)]


def test_the_loader_and_serving_retrieve_the_same_items_with_the_blend(readers) -> None:
    from serving.history import parse_history

    loader, server = readers
    b = server.champion
    assert loader.hybrid is not None and loader.hybrid.weight == WEIGHT and b.hybrid is not None
    changed = 0
    for history in _histories(b.item_ids):
        ctx = b.context_for("hybrid-newcomer", None)
        top, state, cold = server.retrieve(b, "hybrid-newcomer", ctx, parse_history(history), None)
        assert not cold and state is not None
        served = [str(b.item_ids[r]) for r in top[:10]]
        evaluated = loader.recommend_from_history([h["item_id"] for h in history], 10,
                                                  event_types=[h["event_type"] for h in history],
                                                  timestamps=[h["timestamp"] for h in history])
        assert evaluated == served
        sequence_only = [str(b.item_ids[r]) for r in server._top(b, state, None)[:10]]
        changed += sequence_only != served
    assert changed >= 2  # the blend is what retrieves, not the sequence model alone
    # known users, from their stored histories
    users = sorted(b.user_index)[:20]
    evaluated_known = loader.recommend(users, 10)
    for user, items in zip(users, evaluated_known, strict=True):
        top, _, _ = server.retrieve(b, user, b.context_for(user, None), None, None)
        assert items == [str(b.item_ids[r]) for r in top[:10]]


def test_the_loaders_scores_are_the_blend_computed_by_hand(blended: Path, readers) -> None:
    loader, _ = readers
    model = blended / "model"
    items = pd.read_parquet(model / bundle_layout.ITEM_EMBEDDINGS_FILE)
    item_ids = items["item_id"].astype(str).tolist()
    item_matrix = np.stack(items["embedding"].to_numpy()).astype(np.float32)
    users = pd.read_parquet(model / bundle_layout.USER_EMBEDDINGS_FILE)
    hist = pd.read_parquet(model / bundle_layout.USER_HISTORY_FILE).set_index("user_id")["item_ids"]
    matrix = np.load(model / bundle_layout.ITEM_ITEM_FILE)
    for user, emb in list(zip(users["user_id"], users["embedding"], strict=True))[:10]:
        seq = np.asarray(emb, np.float32) @ item_matrix.T
        rows = sorted({item_ids.index(i) for i in list(hist[user])[-20:]})
        by_hand = blend_scores(seq[None], matrix[rows].sum(axis=0, dtype=np.float64)[None], WEIGHT)[0]
        got = loader.recommend_with_scores([user], 10)[0]
        order = np.argsort(-by_hand, kind="stable")[:10]
        assert [i for i, _ in got] == [item_ids[j] for j in order]
        np.testing.assert_allclose([s for _, s in got], by_hand[order], atol=1e-4)


def test_weight_zero_is_the_sequence_model_exactly(parts: Path, tmp_path: Path) -> None:
    import tensorflow as tf

    from recflow.models import load_recommender
    from recflow.models.sequence import EVENT_TYPE_CODES
    from serving.bundle import ServingBundle

    zero = _with_blend(parts, tmp_path / "zero", 0.0)
    loader = load_recommender(zero / "model")
    assert loader.hybrid is None and ServingBundle.load(zero).hybrid is None
    ids = pd.read_parquet(zero / "model" / bundle_layout.ITEM_EMBEDDINGS_FILE)["item_id"].astype(str).to_numpy()
    for history in _histories(ids)[:2]:
        items = [h["item_id"] for h in history]
        types = [EVENT_TYPE_CODES[h["event_type"]] for h in history]
        raw = loader._retrieval.signatures["history_top_k"](
            hist_item_ids=tf.constant([items]), hist_types=tf.constant([types], tf.int64),
            hist_gaps=tf.constant([[180.0, 120.0, 60.0, 0.0]], tf.float32))
        expected = [i.decode() for i in raw["item_ids"].numpy()[0]][:10]
        assert loader.recommend_from_history(items, 10, event_types=[h["event_type"] for h in history],
                                             timestamps=[h["timestamp"] for h in history]) == expected


def test_a_broken_blend_stops_both_readers_with_the_file_named(parts: Path, tmp_path: Path) -> None:
    from recflow.models import load_recommender
    from serving.bundle import ServingBundle

    broken = _with_blend(parts, tmp_path / "broken", WEIGHT)
    (broken / "model" / bundle_layout.HYBRID_FILE).unlink()
    with pytest.raises(DataError, match="hybrid.json: missing, but item_item.npy is there"):
        load_recommender(broken / "model")
    with pytest.raises(DataError, match="hybrid.json: missing"):
        ServingBundle.load(broken)
