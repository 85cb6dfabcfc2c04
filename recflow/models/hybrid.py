"""Hybrid retrieval scores: the sequence model's short-term intent blended with a long-term item-item model.

The sequence model (:mod:`recflow.models.sequence`) reads the order and recency of a user's last events; an
item-item model such as EASE (:class:`recflow.baselines.EASERecommender`, Steck 2019) reads the whole history as a
set. On MovieLens-100K's temporal split the two are complementary: each alone is below or near ALS, their blend
is well above (``benchmarks/results/quality.json``, ``movielens_temporal``). Scores live on different scales, so
each row is standardised (z-score over the items with a finite score) before the convex blend
``(1 - w) * z(sequence) + w * z(item_item)``; ``w`` is chosen on a validation split by NDCG@k over a fixed grid
(:func:`choose_blend_weight`), ``w = 0`` being the sequence model alone and ``w = 1`` the item-item model alone.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from recflow.errors import DataError

#: The blend weights tried on the validation split (the item-item model's share).
BLEND_GRID: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0)


def zscore_rows(scores: np.ndarray) -> np.ndarray:
    """Each row standardised over its finite entries (mean 0, std 1; a constant row becomes 0); entries that
    are not finite (items a model cannot score) get the row's lowest standardised value."""
    s = np.array(scores, dtype=np.float64, copy=True)
    if s.ndim != 2:
        raise DataError(f"scores: expected a [users, items] matrix, got shape {s.shape}")
    finite = np.isfinite(s)
    count = np.maximum(finite.sum(axis=1, keepdims=True), 1)
    filled = np.where(finite, s, 0.0)
    mean = filled.sum(axis=1, keepdims=True) / count
    var = (np.where(finite, s - mean, 0.0) ** 2).sum(axis=1, keepdims=True) / count
    z = np.where(finite, (s - mean) / np.where(var > 0, np.sqrt(var), 1.0), np.nan)
    low = np.nanmin(np.where(finite, z, np.inf), axis=1, keepdims=True)
    low = np.where(np.isfinite(low), low, 0.0)
    return np.where(finite, z, low)


def blend_scores(sequence: np.ndarray, item_item: np.ndarray, weight: float) -> np.ndarray:
    """``(1 - weight) * z(sequence) + weight * z(item_item)`` row by row (both [users, items], same item order)."""
    if not 0.0 <= weight <= 1.0:
        raise DataError(f"blend weight must be in [0, 1], got {weight}")
    if sequence.shape != item_item.shape:
        raise DataError(f"blend: score matrices differ in shape ({sequence.shape} vs {item_item.shape})")
    return (1.0 - weight) * zscore_rows(sequence) + weight * zscore_rows(item_item)


def choose_blend_weight(
    sequence: np.ndarray,
    item_item: np.ndarray,
    relevant: Sequence[np.ndarray],
    exclude: Sequence[np.ndarray] | None,
    k: int = 10,
    grid: Sequence[float] = BLEND_GRID,
) -> tuple[float, dict[float, float]]:
    """The weight of ``grid`` with the best mean NDCG@``k`` on validation queries (ties: the smaller weight),
    and every weight's score."""
    from recflow.training.id_sequence import ndcg_at_k

    if not grid:
        raise DataError("blend grid is empty")
    zs, zi = zscore_rows(sequence), zscore_rows(item_item)
    scores = {float(w): float(ndcg_at_k((1.0 - w) * zs + w * zi, list(relevant),
                                        list(exclude) if exclude is not None else None, k)) for w in grid}
    best = max(sorted(scores), key=lambda w: (scores[w], -w))
    return best, scores
