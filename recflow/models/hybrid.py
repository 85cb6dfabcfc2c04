"""Hybrid retrieval scores: the sequence model's short-term intent blended with a long-term item-item model.

The sequence model (:mod:`recflow.models.sequence`) reads the order and recency of a user's last events; an
item-item model such as EASE (:class:`recflow.baselines.EASERecommender`, Steck 2019) reads the whole history as a
set. On MovieLens-100K's temporal split the two are complementary: each alone is below or near ALS, their blend
is well above (``benchmarks/results/quality.json``, ``movielens_temporal``). Scores live on different scales, so
each row is standardised (z-score over the items with a finite score) before the convex blend
``(1 - w) * z(sequence) + w * z(item_item)``; ``w`` is chosen on a validation split by NDCG@k over a fixed grid
(:func:`choose_blend_weight`), ``w = 0`` being the sequence model alone and ``w = 1`` the item-item model alone.

In a model bundle (``trainer.hybrid``, :mod:`recflow.training.hybrid`) the item-item model is EASE's weight matrix
``model/item_item.npy`` ([items, items], rows and columns in the order of ``item_embeddings.parquet``; the
columns of items EASE never saw in train are NaN, so they score lowest) and the blend's settings are
``model/hybrid.json``. A history's item-item scores are the sum of the matrix rows of the distinct items among
its last ``history_max_len`` catalog events (:func:`history_rows`, :func:`item_item_scores`): the window the
sequence encoder reads. Every reader -- the evaluation loader (:class:`recflow.models.loading.TFRSRecommender`)
and serving's request path (:mod:`serving.slates`) -- scores a history with :func:`hybrid_scores` through
:class:`HybridBlend`, which :func:`load_hybrid` reads and checks.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from recflow import bundle_layout
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


#: Share of the sequence model's standardised scores added to every blend: far below any real score difference,
#: it only orders items whose blend ties (at ``w = 1``, items the item-item model scores alike).
TIE_BREAK = 1e-9


def blend_scores(sequence: np.ndarray, item_item: np.ndarray, weight: float) -> np.ndarray:
    """``(1 - weight) * z(sequence) + weight * z(item_item)`` row by row (both [users, items], same item order),
    ties broken by the sequence model (:data:`TIE_BREAK`). A row whose item-item scores carry no preference
    (none finite, or all equal: a history the item-item model knows nothing of) is ``z(sequence)``, whatever the
    weight: at ``w = 1`` it would otherwise be constant and rank items by their position in the catalog."""
    if not 0.0 <= weight <= 1.0:
        raise DataError(f"blend weight must be in [0, 1], got {weight}")
    if sequence.shape != item_item.shape:
        raise DataError(f"blend: score matrices differ in shape ({sequence.shape} vs {item_item.shape})")
    zs, zi = zscore_rows(sequence), zscore_rows(item_item)
    blend = (1.0 - weight) * zs + weight * zi + TIE_BREAK * zs
    no_preference = ~np.any(zi != 0.0, axis=1)
    blend[no_preference] = zs[no_preference]
    return blend


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
    scores = {float(w): float(ndcg_at_k(blend_scores(sequence, item_item, float(w)), list(relevant),
                                        list(exclude) if exclude is not None else None, k)) for w in grid}
    best = max(sorted(scores), key=lambda w: (scores[w], -w))
    return best, scores


def history_rows(item_ids: Sequence[str], item_index: Mapping[str, int], max_len: int) -> np.ndarray:
    """Rows (``item_index``) of the last ``max_len`` events of a history (oldest first) whose item is in
    ``item_index``; events on other items are dropped first, as the sequence encoder drops them."""
    rows = [item_index[str(i)] for i in item_ids if str(i) in item_index]
    return np.array(rows[-max_len:] if max_len > 0 else [], np.int64)


def item_item_scores(item_item: np.ndarray, histories: Sequence[np.ndarray], n_items: int) -> np.ndarray:
    """[len(histories), n_items] item-item scores: each history's distinct rows of ``item_item`` summed (the
    binarised history times the matrix, as EASE scores a user). Columns beyond the matrix (items added to the
    catalog after training) and rows of an empty history are NaN: the blend ranks them lowest / not at all."""
    n = item_item.shape[0]
    out = np.full((len(histories), n_items), np.nan)
    for r, rows in enumerate(histories):
        rows = np.unique(np.asarray(rows, np.int64))
        rows = rows[(rows >= 0) & (rows < n)]
        if len(rows):
            out[r, :n] = np.asarray(item_item[rows]).sum(axis=0, dtype=np.float64)
    return out


def hybrid_scores(sequence: np.ndarray, item_item: np.ndarray, histories: Sequence[np.ndarray],
                  weight: float) -> np.ndarray:
    """:func:`blend_scores` of the sequence model's scores ``sequence`` [B, items] and the item-item scores of
    the same requests' ``histories`` (:func:`item_item_scores`). A request whose history has no item the matrix
    knows gets ``z(sequence)``: the sequence model's order, whatever the weight."""
    sequence = np.atleast_2d(np.asarray(sequence))
    if len(histories) != sequence.shape[0]:
        raise DataError(f"hybrid: {len(histories)} histories for {sequence.shape[0]} score rows")
    return blend_scores(sequence, item_item_scores(item_item, histories, sequence.shape[1]), weight)


