"""Re-ranking a recommender's lists for fairer exposure or more diverse lists, at a configurable accuracy cost.

:class:`ReRankedRecommender` wraps any :class:`~recflow.recommender.Recommender`: it asks the base for a pool of
``candidates`` items per user (exclusions already applied), then greedily picks ``k`` of them. ``strength``
(lambda, 0..1) trades the base's relevance for the re-ranking objective; 0 gives the base's own top-k.

* ``xquad`` -- popularity-aware re-ranking for long-tail exposure (smooth xQuAD; Abdollahpouri, Burke and
  Mobasher, "Managing Popularity Bias in Recommender Systems with Personalized Re-ranking", FLAIRS 2019).
  Items fall into two groups, head and long tail (see :func:`recflow.evaluation.beyond_accuracy.head_items`).
  The next item maximises ``(1 - lambda) * rel(v) + lambda * P(g(v)|u) * (1 - |S ∩ g(v)| / |S|)``, where S is
  the list so far (the last factor is 1 while S is empty) and ``P(tail|u)`` the long-tail share the list
  aims for: ``tail_target`` for everybody (default 0.5, equal exposure of head and tail), or, with
  ``tail_target: null``, the share of the user's own training interactions on the long tail (the paper's
  personalized variant; the global share for users without history). Long-tail items get a boost as long as
  the list under-represents the long tail relative to that target.
* ``mmr`` -- maximal marginal relevance (Carbonell and Goldstein, SIGIR 1998) for intra-list diversity:
  ``(1 - lambda) * rel(v) - lambda * max_{j in S} sim(v, j)`` with sim 1 for the same category, else 0
  (cosine similarity of item embeddings when there are no categories).

``rel`` is the base's score min-max normalised within the user's pool when the base has
``recommend_with_scores`` (the TFRS recommender does), else the rank-based ``1 - r / n`` (r = 0 for the best
of n). Ties keep the base's order, so the result is deterministic.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from recflow.errors import ConfigError
from recflow.evaluation.beyond_accuracy import NO_GROUP, head_items, interaction_counts
from recflow.recommender import Recommender

RerankingMethod = Literal["none", "xquad", "mmr"]
HEAD, TAIL = "head", "tail"


class RerankingConfig(BaseModel):
    """Re-ranking of the candidate's lists (the ``reranking`` key of the ``evaluator`` section; off by default)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: RerankingMethod = Field(
        "none",
        description="'xquad' (long-tail exposure, smooth xQuAD), 'mmr' (category diversity) or 'none' (off).",
    )
    strength: float = Field(
        0.0, ge=0.0, le=1.0, description="lambda: 0 keeps the base ranking, 1 ignores relevance entirely."
    )
    candidates: int = Field(
        100, gt=0, description="Items fetched from the base recommender per user and re-ranked (at least k)."
    )
    tail_target: float | None = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="xquad: the long-tail share P(tail|u) the lists aim for (0.5 = equal exposure of head and "
        "long tail); null = each user's own long-tail share in train (personalized xQuAD, which only "
        "calibrates lists to past taste and barely moves exposure when the log is popularity-biased).",
    )

    @property
    def enabled(self) -> bool:
        """Whether re-ranking changes anything (a method other than 'none' and a positive strength)."""
        return self.method != "none" and self.strength > 0.0


def normalised_relevance(scores: Sequence[float] | None, n: int) -> np.ndarray:
    """Relevance in [0, 1] of a pool of ``n`` items in base order: min-max scaled ``scores``, or ``1 - r / n``
    by rank when there are no scores or they are all equal."""
    if scores is not None and n:
        s = np.asarray(scores, dtype=np.float64)
        span = float(s.max() - s.min())
        if np.all(np.isfinite(s)) and span > 0:
            return (s - s.min()) / span
    return 1.0 - np.arange(n, dtype=np.float64) / max(n, 1)


def xquad_order(
    relevance: np.ndarray, is_tail: np.ndarray, tail_preference: float, strength: float, k: int
) -> list[int]:
    """Indices (into the pool) of the ``k`` items smooth xQuAD picks; see the module docstring."""
    n = len(relevance)
    chosen: list[int] = []
    available = np.ones(n, dtype=bool)
    pref = np.where(is_tail, tail_preference, 1.0 - tail_preference)
    tail_in_list = 0
    for _ in range(min(k, n)):
        size = len(chosen)
        if size == 0:
            coverage = np.ones(n)
        else:
            share_of_group = np.where(is_tail, tail_in_list / size, (size - tail_in_list) / size)
            coverage = 1.0 - share_of_group
        score = (1.0 - strength) * relevance + strength * pref * coverage
        score = np.where(available, score, -np.inf)
        best = int(np.argmax(score))  # first maximum: ties keep the base order
        chosen.append(best)
        available[best] = False
        tail_in_list += int(is_tail[best])
    return chosen


def mmr_order(relevance: np.ndarray, similarity: np.ndarray, strength: float, k: int) -> list[int]:
    """Indices of the ``k`` items maximal marginal relevance picks, given the pool's pairwise ``similarity``."""
    n = len(relevance)
    chosen: list[int] = []
    available = np.ones(n, dtype=bool)
    max_sim = np.zeros(n)
    for _ in range(min(k, n)):
        score = (1.0 - strength) * relevance - strength * max_sim
        score = np.where(available, score, -np.inf)
        best = int(np.argmax(score))
        chosen.append(best)
        available[best] = False
        max_sim = np.maximum(max_sim, similarity[best])
    return chosen


