"""The candidate index: exact and HNSW top-K, recall against exact search, persistence, and the blessing rule
that refuses an index whose recall is below the floor."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from recflow.errors import DataError
from recflow.evaluation.blessing import decide_blessing
from recflow.evaluation.config import BlessingThresholds, EvaluatorConfig
from recflow.index import (
    CandidateIndexConfig,
    build_index,
    exact_top_k,
    load_index,
    measure_index_recall,
    read_index_report,
    recall_against_exact,
    save_index,
)


def _embeddings(n_items: int = 3000, n_queries: int = 300, dim: int = 16, seed: int = 0):
    """Clustered item vectors (like trained embeddings) and queries near the clusters."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(30, dim))
    items = centres[rng.integers(0, 30, n_items)] + 0.3 * rng.normal(size=(n_items, dim))
    queries = centres[rng.integers(0, 30, n_queries)] + 0.5 * rng.normal(size=(n_queries, dim))
    return [f"i{j}" for j in range(n_items)], items.astype(np.float32), queries.astype(np.float32)


def test_brute_force_is_exact():
    ids, items, queries = _embeddings()
    index = build_index(ids, items, CandidateIndexConfig(kind="brute_force"))
    _, rows = index.search(queries, 10)
    assert np.array_equal(rows, exact_top_k(queries, items, 10))
    assert recall_against_exact(index, queries, items, 10) == 1.0
    assert index.search_ids(queries[:1], 3)[0] == [ids[r] for r in exact_top_k(queries[:1], items, 3)[0]]


def test_hnsw_recall_is_measured_and_depends_on_its_search_width():
    ids, items, queries = _embeddings()
    good = build_index(ids, items, CandidateIndexConfig(kind="hnsw"))
    weak = build_index(ids, items, CandidateIndexConfig(kind="hnsw", hnsw_m=4, ef_construction=8, ef_search=8))
    config = CandidateIndexConfig(kind="hnsw", recall_ks=(10, 100))
    good_report = measure_index_recall(good, queries, items, config)
    weak_report = measure_index_recall(weak, queries, items, config)
    assert good_report["index_recall@10"] >= 0.95
    assert weak_report["index_recall@100"] < good_report["index_recall@100"]
    assert weak_report["index_recall@100"] < 0.95  # a real approximation error, not a copy of exact search
    assert good_report["queries"] == len(queries) and good_report["search_ms_per_query"] > 0


def test_the_blessing_refuses_an_index_below_the_recall_floor():
    ids, items, queries = _embeddings()
    weak = build_index(ids, items, CandidateIndexConfig(kind="hnsw", hnsw_m=4, ef_construction=8, ef_search=8))
    recall = measure_index_recall(weak, queries, items, CandidateIndexConfig(recall_ks=(10,)))["index_recall@10"]
    config = EvaluatorConfig(thresholds=BlessingThresholds(min_index_recall=0.99, min_lift_over_popularity=None))
    candidate = {"ndcg@10": 0.3, "recall@10": 0.4, "index_recall@10": recall}
    refused = decide_blessing(candidate, {}, None, None, config)
    assert not refused.blessed and any("index_recall@10" in r for r in refused.reasons)
    exact = build_index(ids, items, CandidateIndexConfig())
    ok = {**candidate, "index_recall@10": recall_against_exact(exact, queries, items, 10)}
    assert decide_blessing(ok, {}, None, None, config).blessed


def test_save_and_load_round_trip(tmp_path: Path):
    ids, items, queries = _embeddings(n_items=500)
    config = CandidateIndexConfig(kind="hnsw")
    index = build_index(ids, items, config)
    report = measure_index_recall(index, queries, items, config)
    model_dir = tmp_path / "model"
    save_index(index, model_dir / "index", report)
    loaded = load_index(model_dir / "index")
    assert loaded.kind == "hnsw" and loaded.item_ids == ids
    assert np.array_equal(loaded.search(queries, 10)[1], index.search(queries, 10)[1])
    assert read_index_report(model_dir)["index_recall@10"] == report["index_recall@10"]
    assert read_index_report(tmp_path / "nothing") == {}


def test_bad_inputs_raise_data_errors(tmp_path: Path):
    ids, items, queries = _embeddings(n_items=50)
    with pytest.raises(DataError, match="embeddings for"):
        build_index(ids[:-1], items, CandidateIndexConfig())
    index = build_index(ids, items, CandidateIndexConfig())
    with pytest.raises(DataError, match="queries of shape"):
        index.search(queries[:, :3], 5)
    with pytest.raises(DataError, match="no index.faiss"):
        load_index(tmp_path)


def test_ivf_recall_depends_on_cells_scanned_and_survives_save_and_load(tmp_path: Path):
    ids, items, queries = _embeddings(n_items=20000, dim=16)
    config = CandidateIndexConfig(kind="ivf", ivf_lists=200, ivf_nprobe=24, recall_ks=(10,))
    index = build_index(ids, items, config)
    report = measure_index_recall(index, queries, items, config)
    weak = build_index(ids, items, CandidateIndexConfig(kind="ivf", ivf_lists=200, ivf_nprobe=1))
    weak_recall = recall_against_exact(weak, queries, items, 10)
    assert report["index_recall@10"] >= 0.95 and report["ivf_lists"] == 200 and report["ivf_nprobe"] == 24
    assert weak_recall < report["index_recall@10"] and weak_recall < 0.95  # a real approximation
    # the chunked exact scoring gives the same recall whatever the chunk
    assert recall_against_exact(weak, queries, items, 10, chunk=7) == weak_recall
    save_index(index, tmp_path / "index", report)
    loaded = load_index(tmp_path / "index")  # nprobe is not in the faiss file: it comes back from index.json
    assert loaded.kind == "ivf" and loaded.faiss_index.nprobe == 24
    assert np.array_equal(loaded.search(queries, 10)[1], index.search(queries, 10)[1])