def top_items(scores: np.ndarray, k: int, banned: Sequence[int] = ()) -> np.ndarray:
    """Indices of the ``k`` best finite ``scores``, best first, never one of the ``banned`` indices (``scores``
    is not modified); ties go to the lower index, so every reader of a blend (whose item-item scores tie often:
    items that never co-occur) picks the same items."""
    scores = np.asarray(scores)
    if len(banned):
        scores = scores.copy()
        scores[np.asarray(banned, np.int64)] = -np.inf
    finite = np.isfinite(scores)
    m = min(int(k), int(finite.sum()))
    if m < 1:
        return np.empty(0, np.int64)
    neg = np.where(finite, -scores.astype(np.float64), np.inf)
    kth = np.partition(neg, m - 1)[m - 1]
    candidates = np.flatnonzero(neg <= kth)
    return candidates[np.lexsort((candidates, neg[candidates]))[:m]]


@dataclass(frozen=True)
class HybridBlend:
    """A bundle's blend as its readers apply it: the item-item matrix, the weight and the history window."""

    item_item: np.ndarray  # [items, items]; may be a read-only memory map
    weight: float
    history_max_len: int
    info: dict[str, Any] = field(default_factory=dict)  # hybrid.json

    def history_rows(self, item_ids: Sequence[str], item_index: Mapping[str, int]) -> np.ndarray:
        """:func:`history_rows` with this blend's window."""
        return history_rows(item_ids, item_index, self.history_max_len)

    def scores(self, sequence: np.ndarray, histories: Sequence[np.ndarray]) -> np.ndarray:
        """:func:`hybrid_scores` with this blend's matrix and weight."""
        return hybrid_scores(sequence, self.item_item, histories, self.weight)


def _read_hybrid_json(path: Path) -> dict[str, Any]:
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot be read as JSON: {exc}") from None
    if not isinstance(info, dict):
        raise DataError(f"{path}: expected a JSON object, got {type(info).__name__}")
    return info


def load_hybrid(model_dir: Path, n_items: int) -> HybridBlend | None:
    """The blend of ``model_dir`` (a trainer output or a bundle's ``model/``), or None when it has none
    (no ``hybrid.json``, a skipped blend, or a chosen weight of 0).

    Raises DataError naming the file when ``item_item.npy`` has no ``hybrid.json`` beside it, ``hybrid.json``
    is unreadable or has a bad ``weight``/``history_max_len``, or the matrix is missing, unreadable or not
    [``n_items``, ``n_items``] (the rows of ``item_embeddings.parquet``).
    """
    model_dir = Path(model_dir)
    path, matrix_path = model_dir / bundle_layout.HYBRID_FILE, model_dir / bundle_layout.ITEM_ITEM_FILE
    if not path.is_file():
        if matrix_path.exists():
            raise DataError(f"{path}: missing, but {matrix_path.name} is there (the blend's weight and window "
                            "are in hybrid.json; retrain, or remove the matrix to serve the sequence model alone)")
        return None
    info = _read_hybrid_json(path)
    if info.get("skipped"):
        return None
    weight = info.get("weight")
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0.0 <= float(weight) <= 1.0:
        raise DataError(f"{path}: field 'weight' must be a number in [0, 1], got {weight!r}")
    if float(weight) == 0.0:
        return None
    max_len = info.get("history_max_len")
    if isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < 1:
        raise DataError(f"{path}: field 'history_max_len' must be a positive integer, got {max_len!r}")
    if not matrix_path.is_file():
        raise DataError(f"{matrix_path}: missing (hybrid.json has weight {weight}, which needs the matrix)")
    try:
        matrix = np.load(matrix_path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DataError(f"{matrix_path}: cannot be read as a .npy array: {exc}") from None
    if matrix.shape != (n_items, n_items) or not np.issubdtype(matrix.dtype, np.floating):
        raise DataError(f"{matrix_path}: expected a float [{n_items}, {n_items}] matrix (the rows of "
                        f"{bundle_layout.ITEM_EMBEDDINGS_FILE}), got {matrix.dtype} {matrix.shape}")
    return HybridBlend(matrix, float(weight), int(max_len), info)