class ReRankedRecommender:
    """A :class:`~recflow.recommender.Recommender` that re-ranks another one's pool (see the module docstring).

    Build it with :func:`make_reranker`, which derives the head/tail split and the users' long-tail preference
    from the training log.
    """

    def __init__(
        self,
        base: Recommender,
        method: RerankingMethod,
        strength: float,
        candidates: int = 100,
        *,
        head: frozenset[str] = frozenset(),
        tail_preference: Mapping[str, float] | None = None,
        default_tail_preference: float = 0.2,
        categories: Mapping[str, str] | None = None,
        embeddings: Mapping[str, np.ndarray] | None = None,
    ) -> None:
        if method not in ("xquad", "mmr"):
            raise ValueError(f"unknown re-ranking method {method!r} (xquad or mmr)")
        if not 0.0 <= strength <= 1.0:
            raise ValueError(f"strength must be in [0, 1], got {strength}")
        if method == "mmr" and not categories and not embeddings:
            raise ValueError("mmr re-ranking needs item categories or item embeddings")
        self.base = base
        self.method = method
        self.strength = float(strength)
        self.candidates = int(candidates)
        self.head = head
        self.tail_preference = dict(tail_preference or {})
        self.default_tail_preference = float(default_tail_preference)
        self.categories = dict(categories or {})
        self.embeddings = dict(embeddings or {})
        self.name = f"{base.name}+{method}({self.strength:g})"

    def _pools(
        self, user_ids: Sequence[str], n: int, exclude: Mapping[str, set[str]] | None
    ) -> list[tuple[list[str], list[float] | None]]:
        with_scores = getattr(self.base, "recommend_with_scores", None)
        if callable(with_scores):
            rows = with_scores(user_ids, n, exclude)
            return [([str(i) for i, _ in row], [float(s) for _, s in row]) for row in rows]
        return [([str(i) for i in row], None) for row in self.base.recommend(user_ids, n, exclude)]

    def _similarity(self, items: list[str]) -> np.ndarray:
        if self.categories:
            labels = np.array([self.categories.get(i, NO_GROUP) for i in items], dtype=object)
            return (labels[:, None] == labels[None, :]).astype(np.float64)
        dim = len(next(iter(self.embeddings.values())))
        mat = np.stack([np.asarray(self.embeddings.get(i, np.zeros(dim)), dtype=np.float64) for i in items])
        norms = np.linalg.norm(mat, axis=1, keepdims=True)
        unit = mat / np.where(norms > 0, norms, 1.0)
        return unit @ unit.T

    def recommend(
        self, user_ids: Sequence[str], k: int, exclude: Mapping[str, set[str]] | None = None
    ) -> list[list[str]]:
        """Top-``k`` items per user after re-ranking the base's top-``max(candidates, k)`` pool."""
        users = [str(u) for u in user_ids]
        pools = self._pools(users, max(self.candidates, k), exclude)
        out: list[list[str]] = []
        for user, (items, scores) in zip(users, pools, strict=True):
            relevance = normalised_relevance(scores, len(items))
            if self.method == "xquad":
                is_tail = np.array([i not in self.head for i in items], dtype=bool)
                pref = self.tail_preference.get(user, self.default_tail_preference)
                order = xquad_order(relevance, is_tail, pref, self.strength, k)
            else:
                order = mmr_order(relevance, self._similarity(items), self.strength, k)
            out.append([items[j] for j in order])
        return out


def tail_preferences(
    train_events: pd.DataFrame, head: frozenset[str]
) -> tuple[dict[str, float], float]:
    """Each user's share of training interactions (non-impression events) on long-tail items, and the global
    share (the preference of users without history)."""
    ev = train_events
    if "event_type" in ev.columns:
        ev = ev[ev["event_type"] != "impression"]
    if ev.empty:
        return {}, 0.0
    tail = ~ev["item_id"].astype(str).isin(head)
    per_user = tail.groupby(ev["user_id"].astype(str)).mean()
    return {str(u): float(v) for u, v in per_user.items()}, float(tail.mean())


def make_reranker(
    base: Recommender,
    config: RerankingConfig,
    train_events: pd.DataFrame,
    items: pd.DataFrame | None = None,
    *,
    head_share: float = 0.8,
    item_embeddings: Mapping[str, np.ndarray] | None = None,
) -> Recommender:
    """``base`` re-ranked as ``config`` says, with the head, the users' long-tail preference and the item
    categories taken from ``train_events`` and ``items``; ``base`` itself when re-ranking is off."""
    if not config.enabled:
        return base
    catalog = items["item_id"].astype(str) if items is not None and "item_id" in items.columns else None
    head = head_items(interaction_counts(train_events, catalog), head_share)
    if config.tail_target is None:
        prefs, default = tail_preferences(train_events, head)
    else:
        prefs, default = {}, float(config.tail_target)
    categories: dict[str, str] = {}
    if items is not None and "category" in items.columns:
        known = items.dropna(subset=["category"])
        categories = dict(zip(known["item_id"].astype(str), known["category"].astype(str), strict=True))
    if config.method == "mmr" and not categories and not item_embeddings:
        raise ConfigError(
            "reranking.method=mmr needs item categories (items.parquet column 'category') or item embeddings; "
            "use method=xquad for an ids-only log"
        )
    return ReRankedRecommender(
        base,
        config.method,
        config.strength,
        config.candidates,
        head=head,
        tail_preference=prefs,
        default_tail_preference=default,
        categories=categories,
        embeddings=item_embeddings,
    )
