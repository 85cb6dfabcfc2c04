"""Baseline recommenders that every candidate model must be compared with, in the same run on the same split.

* :class:`PopularityRecommender` -- most positive events in train (optionally with a recency half-life).
* :class:`ALSRecommender` -- implicit-feedback matrix factorisation (``implicit``'s CPU
  AlternatingLeastSquares).
* :class:`ItemKNNRecommender` -- item-item cosine neighbours on the interaction matrix (``implicit``'s
  CosineRecommender builds the neighbour graph).
* :class:`BPRRecommender` -- Bayesian Personalized Ranking matrix factorisation (``implicit``'s CPU
  BayesianPersonalizedRanking, pairwise SGD on (user, positive, sampled negative) triples).
* :class:`EASERecommender` -- EASE (Steck 2019): a closed-form item-item linear model with a zero diagonal,
  ``B = I - P / diag(P)``, ``P = (X'X + lambda I)^-1``.
* :class:`ContentBasedRecommender` -- TF-IDF of item category/brand/attributes/price bucket; a user's profile
  is the weighted mean of the items they interacted with, ranked by cosine similarity.

All implement :class:`recflow.recommender.Recommender` plus ``fit(train_events, items)``. Users unknown at fit
time (cold start) and lists the model cannot fill get the most popular items; ``exclude`` is always honoured.
Ties are broken by popularity, then item id, so results are deterministic for a given seed.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Self

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recflow.errors import ConfigError, DataError
from recflow.schema import POSITIVE_EVENT_TYPES

#: Confidence weight of each event type in the interaction matrix (impressions and removals carry none).
DEFAULT_EVENT_WEIGHTS: dict[str, float] = {"view": 1.0, "click": 2.0, "add_to_cart": 4.0, "purchase": 8.0}
_BATCH_USERS = 1024
#: Cap on users x items scores held at once (64 MB of float64), so big catalogs score in smaller batches.
_MAX_BATCH_CELLS = 8_000_000
_SECONDS_PER_DAY = 86400.0


def _require_columns(events: pd.DataFrame, columns: Sequence[str], what: str = "train events") -> None:
    missing = [c for c in columns if c not in events.columns]
    if missing:
        raise DataError(f"{what}: missing required column(s) {missing} (see recflow/schema.py)")


def string_codes(values: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(codes, ids)``: ``ids`` the sorted distinct ``str`` values of ``values`` (an object column: user or
    item ids, event types; or a categorical one), ``codes`` (int64, one per row) the position of each row's
    ``str`` value in ``ids``.

    The same grouping and order as converting every row with ``astype(str)`` and sorting its set, without
    making a string per row: ``pd.factorize`` on the column (one hash table of its distinct values), then only
    the distinct values are converted and sorted (two values with the same ``str``, e.g. ``1`` and ``"1"``, share
    one code). Nulls are converted as ``astype(str)`` converts them (``"nan"``, ``"None"``). A categorical
    column (the Evaluator's compact train split) is coded from its own codes: only its categories are
    converted, and no object array of its rows is made (a null there is ``"None"``, as Parquet reads it)."""
    if isinstance(getattr(values, "dtype", None), pd.CategoricalDtype):
        return _categorical_string_codes(pd.Categorical(values))
    raw = np.asarray(values, dtype=object) if not isinstance(values, np.ndarray) else values
    codes, uniques = pd.factorize(raw)
    texts = [str(u) for u in uniques]
    nulls = codes < 0
    if nulls.any():  # None and NaN are different strings; null rows are converted one by one
        extra, extra_codes = np.unique(np.array([str(v) for v in raw[nulls]], dtype=object), return_inverse=True)
        codes = codes.copy()
        codes[nulls] = len(texts) + extra_codes
        texts += extra.tolist()
    text = np.array(texts, dtype=object)
    if len(text) == 0:
        return codes.astype(np.int64), text
    ids, inverse = np.unique(text, return_inverse=True)
    return inverse.astype(np.int64)[codes], ids


def _used_category_texts(values: pd.Categorical) -> tuple[np.ndarray, np.ndarray]:
    """``(slots, texts)``: the categories the rows of ``values`` use, each once, as slots (0: the nulls, code -1;
    ``c + 1``: category ``c``) and as their ``str`` (a null as ``"None"``, as Parquet reads it)."""
    used = np.bincount(values.codes + 1, minlength=len(values.categories) + 1)
    slots = np.flatnonzero(used)
    texts = np.array(["None" if slot == 0 else str(values.categories[slot - 1]) for slot in slots], dtype=object)
    return slots, texts


def _categorical_string_codes(values: pd.Categorical) -> tuple[np.ndarray, np.ndarray]:
    """:func:`string_codes` of a categorical: the categories the rows use (:func:`_used_category_texts`), sorted,
    and each row's position among them, looked up from the categorical's own codes (a null's code -1 reads the
    table's last slot)."""
    codes = values.codes
    n_categories = len(values.categories)
    slots, texts = _used_category_texts(values)
    if not len(texts):
        return codes.astype(np.int64), texts
    ids, inverse = np.unique(texts, return_inverse=True)  # equal strs (e.g. a "None" category) share one id
    table = np.zeros(n_categories + 1, dtype=np.int64)  # category c at c, the nulls (-1) at the end
    table[np.where(slots == 0, n_categories, slots - 1)] = inverse
    return table[codes], ids


def string_ids(values: Any) -> np.ndarray:
    """``string_codes(values)[1]``: the sorted distinct ``str`` values; of a categorical, from the categories
    its rows use, without coding its rows."""
    if not isinstance(getattr(values, "dtype", None), pd.CategoricalDtype):
        return string_codes(values)[1]
    texts = _used_category_texts(pd.Categorical(values))[1]
    return np.unique(texts) if len(texts) else np.empty(0, dtype=object)


