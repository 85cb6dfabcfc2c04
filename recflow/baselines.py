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
from collections.abc import Mapping, Sequence
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


def interaction_matrix(
    events: pd.DataFrame,
    weights: Mapping[str, float] | None = None,
    items: Sequence[str] | None = None,
) -> tuple[sp.csr_matrix, np.ndarray, np.ndarray]:
    """A users x items CSR matrix of summed event weights, with its user ids and item ids (both sorted).

    ``items`` fixes the item axis (events on other items are dropped); by default it is every item with a
    weighted event.
    """
    _require_columns(events, ("user_id", "item_id", "event_type"))
    w = dict(DEFAULT_EVENT_WEIGHTS if weights is None else weights)
    ev = events[["user_id", "item_id", "event_type"]].astype({"user_id": str, "item_id": str})
    value = ev["event_type"].map(w).fillna(0.0).astype(np.float64)
    ev = ev.assign(value=value)[value > 0]
    item_ids = np.array(
        sorted(set(ev["item_id"])) if items is None else sorted(set(map(str, items))), dtype=object
    )
    ev = ev[ev["item_id"].isin(item_ids)]
    user_ids = np.array(sorted(set(ev["user_id"])), dtype=object)
    rows = pd.Index(user_ids).get_indexer(ev["user_id"])
    cols = pd.Index(item_ids).get_indexer(ev["item_id"])
    matrix = sp.csr_matrix((ev["value"].to_numpy(), (rows, cols)), shape=(len(user_ids), len(item_ids)))
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
        chosen = ev[ev["event_type"].isin(POSITIVE_EVENT_TYPES)]
        if chosen.empty:
            chosen = ev[ev["event_type"] == "view"]
        weight = pd.Series(1.0, index=chosen.index)
        if self.half_life_days is not None and not chosen.empty:
            _require_columns(train_events, ("timestamp",))
            ts = pd.to_datetime(chosen["timestamp"], utc=True)
            age_days = (ts.max() - ts).dt.total_seconds() / _SECONDS_PER_DAY
            weight = 0.5 ** (age_days / self.half_life_days)
        counts = weight.groupby(chosen["item_id"].astype(str)).sum()
        universe = set(ev["item_id"].astype(str))
        if items is not None and "item_id" in items.columns:
            universe |= set(items["item_id"].astype(str))
        item_ids = np.array(sorted(universe), dtype=object)
        scores = counts.reindex(item_ids, fill_value=0.0).to_numpy(dtype=np.float64)
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
                row = scores[j]
                banned = [self._item_pos[x] for x in exclude.get(users[i], ()) if x in self._item_pos]
                if banned:
                    row[banned] = -np.inf
                out[i] = [str(self.item_ids[t]) for t in top_k_indices(row, k, self._tiebreak)]
        return [self.popularity.fill(items, k, exclude.get(u)) for items, u in zip(out, users, strict=True)]


class _MatrixFactorization(_ScoringRecommender):
    """An ``implicit`` matrix-factorisation model: one shared fit, the model itself from :meth:`_model`."""

    factors: int
    user_factors: np.ndarray | None
    item_factors: np.ndarray | None

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
        super().__init__()
        self.name = name
        self.factors = factors
        self.iterations = iterations
        self.regularization = regularization
        self.alpha = alpha
        self.seed = seed
        self.event_weights = event_weights
        self.user_factors: np.ndarray | None = None
        self.item_factors: np.ndarray | None = None

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
        super().__init__()
        self.name = name
        self.factors = factors
        self.iterations = iterations
        self.learning_rate = learning_rate
        self.regularization = regularization
        self.seed = seed
        self.event_weights = event_weights
        self.user_factors: np.ndarray | None = None
        self.item_factors: np.ndarray | None = None

    def _model(self) -> Any:
        from implicit.cpu.bpr import BayesianPersonalizedRanking

        return BayesianPersonalizedRanking(factors=self.factors, learning_rate=self.learning_rate,
                                           regularization=self.regularization, iterations=self.iterations,
                                           num_threads=1, random_state=self.seed)

    def _training_matrix(self, matrix: sp.csr_matrix) -> sp.csr_matrix:
        binary = matrix.copy()
        binary.data[:] = 1.0
        return binary


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
