"""The trainer's hybrid stage: EASE beside the sequence model, and the blend weight, chosen on the eval split.

With ``trainer.retrieval_model: sequence`` and ``trainer.hybrid.enabled`` the TFRS trainer
(:func:`recflow.training.tfrs_trainer.train_hybrid`) calls :func:`fit_hybrid` after the sequence model:

1. the validation queries (:func:`validation_queries`): each eval-split user with a relevant item (the
   Evaluator's ground truth, :func:`recflow.evaluation.metrics.ground_truth`, train items excluded) and a
   train history; the history is the user's last ``max_len`` train events, what the sequence encoder reads
   (at most ``max_users`` users, sampled with ``seed``);
2. EASE (:class:`recflow.baselines.EASERecommender`) fitted on the train split's events as the Evaluator reads
   them (:func:`recflow.evaluation.evaluator.load_examples`; the event types ``trainer.event_weights`` weighs),
   once per ``l2_grid`` value; the ``l2`` whose item-item scores of the histories rank the users' eval items
   best (NDCG@``k``) is kept -- the same small search the Evaluator's tuned EASE gets;
3. the blend weight over ``weight_grid`` (:func:`recflow.models.hybrid.choose_blend_weight`) with the sequence
   model's scores of the same histories.

It writes ``hybrid.json`` (the weight, l2, every candidate's validation NDCG, the item count, or why the blend
is off) and, when the chosen weight is above 0, ``item_item.npy`` (float32 [items, items] in the order of
``item_embeddings.parquet``; NaN columns for items EASE never saw). The blend is off, with a note, above
``max_items`` items (EASE's dense matrix: 4 x items^2 bytes on disk, more to fit), with an approximate
candidate index (full-catalog scores do not go with an ANN catalog), or without validation queries.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, field_validator

from recflow import bundle_layout
from recflow.models.hybrid import BLEND_GRID, choose_blend_weight, history_rows, item_item_scores

#: A function from histories (``user_id``, ``item_ids``, ``event_types``, ``timestamps`` lists, oldest first,
#: as :func:`recflow.training.sequence_retrieval.stored_histories` writes them) to the sequence model's
#: [users, items] scores in the catalog's item order.
HistoryScorer = Callable[[pd.DataFrame], np.ndarray]


class HybridConfig(BaseModel):
    """The sequence + EASE blend of the TFRS trainer (``trainer.hybrid``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(
        True, description="With the sequence retrieval model, fit EASE on the train split and blend it with the "
        "sequence model's scores at a weight chosen on the eval split (recflow.training.hybrid; 0 = the "
        "sequence model alone); every reader of the bundle (evaluation, serving) then retrieves with the blend.")
    max_items: int | None = Field(
        20_000, gt=0, description="Skip the blend (with a note in training.json) above this many catalog items: "
        "EASE's dense item x item matrix costs 4 x items^2 bytes in the bundle (1.6 GB at 20,000) and more to "
        "fit, as evaluator.max_dense_items; null = never skip.")
    l2_grid: tuple[float, ...] = Field(
        (1.0, 10.0, 50.0, 200.0, 1000.0, 5000.0), min_length=1,
        description="EASE's L2 candidates (the range the Evaluator tunes EASE over); the one whose scores rank "
        "the eval split's items best is kept.")
    weight_grid: tuple[float, ...] = Field(
        BLEND_GRID, min_length=1, description="Blend weights tried on the eval split (EASE's share, in [0, 1]; "
        "ties go to the smaller weight).")
    k: int = Field(10, gt=0, description="Cut-off of the validation NDCG that chooses l2 and the weight.")
    max_users: int | None = Field(
        2000, gt=0, description="Validation users (sampled with seed; memory: a few [users, items] float64 "
        "score matrices); null = all.")
    seed: int = Field(42, ge=0, description="Seed of the validation user sample.")

    @field_validator("l2_grid")
    @classmethod
    def _positive_l2(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if any(not v > 0 for v in value):
            raise ValueError(f"every EASE l2 must be > 0, got {list(value)}")
        return tuple(float(v) for v in value)

    @field_validator("weight_grid")
    @classmethod
    def _unit_weights(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if any(not 0.0 <= v <= 1.0 for v in value):
            raise ValueError(f"every blend weight must be in [0, 1], got {list(value)}")
        return tuple(float(v) for v in value)


@dataclass
class HybridResult:
    """What the hybrid stage wrote (``info`` is ``hybrid.json`` and training.json's ``hybrid`` block)."""

    info: dict[str, Any]
    metrics: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ValidationQueries:
    """The eval-split users the blend is chosen on, with their train histories and items (catalog rows)."""

    histories: pd.DataFrame  # stored_histories format, one row per user
    rows: list[np.ndarray]  # the history's catalog rows (recflow.models.hybrid.history_rows)
    relevant: list[np.ndarray]  # eval items (train items excluded)
    exclude: list[np.ndarray]  # train items


def _write(out_dir: Path, info: dict[str, Any], matrix: np.ndarray | None) -> None:
    out_dir = Path(out_dir)
    if matrix is not None:
        with open(out_dir / bundle_layout.ITEM_ITEM_FILE, "wb") as fh:
            np.save(fh, np.ascontiguousarray(matrix, np.float32), allow_pickle=False)
    (out_dir / bundle_layout.HYBRID_FILE).write_text(json.dumps(info, indent=2), encoding="utf-8")


def skip_hybrid(out_dir: Path, reason: str, note: bool = True) -> HybridResult:
    """Write a ``hybrid.json`` that turns the blend off, saying why (and a training note when ``note``)."""
    info = {"skipped": reason, "weight": 0.0, "item_item_file": None}
    _write(out_dir, info, None)
    return HybridResult(info, {}, [f"hybrid retrieval off: {reason}"] if note else [])


def validation_queries(examples_dir: Path, train: pd.DataFrame, held_out: pd.DataFrame, item_ids: Sequence[str],
                       max_len: int, config: HybridConfig) -> ValidationQueries:
    """The eval users with a relevant item and a train history on catalog items (see the module docstring)."""
    from recflow.evaluation.metrics import ground_truth, interacted_items
    from recflow.training.sequence_retrieval import load_events, stored_histories

    index = {str(i): n for n, i in enumerate(item_ids)}
    exclude = interacted_items(train)
    truth = ground_truth(held_out, exclude)
    data = load_events(examples_dir, ("train",), index, -1, {})
    histories = stored_histories(data, max_len)
    rows = [history_rows(ids, index, max_len) for ids in histories["item_ids"]]
    keep = [n for n, (user, r) in enumerate(zip(histories["user_id"], rows, strict=True))
            if len(r) and any(i in index for i in truth.get(str(user), ()))]
    if config.max_users is not None and len(keep) > config.max_users:
        keep = sorted(np.random.default_rng(config.seed).choice(keep, config.max_users, replace=False).tolist())
    histories = histories.iloc[keep].reset_index(drop=True)
    users = histories["user_id"].astype(str).tolist()

    def positions(items: Any) -> np.ndarray:
        return np.array(sorted(index[i] for i in items if i in index), np.int64)

    return ValidationQueries(histories, [rows[n] for n in keep], [positions(truth[u]) for u in users],
                             [positions(exclude.get(u, ())) for u in users])


def ease_item_item(train: pd.DataFrame, item_ids: Sequence[str], l2: float,
                   event_weights: Mapping[str, float]) -> np.ndarray:
    """EASE's item-item weights fitted on ``train`` (:class:`recflow.baselines.EASERecommender`), as a float32
    [len(item_ids), len(item_ids)] matrix in ``item_ids`` order: NaN in the columns of items EASE never saw
    (they score lowest), 0 in their rows (they add nothing to a history's scores)."""
    from recflow.baselines import EASERecommender

    ease = EASERecommender(l2=l2, event_weights=dict(event_weights)).fit(train)
    assert ease.weights is not None
    pos = pd.Index([str(i) for i in ease.item_ids]).get_indexer([str(i) for i in item_ids])
    known, unknown = np.flatnonzero(pos >= 0), np.flatnonzero(pos < 0)
    out = np.full((len(item_ids), len(item_ids)), np.nan, np.float32)
    out[np.ix_(known, known)] = ease.weights[np.ix_(pos[known], pos[known])]
    out[np.ix_(unknown, known)] = 0.0
    return out


def _ndcg(sequence: np.ndarray, item_item: np.ndarray, queries: ValidationQueries, weight: float, k: int) -> float:
    return choose_blend_weight(sequence, item_item, queries.relevant, queries.exclude, k, grid=(weight,))[1][weight]


def choose_l2(train: pd.DataFrame, item_ids: Sequence[str], queries: ValidationQueries, sequence: np.ndarray,
              config: HybridConfig, event_weights: Mapping[str, float]
              ) -> tuple[float, np.ndarray, np.ndarray, dict[str, float]]:
    """EASE's l2 from ``config.l2_grid`` by the validation NDCG of EASE alone (ties: the first): the l2, its
    matrix, its scores of the validation histories and every candidate's NDCG."""
    best: tuple[float, np.ndarray, np.ndarray] | None = None
    candidates: dict[str, float] = {}
    for l2 in config.l2_grid:
        matrix = ease_item_item(train, item_ids, l2, event_weights)
        scores = item_item_scores(matrix, queries.rows, len(item_ids))
        candidates[str(l2)] = _ndcg(sequence, scores, queries, 1.0, config.k)
        if best is None or candidates[str(l2)] > candidates[str(best[0])]:
            best = (l2, matrix, scores)
    assert best is not None
    return best[0], best[1], best[2], candidates


def fit_hybrid(examples_dir: Path, item_ids: Sequence[str], score_histories: HistoryScorer, max_len: int,
               config: HybridConfig, event_weights: Mapping[str, float], out_dir: Path,
               index_kind: str = "brute_force") -> HybridResult:
    """Choose EASE's l2 and the blend weight on the eval split and write ``hybrid.json`` (+ ``item_item.npy``
    when the weight is above 0) into ``out_dir``; see the module docstring. ``item_ids``: the catalog in the
    order of ``item_embeddings.parquet``; ``score_histories``: the sequence model (:data:`HistoryScorer`)."""
    from recflow.evaluation.evaluator import load_examples

    if not config.enabled:
        return skip_hybrid(out_dir, "trainer.hybrid.enabled is false", note=False)
    if index_kind != "brute_force":
        return skip_hybrid(out_dir, f"trainer.index.kind is {index_kind}: an approximate index serves a top-M of "
                           "the catalog, the blend needs every item's score (and a dense item x item matrix)")
    n = len(item_ids)
    if config.max_items is not None and n > config.max_items:
        return skip_hybrid(out_dir, f"{n} items > trainer.hybrid.max_items {config.max_items} (EASE's dense "
                           f"item x item matrix would take {4 * n * n / 1e9:.1f} GB)")
    started = time.perf_counter()
    train, held_out, _ = load_examples(Path(examples_dir), "eval")
    queries = validation_queries(Path(examples_dir), train, held_out, item_ids, max_len, config)
    if not queries.rows:
        return skip_hybrid(out_dir, "no eval-split user has both a train history and a relevant eval item to "
                           "choose the blend weight on")
    sequence = np.asarray(score_histories(queries.histories), np.float64)
    l2, matrix, scores, l2_candidates = choose_l2(train, item_ids, queries, sequence, config, event_weights)
    weight, by_weight = choose_blend_weight(sequence, scores, queries.relevant, queries.exclude, config.k,
                                            config.weight_grid)
    metric = f"ndcg@{config.k}"
    info: dict[str, Any] = {
        "skipped": None, "weight": weight, "l2": l2, "history_max_len": int(max_len), "items": n,
        "metric": metric, "validation_users": len(queries.rows),
        "validation": {"sequence": _ndcg(sequence, scores, queries, 0.0, config.k),
                       "item_item": l2_candidates[str(l2)], "blend": by_weight[weight]},
        "l2_candidates": l2_candidates, "weight_candidates": {str(w): v for w, v in by_weight.items()},
        "item_item_file": bundle_layout.ITEM_ITEM_FILE if weight > 0 else None,
        "seconds": time.perf_counter() - started}
    _write(out_dir, info, matrix if weight > 0 else None)
    metrics = {"hybrid_weight": weight, "hybrid_l2": l2, f"hybrid_eval_{metric}": by_weight[weight],
               f"hybrid_eval_sequence_{metric}": info["validation"]["sequence"],
               f"hybrid_eval_item_item_{metric}": l2_candidates[str(l2)]}
    return HybridResult(info, metrics, [])