def weighted_rows(event_types: pd.Series, weights: Mapping[str, float]) -> tuple[np.ndarray, np.ndarray]:
    """``(rows, values)``: the positions of the rows whose event type has a positive weight in ``weights`` and
    those weights, what ``event_types.map(weights).fillna(0.0)`` gives for an object column (a type ``weights``
    lacks, or a null, weighs 0.0). A categorical column is weighed once per category and read through its
    codes: no float per row of the log (most of a shop's log are impressions, which weigh nothing), and no
    categorical ``map`` (whose result ``fillna(0.0)`` can reject)."""
    if isinstance(event_types.dtype, pd.CategoricalDtype):
        per_category = pd.Series(event_types.cat.categories).map(weights).fillna(0.0).to_numpy(np.float64)
        table = np.append(per_category, 0.0)  # a null's code -1 reads the last slot
        codes = event_types.cat.codes.to_numpy()
        rows = np.flatnonzero((table > 0)[codes])
        return rows, table[codes[rows]]
    value = event_types.map(weights).fillna(0.0).to_numpy(np.float64)
    rows = np.flatnonzero(value > 0)
    return rows, value[rows]


def interaction_matrix(
    events: pd.DataFrame,
    weights: Mapping[str, float] | None = None,
    items: Sequence[str] | None = None,
) -> tuple[sp.csr_matrix, np.ndarray, np.ndarray]:
    """A users x items CSR matrix of summed event weights, with its user ids and item ids (both sorted).

    ``items`` fixes the item axis (events on other items are dropped); by default it is every item with a
    weighted event. Built from integer codes of the id columns' weighted rows (:func:`string_codes`): no
    per-row string or copy of the event columns is made, so the memory is a few integer arrays of the number
    of weighted events.
    """
    _require_columns(events, ("user_id", "item_id", "event_type"))
    w = dict(DEFAULT_EVENT_WEIGHTS if weights is None else weights)
    weighted, value = weighted_rows(events["event_type"], w)  # only these rows are coded (not impressions)
    item_codes, item_uniques = string_codes(events["item_id"].iloc[weighted])
    if items is None:  # every item coded has a weighted event
        item_ids, cols = item_uniques, item_codes
    else:
        item_ids = np.array(sorted(set(map(str, items))), dtype=object)
        item_map = pd.Index(item_ids).get_indexer(item_uniques) if len(item_uniques) else np.empty(0, np.int64)
        cols = item_map[item_codes] if len(item_codes) else np.empty(0, dtype=np.int64)
    del item_codes
    keep = cols >= 0
    user_codes, user_uniques = string_codes(events["user_id"].iloc[weighted])
    del weighted
    kept_users = user_codes[keep]
    del user_codes
    present_users = np.zeros(len(user_uniques), dtype=bool)
    present_users[kept_users] = True
    user_ids = user_uniques[present_users]
    rows = (np.cumsum(present_users) - 1)[kept_users]
    matrix = sp.csr_matrix((value[keep], (rows, cols[keep])), shape=(len(user_ids), len(item_ids)))
    matrix.sum_duplicates()
    return matrix, user_ids, item_ids


def top_k_indices(scores: np.ndarray, k: int, tiebreak: np.ndarray) -> np.ndarray:
    """Indices of the ``k`` highest finite ``scores``; ties go to the lower ``tiebreak`` rank (deterministic).

    ``-inf`` (excluded) and NaN entries are never returned, so fewer than ``k`` may come back.
    """
    neg = np.where(np.isnan(scores), np.inf, -scores)
    available = int(np.count_nonzero(np.isfinite(neg)))
    kk = min(k, available)
    if kk <= 0:
        return np.empty(0, dtype=np.int64)
    kth = np.partition(neg, kk - 1)[kk - 1]
    candidates = np.flatnonzero(neg <= kth)
    order = np.lexsort((tiebreak[candidates], neg[candidates]))
    return candidates[order[:kk]]


class PopularityRecommender:
    """Recommends the items with the most positive events in train (clicks, add-to-carts, purchases).

    With ``half_life_days`` each event counts ``0.5 ** (age_days / half_life_days)``, age measured back from
    the last training event. When train has no positive events at all, views are counted instead. Catalog
    items without any event rank last (by item id), so lists are filled as long as the catalog allows.
    """

    def __init__(self, half_life_days: float | None = None, name: str = "popularity") -> None:
        if half_life_days is not None and half_life_days <= 0:
            raise ConfigError(f"popularity half_life_days must be positive, got {half_life_days}")
        self.name = name
        self.half_life_days = half_life_days
        self.item_ids: np.ndarray | None = None
        self.scores: np.ndarray | None = None

    def fit(self, train_events: pd.DataFrame, items: pd.DataFrame | None = None) -> Self:
        """Count (decayed) positive events per item."""
        _require_columns(train_events, ("item_id", "event_type"))
        ev = train_events
        chosen = np.flatnonzero(ev["event_type"].isin(POSITIVE_EVENT_TYPES).to_numpy())
        if not len(chosen):
            chosen = np.flatnonzero((ev["event_type"] == "view").to_numpy())
        known = string_ids(ev["item_id"])  # every item of train, scored 0 without a chosen event
        chosen_codes, chosen_ids = string_codes(ev["item_id"].iloc[chosen])  # integer codes of the chosen rows
        codes = pd.Index(known).get_indexer(chosen_ids)[chosen_codes] if len(chosen_ids) else chosen_codes
        del chosen_codes
        if self.half_life_days is None or not len(chosen):
            sums = np.bincount(codes, minlength=len(known)).astype(np.float64)
        else:
            _require_columns(train_events, ("timestamp",))
            ts = pd.to_datetime(ev["timestamp"].iloc[chosen], utc=True)
            age_days = (ts.max() - ts).dt.total_seconds() / _SECONDS_PER_DAY
            weight = 0.5 ** (age_days / self.half_life_days)
            sums = pd.Series(weight.to_numpy()).groupby(codes).sum().reindex(
                np.arange(len(known)), fill_value=0.0).to_numpy(dtype=np.float64)
        del codes
        if items is not None and "item_id" in items.columns:
            item_ids = np.array(sorted(set(known) | set(items["item_id"].astype(str))), dtype=object)
            scores = pd.Series(sums, index=known).reindex(item_ids, fill_value=0.0).to_numpy(dtype=np.float64)
        else:
            item_ids, scores = known, sums
        order = np.lexsort((np.arange(len(item_ids)), -scores))  # score desc, then item id asc
        self.item_ids, self.scores = item_ids[order], scores[order]
        return self

    def ranking(self) -> np.ndarray:
        """All known item ids, most popular first."""
        if self.item_ids is None:
            raise RuntimeError(f"{self.name}: call fit() before recommend()")
        return self.item_ids

    def rank_of(self, item_ids: Sequence[str]) -> np.ndarray:
        """Popularity rank (0 = most popular) of each item; unknown items rank after all known ones."""
        ranking = self.ranking()
        position = pd.Series(np.arange(len(ranking)), index=pd.Index(ranking))
        return position.reindex(list(item_ids)).fillna(len(ranking)).to_numpy(dtype=np.int64)

    def fill(self, items: list[str], k: int, exclude: set[str] | None = None) -> list[str]:
        """Append the most popular items not in ``items`` or ``exclude`` until ``items`` has ``k`` entries."""
        if len(items) >= k:
            return items[:k]
        taken = set(items) | (exclude or set())
        out = list(items)
        for item in self.ranking():
            if item not in taken:
                out.append(item)
                if len(out) == k:
                    break
        return out

    def recommend(
        self, user_ids: Sequence[str], k: int, exclude: Mapping[str, set[str]] | None = None
    ) -> list[list[str]]:
        """The ``k`` most popular items for every user, minus that user's ``exclude`` items."""
        self.ranking()
        return [self.fill([], k, (exclude or {}).get(str(u))) for u in user_ids]

    def recommend_from_history(
        self,
        items: Sequence[str],
        k: int,
        exclude: set[str] | None = None,
        event_types: Sequence[str] | None = None,
        timestamps: Sequence[Any] | None = None,
    ) -> list[str]:
        """The ``k`` most popular items minus ``exclude``: a history changes nothing (same signature as the
        history-aware baselines, so serving can call any of them alike)."""
        return self.fill([], k, exclude)


