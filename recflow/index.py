"""The candidate index: top-K maximum-inner-product search over the item embeddings of the retrieval model.

Two kinds, chosen by :class:`CandidateIndexConfig` (``trainer.index`` in the config):

* ``brute_force`` -- exact top-K (faiss ``IndexFlatIP``: every item scored, BLAS matrix product);
* ``ivf`` -- approximate top-K with a faiss inverted file (``IndexIVFFlat`` over inner products: k-means cells,
  ``nprobe`` nearest cells scanned per query); quick to build for a million items (tens of seconds on one core,
  where an HNSW graph takes minutes), the serving benchmark's 1,000,000-item catalog uses it;
* ``hnsw`` -- approximate top-K with a faiss HNSW graph over inner products (``IndexHNSWFlat``,
  ``METRIC_INNER_PRODUCT``). ScaNN (the TFRS ``ScaNN`` layer) was the first choice, but scann 1.4.2, the only
  wheel for Python 3.11, is built against another TensorFlow/abseil ABI and fails to load its op library with
  TF 2.21 (``undefined symbol ... absl ... raw_log_internal``), so faiss (Meta, wheels for every platform) is used.

Whatever the kind, :func:`measure_index_recall` compares the index's top-K with exact search for a set of real
queries (the users' query embeddings) and :func:`save_index` writes the numbers to ``index.json``; the
Evaluator reads ``index_recall@<k>`` from it and refuses a model whose approximate index misses too many of the
exact neighbours (``evaluator.thresholds.min_index_recall``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from recflow import bundle_layout
from recflow.errors import DataError
from recflow.io import atomic_path

#: File names inside an index directory.
INDEX_FILE = "index.faiss"
IDS_FILE = "item_ids.json"
REPORT_FILE = "index.json"


class CandidateIndexConfig(BaseModel):
    """Which candidate index serves retrieval and how its recall is checked (``trainer.index``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["brute_force", "hnsw", "ivf"] = Field(
        "brute_force",
        description="brute_force: exact top-K; hnsw: approximate (faiss HNSW over inner products); ivf: approximate "
        "(faiss inverted file over inner products, fastest to build for millions of items).",
    )
    hnsw_m: int = Field(32, ge=4, description="HNSW: neighbours per node (graph degree); more = better recall.")
    ef_construction: int = Field(200, ge=8, description="HNSW: candidate list size while building the graph.")
    ef_search: int = Field(128, ge=8, description="HNSW: candidate list size per query; more = better recall, slower.")
    ivf_lists: int | None = Field(
        None, ge=1, description="IVF: k-means cells (None: about 4 sqrt(n_items), at most n_items / 39)."
    )
    ivf_nprobe: int = Field(32, ge=1, description="IVF: cells scanned per query; more = better recall, slower.")
    ivf_train_items: int = Field(
        65_536, ge=1000, description="IVF: items (sampled with the seed) the k-means cells are trained on."
    )
    seed: int = Field(42, description="Seed of the IVF training sample and k-means.")
    recall_ks: tuple[int, ...] = Field(
        (10, 100), min_length=1, description="Cut-offs at which recall against exact search is measured."
    )
    recall_queries: int = Field(
        2000, gt=0, description="Query embeddings (sampled with the trainer's seed) used to measure recall."
    )


def _faiss() -> Any:
    import faiss

    faiss.omp_set_num_threads(1)  # deterministic and polite on shared 2-core machines
    return faiss


@dataclass
class CandidateIndex:
    """A built index over ``item_ids`` (row i of the embeddings = ``item_ids[i]``)."""

    kind: str
    item_ids: list[str]
    dim: int
    faiss_index: Any

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(scores [B, k], item rows [B, k])``, best first; rows are -1 where fewer than k items exist."""
        q = np.ascontiguousarray(np.asarray(queries, dtype=np.float32))
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise DataError(f"candidate index: queries of shape {q.shape}, expected [batch, {self.dim}]")
        scores, rows = self.faiss_index.search(q, min(k, len(self.item_ids)))
        return scores, rows

    def search_ids(self, queries: np.ndarray, k: int) -> list[list[str]]:
        """The top-``k`` item ids of each query."""
        _, rows = self.search(queries, k)
        return [[self.item_ids[r] for r in row if r >= 0] for row in rows]


def build_index(item_ids: Sequence[str], embeddings: np.ndarray, config: CandidateIndexConfig) -> CandidateIndex:
    """Build the configured index over ``embeddings`` ([n_items, D], row i = ``item_ids[i]``)."""
    emb = np.ascontiguousarray(np.asarray(embeddings, dtype=np.float32))
    if emb.ndim != 2 or emb.shape[0] != len(item_ids) or emb.shape[0] == 0:
        raise DataError(f"candidate index: {emb.shape} embeddings for {len(item_ids)} item ids")
    faiss = _faiss()
    dim = int(emb.shape[1])
    if config.kind == "brute_force":
        index = faiss.IndexFlatIP(dim)
    elif config.kind == "ivf":
        n = emb.shape[0]
        lists = config.ivf_lists or int(4 * np.sqrt(n))
        lists = max(1, min(lists, n // 39 or 1))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, lists, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = config.seed
        sample = emb
        if n > config.ivf_train_items:
            rows = np.sort(np.random.default_rng(config.seed).choice(n, config.ivf_train_items, replace=False))
            sample = emb[rows]
        index.train(sample)
        index.nprobe = min(config.ivf_nprobe, lists)
    else:
        index = faiss.IndexHNSWFlat(dim, config.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = config.ef_construction
        index.hnsw.efSearch = config.ef_search
    index.add(emb)
    return CandidateIndex(config.kind, [str(i) for i in item_ids], dim, index)


def exact_top_k(queries: np.ndarray, embeddings: np.ndarray, k: int) -> np.ndarray:
    """Rows of the exact top-``k`` items by inner product (numpy; ties to the lower row), shape [B, k]."""
    scores = np.asarray(queries, np.float32) @ np.asarray(embeddings, np.float32).T
    k = min(k, scores.shape[1])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.lexsort((part, -np.take_along_axis(scores, part, axis=1)), axis=1)
    return np.take_along_axis(part, order, axis=1)


def recall_against_exact(
    index: CandidateIndex, queries: np.ndarray, embeddings: np.ndarray, k: int, chunk: int = 16
) -> float:
    """Mean over queries of |index top-k ∩ exact top-k| / k (1.0 = the index finds every exact neighbour).

    Exact ties at the k-th score are counted as found when the index returns any of the tied items. Exact
    scores are computed ``chunk`` queries at a time, so a million-item catalog needs ``chunk * n_items`` floats.
    """
    q = np.asarray(queries, np.float32)
    emb = np.asarray(embeddings, np.float32)
    k = min(k, len(index.item_ids))
    _, rows = index.search(q, k)
    found = 0
    for start in range(0, len(q), chunk):
        scores = q[start : start + chunk] @ emb.T
        kth = -np.partition(-scores, k - 1, axis=1)[:, k - 1]
        for i, row in enumerate(rows[start : start + chunk]):
            row = row[row >= 0]
            # an item whose exact score reaches the k-th best score is a correct answer
            found += min(k, int(np.count_nonzero(scores[i, row] >= kth[i] - 1e-6)))
    return found / (k * len(q)) if len(q) else float("nan")


def measure_index_recall(index: CandidateIndex, queries: np.ndarray, embeddings: np.ndarray,
                         config: CandidateIndexConfig, seed: int = 42) -> dict[str, Any]:
    """Recall of ``index`` against exact search at ``config.recall_ks`` and its query latency.

    ``queries`` are real query embeddings (at most ``config.recall_queries`` are sampled with ``seed``).
    Returns ``{"kind", "items", "queries", "index_recall@<k>": ..., "search_ms_per_query", "exact_ms_per_query"}``.
    """
    q = np.asarray(queries, np.float32)
    if len(q) > config.recall_queries:
        q = q[np.sort(np.random.default_rng(seed).choice(len(q), config.recall_queries, replace=False))]
    out: dict[str, Any] = {"kind": index.kind, "items": len(index.item_ids), "queries": len(q)}
    for k in config.recall_ks:
        out[f"index_recall@{k}"] = recall_against_exact(index, q, embeddings, k) if len(q) else None
    k = max(config.recall_ks)
    if len(q):
        started = time.perf_counter()
        index.search(q, k)
        out["search_ms_per_query"] = (time.perf_counter() - started) * 1000 / len(q)
        timed = q[:64]  # a [queries, n_items] score matrix of a million-item catalog would not fit in memory
        started = time.perf_counter()
        exact_top_k(timed, embeddings, k)
        out["exact_ms_per_query"] = (time.perf_counter() - started) * 1000 / len(timed)
    if index.kind == "hnsw":
        out.update(hnsw_m=config.hnsw_m, ef_construction=config.ef_construction, ef_search=config.ef_search)
    if index.kind == "ivf":
        out.update(ivf_lists=int(index.faiss_index.nlist), ivf_nprobe=int(index.faiss_index.nprobe))
    return out


def save_index(index: CandidateIndex, out_dir: Path, report: dict[str, Any] | None = None) -> Path:
    """Write ``index.faiss``, ``item_ids.json`` and ``index.json`` (``report``, e.g. the recall) into ``out_dir``."""
    faiss = _faiss()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / INDEX_FILE) as tmp:
        faiss.write_index(index.faiss_index, str(tmp))
    with atomic_path(out_dir / IDS_FILE) as tmp:
        Path(tmp).write_text(json.dumps(index.item_ids), encoding="utf-8")
    doc = {"kind": index.kind, "dim": index.dim, **(report or {})}
    with atomic_path(out_dir / REPORT_FILE) as tmp:
        Path(tmp).write_text(json.dumps(doc, indent=2), encoding="utf-8")
    return out_dir / REPORT_FILE


def load_index(index_dir: Path, ef_search: int | None = None) -> CandidateIndex:
    """Load an index written by :func:`save_index` (``ef_search`` overrides the HNSW search width)."""
    index_dir = Path(index_dir)
    path = index_dir / INDEX_FILE
    if not path.is_file():
        raise DataError(f"{index_dir}: no {INDEX_FILE} (expected the trainer's candidate index)")
    faiss = _faiss()
    index = faiss.read_index(str(path))
    report = json.loads((index_dir / REPORT_FILE).read_text(encoding="utf-8"))
    if ef_search is not None and hasattr(index, "hnsw"):
        index.hnsw.efSearch = ef_search
    if "ivf_nprobe" in report and hasattr(index, "nprobe"):
        index.nprobe = int(report["ivf_nprobe"])  # faiss does not store nprobe in the file
    ids = json.loads((index_dir / IDS_FILE).read_text(encoding="utf-8"))
    return CandidateIndex(report["kind"], ids, int(index.d), index)


def read_index_report(model_dir: Path) -> dict[str, Any]:
    """The ``index/index.json`` the trainer wrote into ``model_dir`` (``{}`` when there is none).

    Its ``index_recall@<k>`` values are what the Evaluator's ``min_index_recall`` rule checks.
    """
    path = Path(model_dir) / bundle_layout.INDEX_DIR / REPORT_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