class _ScoringRecommender:
    """Shared recommend(): score known users against the model's items in batches, mask exclusions, take the
    top k, and fall back to popularity for cold users and short lists."""

    name: str

    def __init__(self) -> None:
        self.popularity: PopularityRecommender | None = None
        self.item_ids: np.ndarray = np.empty(0, dtype=object)
        self._user_pos: dict[str, int] = {}
        self._item_pos: dict[str, int] = {}
        self._tiebreak: np.ndarray = np.empty(0, dtype=np.int64)

    def _set_index(
        self, user_ids: np.ndarray, item_ids: np.ndarray, popularity: PopularityRecommender
    ) -> None:
        self.popularity = popularity
        self.item_ids = item_ids
        self._user_pos = {str(u): i for i, u in enumerate(user_ids)}
        self._item_pos = {str(it): i for i, it in enumerate(item_ids)}
        self._tiebreak = popularity.rank_of(list(item_ids))

    def _scores(self, user_rows: np.ndarray) -> np.ndarray:
        """Dense (len(user_rows) x n_items) scores; higher is better."""
        raise NotImplementedError

    def _row_scores(self, row: sp.csr_matrix) -> np.ndarray:
        """Scores (n_items,) of a user whose interaction-matrix row is ``row`` (1 x n_items, the same event
        weights as training); only models whose scores are a function of that row implement it."""
        raise NotImplementedError(f"{self.name}: cannot score a history it was not trained on")

    def recommend_from_history(
        self,
        items: Sequence[str],
        k: int,
        exclude: set[str] | None = None,
        event_types: Sequence[str] | None = None,
        timestamps: Sequence[Any] | None = None,
    ) -> list[str]:
        """Top-``k`` items for someone whose history is ``items`` (every event a ``view`` unless
        ``event_types`` are given), without refitting: the history becomes the user's row of the interaction
        matrix (its event weights; unknown items ignored), scored as a training user's row would be, with the
        same tie-break, exclusions and popularity padding as :meth:`recommend`. ``timestamps`` are accepted
        for a common signature (a row has no order)."""
        if self.popularity is None:
            raise RuntimeError(f"{self.name}: call fit() before recommend()")
        frame = _history_frame(items, event_types, None)
        weights = dict(DEFAULT_EVENT_WEIGHTS if getattr(self, "event_weights", None) is None
                       else self.event_weights)  # type: ignore[attr-defined]
        value = frame["event_type"].map(weights).fillna(0.0).to_numpy(np.float64)
        cols = np.array([self._item_pos.get(i, -1) for i in frame["item_id"]], dtype=np.int64)
        keep = (cols >= 0) & (value > 0)
        banned = exclude or set()
        if not keep.any():
            return self.popularity.fill([], k, banned)
        row = sp.csr_matrix((value[keep], (np.zeros(int(keep.sum()), np.int64), cols[keep])),
                            shape=(1, len(self.item_ids)))
        row.sum_duplicates()
        scores = np.asarray(self._row_scores(row), dtype=np.float64).ravel().copy()
        return self.popularity.fill(self._top_items(scores, k, banned), k, banned)

    def _top_items(self, scores: np.ndarray, k: int, exclude: Iterable[str]) -> list[str]:
        """The ids of the ``k`` best items of one user's ``scores`` (modified in place: ``exclude`` masked),
        ties broken by popularity."""
        banned = [self._item_pos[x] for x in exclude if x in self._item_pos]
        if banned:
            scores[banned] = -np.inf
        return [str(self.item_ids[t]) for t in top_k_indices(scores, k, self._tiebreak)]

    def recommend(
        self, user_ids: Sequence[str], k: int, exclude: Mapping[str, set[str]] | None = None
    ) -> list[list[str]]:
        """Top-``k`` items per user (see the module docstring for cold users, ties and fallbacks)."""
        if self.popularity is None:
            raise RuntimeError(f"{self.name}: call fit() before recommend()")
        exclude = exclude or {}
        users = [str(u) for u in user_ids]
        out: list[list[str]] = [[] for _ in users]
        known = [(i, self._user_pos[u]) for i, u in enumerate(users) if u in self._user_pos]
        batch_size = max(1, min(_BATCH_USERS, _MAX_BATCH_CELLS // max(len(self.item_ids), 1)))
        for start in range(0, len(known), batch_size):
            batch = known[start : start + batch_size]
            scores = np.asarray(
                self._scores(np.array([row for _, row in batch], dtype=np.int64)), dtype=np.float64
            )
            for j, (i, _) in enumerate(batch):
                out[i] = self._top_items(scores[j], k, exclude.get(users[i], ()))
        return [self.popularity.fill(items, k, exclude.get(u)) for items, u in zip(out, users, strict=True)]


class _MatrixFactorization(_ScoringRecommender):
    """An ``implicit`` matrix-factorisation model: one shared fit, the model itself from :meth:`_model`."""

    def __init__(self, name: str, factors: int, iterations: int, regularization: float, seed: int,
                 event_weights: Mapping[str, float] | None) -> None:
        super().__init__()
        self.name = name
        self.factors = factors
        self.iterations = iterations
        self.regularization = regularization
        self.seed = seed
        self.event_weights = event_weights
        self.user_factors: np.ndarray | None = None
        self.item_factors: np.ndarray | None = None

    def _model(self) -> Any:
        raise NotImplementedError

    def _training_matrix(self, matrix: sp.csr_matrix) -> sp.csr_matrix:
        return matrix

    def fit(self, train_events: pd.DataFrame, items: pd.DataFrame | None = None) -> Self:
        """Learn user and item factors from the user x item matrix of ``train_events``."""
        from threadpoolctl import threadpool_limits

        popularity = PopularityRecommender().fit(train_events, items)
        matrix, user_ids, item_ids = interaction_matrix(train_events, self.event_weights)
        self._set_index(user_ids, item_ids, popularity)
        if matrix.nnz == 0:
            self.user_factors = np.zeros((0, self.factors))
            self.item_factors = np.zeros((0, self.factors))
            return self
        # implicit warns (and loses speed and determinism) when BLAS runs multi-threaded in its own threads.
        with threadpool_limits(limits=1, user_api="blas"):
            model = self._model()
            model.fit(self._training_matrix(matrix).astype(np.float32), show_progress=False)
        self.user_factors = np.asarray(model.user_factors, dtype=np.float64)
        self.item_factors = np.asarray(model.item_factors, dtype=np.float64)
        return self

    def _scores(self, user_rows: np.ndarray) -> np.ndarray:
        assert self.user_factors is not None and self.item_factors is not None
        return self.user_factors[user_rows] @ self.item_factors.T


class ALSRecommender(_MatrixFactorization):
    """Implicit-feedback ALS (Hu, Koren & Volinsky 2008) via ``implicit.cpu.als.AlternatingLeastSquares``.

    The confidence matrix is the summed event weights (:data:`DEFAULT_EVENT_WEIGHTS`) scaled by ``alpha``. One
    thread and a fixed ``random_state`` make the factors reproducible.
    """

    def __init__(
        self,
        factors: int = 32,
        iterations: int = 15,
        regularization: float = 30.0,
        alpha: float = 1.0,
        seed: int = 42,
        event_weights: Mapping[str, float] | None = None,
        name: str = "als",
    ) -> None:
        super().__init__(name, factors, iterations, regularization, seed, event_weights)
        self.alpha = alpha

    def _model(self) -> Any:
        from implicit.cpu.als import AlternatingLeastSquares

        return AlternatingLeastSquares(factors=self.factors, regularization=self.regularization, alpha=self.alpha,
                                       iterations=self.iterations, num_threads=1, random_state=self.seed)


class ItemKNNRecommender(_ScoringRecommender):
    """Item-based collaborative filtering: a user's score for item j is the sum over their interacted items i
    of weight(u, i) * cosine(i, j), keeping each item's ``neighbors`` most similar items (``implicit``'s
    CosineRecommender builds that neighbour graph)."""

    def __init__(
        self,
        neighbors: int = 50,
        event_weights: Mapping[str, float] | None = None,
        name: str = "item_knn",
    ) -> None:
        super().__init__()
        self.name = name
        self.neighbors = neighbors
        self.event_weights = event_weights
        self.similarity: sp.csr_matrix | None = None
        self._matrix: sp.csr_matrix | None = None

    def fit(self, train_events: pd.DataFrame, items: pd.DataFrame | None = None) -> Self:
        """Build the item-item cosine neighbour graph of ``train_events``."""
        from implicit.nearest_neighbours import CosineRecommender

        popularity = PopularityRecommender().fit(train_events, items)
        matrix, user_ids, item_ids = interaction_matrix(train_events, self.event_weights)
        self._set_index(user_ids, item_ids, popularity)
        self._matrix = matrix
        if matrix.nnz == 0:
            self.similarity = sp.csr_matrix((len(item_ids), len(item_ids)))
            return self
        # K + 1: every item is its own nearest neighbour (dropped below with the diagonal)
        knn = CosineRecommender(K=self.neighbors + 1, num_threads=1)
        with warnings.catch_warnings():
            # implicit converts its own normalised matrix to CSR and warns about it (harmless).
            warnings.filterwarnings("ignore", message="Method expects CSR input")
            knn.fit(matrix.astype(np.float32), show_progress=False)
        similarity = sp.csr_matrix(knn.similarity, dtype=np.float64)
        similarity.setdiag(0.0)
        similarity.eliminate_zeros()
        self.similarity = similarity
        return self

    def _scores(self, user_rows: np.ndarray) -> np.ndarray:
        assert self._matrix is not None and self.similarity is not None
        return (self._matrix[user_rows] @ self.similarity).toarray()

    def _row_scores(self, row: sp.csr_matrix) -> np.ndarray:
        assert self.similarity is not None
        return (row @ self.similarity).toarray()[0]


class BPRRecommender(_MatrixFactorization):
    """Bayesian Personalized Ranking (Rendle et al. 2009) via ``implicit.cpu.bpr.BayesianPersonalizedRanking``.

    Trained on the binarised interaction matrix (any weighted event = a positive); one thread and a fixed
    ``random_state`` make it reproducible. implicit adds an item bias as one more factor.
    """

    def __init__(
        self,
        factors: int = 64,
        iterations: int = 100,
        learning_rate: float = 0.05,
        regularization: float = 0.01,
        seed: int = 42,
        event_weights: Mapping[str, float] | None = None,
        name: str = "bpr",
    ) -> None:
        super().__init__(name, factors, iterations, regularization, seed, event_weights)
        self.learning_rate = learning_rate

    def _model(self) -> Any:
        from implicit.cpu.bpr import BayesianPersonalizedRanking

        return BayesianPersonalizedRanking(factors=self.factors, learning_rate=self.learning_rate,
                                           regularization=self.regularization, iterations=self.iterations,
                                           num_threads=1, random_state=self.seed)

    def _training_matrix(self, matrix: sp.csr_matrix) -> sp.csr_matrix:
        binary = matrix.copy()
        binary.data[:] = 1.0
        return binary


#: Baselines whose fit builds dense item-by-item matrices (memory ~ items^2): EASE's Gram matrix and its inverse,
#: 2 x 8 x items^2 bytes (160 GB at 100,000 items). The Evaluator skips them above ``evaluator.max_dense_items``.
#: The other item-item baselines stay sparse: item_knn keeps ``neighbors`` per item (implicit's top-K cosine),
#: coview a sparse co-occurrence matrix pruned to ``coview_neighbors`` per item, content sparse TF-IDF vectors
#: (its scores are dense only per batch of users, bounded by the scorer's batch size).
DENSE_ITEM_ITEM_BASELINES: frozenset[str] = frozenset({"ease"})


def dense_skip_reason(name: str, n_items: int, max_dense_items: int | None) -> str | None:
    """Why baseline ``name`` is skipped on ``n_items`` items (None when it runs): only the dense item-by-item
    baselines, only above ``max_dense_items`` (None = never skipped)."""
    if name not in DENSE_ITEM_ITEM_BASELINES or max_dense_items is None or n_items <= max_dense_items:
        return None
    return (f"{name} skipped: {n_items} items > max_dense_items {max_dense_items} (its dense item-by-item "
            f"matrices would need {2 * 8 * n_items**2 / 1e9:.1f} GB)")


class EASERecommender(_ScoringRecommender):
    """EASE^R (Steck, WWW 2019): ``score(u) = x_u B`` with the closed-form item-item weights
    ``B = I - P diag(1 / diag(P))``, ``P = (X'X + l2 I)^-1`` (so ``diag(B) = 0``: an item never explains itself).

    ``X`` is the binarised interaction matrix. Memory and time grow with the square / cube of the number of
    items with events (fine up to a few tens of thousands).
    """

    def __init__(
        self, l2: float = 200.0, event_weights: Mapping[str, float] | None = None, name: str = "ease"
    ) -> None:
        super().__init__()
        if l2 <= 0:
            raise ConfigError(f"EASE l2 must be positive, got {l2}")
        self.name = name
        self.l2 = l2
        self.event_weights = event_weights
        self.weights: np.ndarray | None = None
        self._matrix: sp.csr_matrix | None = None

    def fit(self, train_events: pd.DataFrame, items: pd.DataFrame | None = None) -> Self:
        """Solve for the item-item weight matrix of ``train_events``."""
        popularity = PopularityRecommender().fit(train_events, items)
        matrix, user_ids, item_ids = interaction_matrix(train_events, self.event_weights)
        self._set_index(user_ids, item_ids, popularity)
        binary = matrix.copy()
        binary.data[:] = 1.0
        self._matrix = sp.csr_matrix(binary)
        gram = (binary.T @ binary).toarray().astype(np.float64)
        gram[np.diag_indices_from(gram)] += self.l2
        inverse = np.linalg.inv(gram)
        weights = -inverse / np.diag(inverse)[None, :]
        weights[np.diag_indices_from(weights)] = 0.0
        self.weights = weights
        return self

    def _scores(self, user_rows: np.ndarray) -> np.ndarray:
        assert self._matrix is not None and self.weights is not None
        return np.asarray(self._matrix[user_rows] @ self.weights)

    def _row_scores(self, row: sp.csr_matrix) -> np.ndarray:
        assert self.weights is not None
        binary = row.copy()
        binary.data[:] = 1.0
        return np.asarray(binary @ self.weights)[0]


def _identity_analyzer(tokens: list[str]) -> list[str]:
    return tokens


def item_feature_tokens(items: pd.DataFrame, price_buckets: int = 5) -> list[list[str]]:
    """Descriptive tokens of each catalog item: ``category=..``, ``brand=..``, each ``key=value`` attribute
    and a price quantile bucket. Missing fields contribute nothing."""
    tokens: list[list[str]] = [[] for _ in range(len(items))]
    for column in ("category", "brand"):
        if column in items.columns:
            for row, value in enumerate(items[column].tolist()):
                if isinstance(value, str) and value.strip():
                    tokens[row].append(f"{column}={value.strip()}")
    if "attributes" in items.columns:
        for row, value in enumerate(items["attributes"].tolist()):
            if isinstance(value, str):
                tokens[row].extend(f"attr:{part.strip()}" for part in value.split(";") if part.strip())
    if "price" in items.columns:
        price = pd.to_numeric(items["price"], errors="coerce")
        if price.notna().sum() >= 2 and price.nunique() >= 2:
            bucket = pd.qcut(
                price.rank(method="first"), q=min(price_buckets, int(price.notna().sum())), labels=False
            )
            for row, b in enumerate(bucket.tolist()):
                if b == b:  # not NaN
                    tokens[row].append(f"price_bucket={int(b)}")
    return tokens


class ContentBasedRecommender(_ScoringRecommender):
    """Content-based filtering on item metadata: TF-IDF of :func:`item_feature_tokens`, user profile = the
    event-weighted mean of the TF-IDF vectors of the items they interacted with, score = cosine similarity.

    Can recommend catalog items nobody interacted with yet. Without a catalog, or when no item has any
    metadata, it is popularity; users whose items carry no metadata get popularity too.
    """

    def __init__(self, event_weights: Mapping[str, float] | None = None, name: str = "content") -> None:
        super().__init__()
        self.name = name
        self.event_weights = event_weights
        self.item_vectors: sp.csr_matrix | None = None
        self._profiles: sp.csr_matrix | None = None

    def fit(self, train_events: pd.DataFrame, items: pd.DataFrame | None = None) -> Self:
        """Vectorise the catalog and build the users' profiles."""
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.preprocessing import normalize

        popularity = PopularityRecommender().fit(train_events, items)
        if items is None or "item_id" not in items.columns or items.empty:
            self._set_index(np.empty(0, dtype=object), np.empty(0, dtype=object), popularity)
            return self
        catalog = items.drop_duplicates("item_id").sort_values("item_id").reset_index(drop=True)
        tokens = item_feature_tokens(catalog)
        item_ids = catalog["item_id"].astype(str).to_numpy(dtype=object)
        if not any(tokens):
            self._set_index(np.empty(0, dtype=object), item_ids, popularity)
            return self
        vectors = TfidfVectorizer(analyzer=_identity_analyzer, lowercase=False).fit_transform(tokens)
        matrix, user_ids, _ = interaction_matrix(train_events, self.event_weights, items=list(item_ids))
        profiles = normalize(matrix @ vectors)  # scaling does not change cosine, so mean == sum here
        has_profile = np.asarray(profiles.getnnz(axis=1) > 0)
        self._profiles = sp.csr_matrix(profiles[has_profile])
        self.item_vectors = sp.csr_matrix(vectors)
        self._set_index(user_ids[has_profile], item_ids, popularity)
        return self

    def _scores(self, user_rows: np.ndarray) -> np.ndarray:
        assert self._profiles is not None and self.item_vectors is not None
        return (self._profiles[user_rows] @ self.item_vectors.T).toarray()


# --------------------------------------------------------------------------- count and co-occurrence baselines

#: Event weights of the count baselines: every interaction counts once (views included); impressions and
#: removals count for nothing.
COUNT_EVENT_WEIGHTS: dict[str, float] = {"view": 1.0, "click": 1.0, "add_to_cart": 1.0, "purchase": 1.0}


def _history_frame(
    items: Sequence[str],
    event_types: Sequence[str] | None,
    timestamps: Sequence[Any] | None,
) -> pd.DataFrame:
    """A request's history as a frame in chronological order (stable: equal times keep the list's order)."""
    n = len(items)
    if event_types is not None and len(event_types) != n:
        raise DataError(f"history: {len(event_types)} event types for {n} items (they must align)")
    if timestamps is not None and len(timestamps) != n:
        raise DataError(f"history: {len(timestamps)} timestamps for {n} items (they must align)")
    frame = pd.DataFrame(
        {
            "item_id": [str(i) for i in items],
            "event_type": list(event_types) if event_types is not None else ["view"] * n,
            "order": np.arange(n, dtype=np.int64),
        }
    )
    if timestamps is not None:
        try:
            # format="mixed": each value parsed on its own (ISO strings with and without fractions, datetimes)
            frame["timestamp"] = pd.to_datetime(pd.Series(list(timestamps), dtype=object), utc=True, format="mixed")
        except (ValueError, TypeError) as exc:
            raise DataError(f"history: timestamps cannot be read as times: {exc}") from None
        frame = frame.sort_values(["timestamp", "order"], kind="mergesort")
    return frame.reset_index(drop=True)


@dataclass
class _WeightedLog:
    """Train's weighted events (those whose event type has a positive weight) in chronological order (by
    timestamp, NaT last, equal times in log order), as integer codes: ``user``/``item``/``kind`` index
    ``user_ids``/``item_ids``/``kinds`` (each sorted, ``str``), ``timestamp`` is int64 nanoseconds (NaT as the
    largest int64, so it sorts last) and ``session`` the code of the row's ``str(session_id)`` (-1: null or no
    column). A few integer arrays of the log's length instead of a frame of Python strings."""

    user: np.ndarray
    item: np.ndarray
    kind: np.ndarray
    timestamp: np.ndarray
    session: np.ndarray
    user_ids: np.ndarray
    item_ids: np.ndarray
    kinds: np.ndarray

    def __len__(self) -> int:
        return len(self.user)


_NAT_LAST = np.iinfo(np.int64).max


def _weighted_log(train_events: pd.DataFrame, weights: Mapping[str, float]) -> _WeightedLog:
    """:class:`_WeightedLog` of ``train_events`` for ``weights``."""
    weighted = weighted_rows(train_events["event_type"], weights)[0]
    stamps = pd.to_datetime(train_events["timestamp"].iloc[weighted], utc=True)
    nat = stamps.isna().to_numpy()
    ts = stamps.dt.as_unit("ns").array.asi8.copy() if len(stamps) else np.empty(0, np.int64)
    del stamps
    ts[nat] = _NAT_LAST
    order = np.argsort(ts, kind="stable")  # chronological; NaT (largest) last, ties in log order
    rows = weighted[order]
    del weighted

    def codes(column: str) -> tuple[np.ndarray, np.ndarray]:
        return string_codes(train_events[column].iloc[rows])  # a categorical stays codes

    user, user_ids = codes("user_id")
    item, item_ids = codes("item_id")
    kind, kinds = codes("event_type")
    session = np.full(len(rows), -1, dtype=np.int64)
    if "session_id" in train_events.columns:
        values = train_events["session_id"].iloc[rows]
        known = values.notna().to_numpy()
        if known.any():
            session[known] = string_codes(values[known])[0]
    return _WeightedLog(user, item, kind, ts[order], session, user_ids, item_ids, kinds)


class _Histories(Mapping[str, tuple[list[str], list[str]]]):
    """Every user's chronological (item ids, event types) of train, stored as integer codes in one array per
    field with each user's slice (the users sorted), and turned into lists only for the user asked for: the
    mapping ``user -> (items, event types)`` without a Python string or list per event."""

    def __init__(self, log: _WeightedLog) -> None:
        by_user = np.argsort(log.user, kind="stable")  # keeps each user's time order
        users = log.user[by_user]
        bounds = np.flatnonzero(users[1:] != users[:-1]) + 1 if len(users) else np.empty(0, np.int64)
        self._starts = np.concatenate([[0], bounds]).astype(np.int64) if len(users) else np.empty(0, np.int64)
        self._ends = (np.concatenate([bounds, [len(users)]]).astype(np.int64) if len(users)
                      else np.empty(0, np.int64))
        self._users = log.user_ids[users[self._starts]] if len(users) else np.empty(0, dtype=object)
        self._items = log.item[by_user].astype(np.int32)
        self._kinds = log.kind[by_user].astype(np.int8 if len(log.kinds) < 128 else np.int32)
        self._item_ids, self._kind_ids = log.item_ids, log.kinds

    def __len__(self) -> int:
        return len(self._users)

    def __iter__(self) -> Iterator[str]:
        return (str(u) for u in self._users)

    def __getitem__(self, user: str) -> tuple[list[str], list[str]]:
        key = str(user)
        pos = int(np.searchsorted(self._users, key)) if len(self._users) else 0
        if pos >= len(self._users) or self._users[pos] != key:
            raise KeyError(user)
        a, b = self._starts[pos], self._ends[pos]
        return self._item_ids[self._items[a:b]].tolist(), self._kind_ids[self._kinds[a:b]].tolist()


class _HistoryRecommender:
    """Shared machinery of the count baselines: each user's training history (chronological, weighted events
    only), a popularity fallback, and ``recommend`` = :meth:`recommend_from_history` on the stored history.

    Only items the model knows (the catalog given to ``fit`` plus every item in train) are recommended; items
    of a request's history that it does not know are ignored.
    """

    name: str

    def __init__(self, event_weights: Mapping[str, float] | None = None) -> None:
        weights = dict(COUNT_EVENT_WEIGHTS if event_weights is None else event_weights)
        bad = {k: v for k, v in weights.items() if not np.isfinite(v) or v < 0}
        if bad:
            raise ConfigError(f"{type(self).__name__}: event weights must be finite and >= 0, got {bad}")
        self.event_weights = weights
        self.popularity: PopularityRecommender | None = None
        self._rank: dict[str, int] = {}
        self._histories: Mapping[str, tuple[list[str], list[str]]] = {}

    def _fit_common(self, train_events: pd.DataFrame, items: pd.DataFrame | None) -> _WeightedLog:
        """Fit the popularity fallback and return train's weighted events in chronological order."""
        _require_columns(train_events, ("user_id", "item_id", "event_type", "timestamp"))
        self.popularity = PopularityRecommender().fit(train_events, items)
        ranking = self.popularity.ranking()
        self._rank = {str(item): i for i, item in enumerate(ranking)}
        return _weighted_log(train_events, self.event_weights)

    def fit(self, train_events: pd.DataFrame, items: pd.DataFrame | None = None) -> Self:
        """Store every user's weighted training events (chronological) and fit the popularity fallback."""
        self._store_histories(self._fit_common(train_events, items))
        return self

    def _store_histories(self, log: _WeightedLog) -> None:
        """``self._histories[user] = (items, event types)``, chronological, from ``log`` (:class:`_Histories`)."""
        self._histories = _Histories(log)

    def _ranked_from(self, items: list[str], kinds: list[str]) -> list[str]:
        """The model's own ranking of a chronological history (known items only, best first)."""
        raise NotImplementedError

    def _finish(self, ranked: Sequence[str], k: int, exclude: set[str] | None) -> list[str]:
        assert self.popularity is not None
        banned = exclude or set()
        picked = [i for i in ranked if i not in banned][:k]
        return self.popularity.fill(picked, k, banned)

    def recommend_from_history(
        self,
        items: Sequence[str],
        k: int,
        exclude: set[str] | None = None,
        event_types: Sequence[str] | None = None,
        timestamps: Sequence[Any] | None = None,
    ) -> list[str]:
        """Top-``k`` items for someone whose history is ``items`` (oldest first unless ``timestamps`` say
        otherwise; every event a ``view`` unless ``event_types`` are given), without refitting: what serving
        calls for a user unseen at training time. ``exclude`` is honoured; short lists are padded with
        popularity."""
        if self.popularity is None:
            raise RuntimeError(f"{self.name}: call fit() before recommend()")
        frame = _history_frame(items, event_types, timestamps)
        frame = frame[frame["event_type"].map(self.event_weights).fillna(0.0) > 0]
        return self._finish(
            self._ranked_from(frame["item_id"].tolist(), frame["event_type"].astype(str).tolist()), k, exclude
        )

    def recommend(
        self, user_ids: Sequence[str], k: int, exclude: Mapping[str, set[str]] | None = None
    ) -> list[list[str]]:
        """Top-``k`` items per user from their training history (popularity for users without one)."""
        if self.popularity is None:
            raise RuntimeError(f"{self.name}: call fit() before recommend()")
        exclude = exclude or {}
        empty: tuple[list[str], list[str]] = ([], [])
        out = []
        for user in map(str, user_ids):
            items, kinds = self._histories.get(user, empty)
            out.append(self._finish(self._ranked_from(items, kinds), k, exclude.get(user)))
        return out


class MostViewedRecommender(_HistoryRecommender):
    """The items this user interacted with most: the sum of ``event_weights`` over their events (default
    :data:`COUNT_EVENT_WEIGHTS`: each view, click, add-to-cart and purchase counts once). Ties go to the item
    interacted with more recently, then to the more popular one; padded with popularity."""

    def __init__(self, event_weights: Mapping[str, float] | None = None, name: str = "most_viewed") -> None:
        super().__init__(event_weights)
        self.name = name

    def _ranked_from(self, items: list[str], kinds: list[str]) -> list[str]:
        score: dict[str, float] = {}
        last: dict[str, int] = {}
        for position, (item, kind) in enumerate(zip(items, kinds, strict=True)):
            if item in self._rank:
                score[item] = score.get(item, 0.0) + self.event_weights.get(kind, 0.0)
                last[item] = position
        return sorted(score, key=lambda i: (-score[i], -last[i], self._rank[i]))


class MostRecentRecommender(_HistoryRecommender):
    """The user's most recently interacted-with distinct items (latest first), padded with popularity."""

    def __init__(self, event_weights: Mapping[str, float] | None = None, name: str = "most_recent") -> None:
        super().__init__(event_weights)
        self.name = name

    def _ranked_from(self, items: list[str], kinds: list[str]) -> list[str]:
        out: list[str] = []
        seen: set[str] = set()
        for item in reversed(items):
            if item in self._rank and item not in seen:
                seen.add(item)
                out.append(item)
        return out


class CoViewRecommender(_HistoryRecommender):
    """Item-to-item co-occurrence ("people who viewed this also viewed"), scored from the user's recent items.

    * **Baskets**: the distinct items of one session (``session_id``); without a session id (column missing
      or null), a user's events split into sessions wherever ``session_gap_minutes`` pass without an event.
    * **Similarity**: cosine of the item columns of the binary basket x item matrix,
      ``sim(i, j) = c(i, j) / sqrt(c(i) c(j))`` (``c(i, j)``: baskets holding both, ``c(i)``: baskets holding
      i), diagonal zero, each item keeping its ``neighbors`` most similar items (scipy sparse throughout, so
      10^5 items fit).
    * **Score**: ``score(j) = sum_r decay**r * sim(h_r, j)`` over the user's ``max_history`` most recent
      distinct items ``h_0`` (latest), ``h_1``, ...; ties go to the more popular item; padded with popularity.
    """

    def __init__(
        self,
        session_gap_minutes: float = 30.0,
        neighbors: int = 100,
        decay: float = 0.8,
        max_history: int = 20,
        event_weights: Mapping[str, float] | None = None,
        name: str = "coview",
    ) -> None:
        super().__init__(event_weights)
        if session_gap_minutes <= 0:
            raise ConfigError(f"coview session_gap_minutes must be positive, got {session_gap_minutes}")
        if neighbors <= 0 or max_history <= 0:
            raise ConfigError(
                f"coview neighbors and max_history must be positive, got {neighbors}, {max_history}"
            )
        if not 0.0 < decay <= 1.0:
            raise ConfigError(f"coview decay must be in (0, 1], got {decay}")
        self.name = name
        self.session_gap_minutes = session_gap_minutes
        self.neighbors = neighbors
        self.decay = decay
        self.max_history = max_history
        self.similarity: sp.csr_matrix | None = None
        self.item_ids: np.ndarray = np.empty(0, dtype=object)
        self._item_pos: dict[str, int] = {}
        self._tiebreak: np.ndarray = np.empty(0, dtype=np.int64)

    def _baskets(self, log: _WeightedLog) -> np.ndarray:
        """One basket number (0, 1, ...) per event of ``log``: its session, or (no session id) its gap-split
        user session (a user's events in time order, a new one wherever more than ``session_gap_minutes`` pass
        or a time is missing)."""
        by_user = np.argsort(log.user, kind="stable")  # each user's events in time order
        user, ts = log.user[by_user], log.timestamp[by_user]
        new = np.ones(len(user), dtype=bool)
        if len(user) > 1:
            same = user[1:] == user[:-1]
            known = (ts[1:] != _NAT_LAST) & (ts[:-1] != _NAT_LAST)
            gap_ns = pd.Timedelta(minutes=self.session_gap_minutes).value
            close = known & (ts[1:] - np.where(known, ts[:-1], 0) <= gap_ns)
            new[1:] = ~(same & close)
        gap_basket = np.empty(len(user), dtype=np.int64)
        gap_basket[by_user] = np.cumsum(new) - 1
        del by_user, user, ts, new
        has_session = log.session >= 0
        n_gap = int(gap_basket.max()) + 1 if len(gap_basket) else 0
        keys = np.where(has_session, n_gap + log.session, gap_basket)
        return pd.factorize(keys)[0]

    def fit(self, train_events: pd.DataFrame, items: pd.DataFrame | None = None) -> Self:
        """Build the users' histories and the item-item cosine co-occurrence graph."""
        log = self._fit_common(train_events, items)
        self._store_histories(log)
        assert self.popularity is not None
        self.item_ids = np.array(sorted(self._rank), dtype=object)
        self._item_pos = {item: i for i, item in enumerate(self.item_ids)}
        self._tiebreak = np.array([self._rank[i] for i in self.item_ids], dtype=np.int64)
        n_items = len(self.item_ids)
        if len(log) == 0:
            self.similarity = sp.csr_matrix((n_items, n_items))
            return self
        baskets = self._baskets(log)
        cols = pd.Index(self.item_ids).get_indexer(log.item_ids)[log.item]
        del log
        basket_items = sp.csr_matrix(
            (np.ones(len(cols)), (baskets, cols)), shape=(int(baskets.max()) + 1, n_items)
        )
        del baskets, cols
        basket_items.sum_duplicates()
        basket_items.data[:] = 1.0
        counts = (basket_items.T @ basket_items).tocsr()
        del basket_items
        per_item = counts.diagonal()
        counts.setdiag(0.0)
        counts.eliminate_zeros()
        coo = counts.tocoo()
        del counts
        norm = np.sqrt(per_item[coo.row] * per_item[coo.col])
        similarity = sp.csr_matrix((coo.data / norm, (coo.row, coo.col)), shape=(n_items, n_items))
        self.similarity = _keep_top_per_row(similarity, self.neighbors)
        return self

    def _ranked_from(self, items: list[str], kinds: list[str]) -> list[str]:
        assert self.similarity is not None
        recent: list[int] = []
        for item in reversed(items):
            pos = self._item_pos.get(item)
            if pos is not None and pos not in recent:
                recent.append(pos)
                if len(recent) == self.max_history:
                    break
        if not recent:
            return []
        weights = self.decay ** np.arange(len(recent), dtype=np.float64)
        row = sp.csr_matrix(
            (weights, (np.zeros(len(recent), dtype=np.int64), recent)), shape=(1, len(self.item_ids))
        )
        scored = (row @ self.similarity).tocsr()
        scored.eliminate_zeros()
        idx, val = scored.indices, scored.data
        order = np.lexsort((self._tiebreak[idx], -val))
        return [str(self.item_ids[i]) for i in idx[order]]


def _keep_top_per_row(matrix: sp.csr_matrix, n: int) -> sp.csr_matrix:
    """``matrix`` with only the ``n`` largest entries of each row (ties: lower column first)."""
    matrix = matrix.tocsr()
    matrix.sort_indices()
    keep = np.zeros(matrix.nnz, dtype=bool)
    for r in range(matrix.shape[0]):
        start, end = matrix.indptr[r], matrix.indptr[r + 1]
        if end - start <= n:
            keep[start:end] = True
        else:
            order = np.lexsort((matrix.indices[start:end], -matrix.data[start:end]))[:n]
            keep[start + order] = True
    rows = np.repeat(np.arange(matrix.shape[0]), np.diff(matrix.indptr))
    return sp.csr_matrix((matrix.data[keep], (rows[keep], matrix.indices[keep])), shape=matrix.shape)


# --------------------------------------------------------------------------------------------- registry

#: Every baseline :func:`make_baseline` builds, by config name.
BASELINES: dict[str, type] = {
    "popularity": PopularityRecommender,
    "als": ALSRecommender,
    "item_knn": ItemKNNRecommender,
    "content": ContentBasedRecommender,
    "bpr": BPRRecommender,
    "ease": EASERecommender,
    "most_viewed": MostViewedRecommender,
    "most_recent": MostRecentRecommender,
    "coview": CoViewRecommender,
}
_SEEDED = {"als", "bpr"}


def make_baseline(name: str, seed: int = 42, **params: Any) -> Any:
    """An unfitted baseline by config name with keyword hyper-parameters (``seed`` goes to the seeded ones)."""
    if name not in BASELINES:
        raise ConfigError(f"unknown baseline {name!r}; choose from {sorted(BASELINES)}")
    if name in _SEEDED:
        params = {**params, "seed": seed}
    try:
        return BASELINES[name](**params)
    except TypeError as exc:
        raise ConfigError(f"baseline {name!r}: bad hyper-parameters {params}: {exc}") from None
