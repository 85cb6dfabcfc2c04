"""The request path: one request's slate from one bundle, as plain functions over the bundle and the config.

retrieval (:func:`retrieve`: numpy inner products or the bundle's ANN index, exact top-M) -> ranking
(:func:`rank_candidates`: the history-aware model for a request with a sequence state, else the DCN ranking
model's numpy engine) -> the best ``ranked_candidates`` by click probability -> the policy (exported TF-Agents
policy in numpy + the online LinUCB correction) fills ``k`` slots epsilon-greedily and reports each slot's
propensity (:func:`compute_slate`). :class:`serving.recommender.Recommender` adds the A/B variants, the
request ids and the memory of served slates around it.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from recflow.errors import DataError
from recflow.models.hybrid import top_items
from recflow.policy.online import OnlineLinUCB
from recflow.release import ArmStats
from serving.baseline_bundle import BaselineBundle
from serving.bundle import ServingBundle
from serving.config import ServingConfig
from serving.history import HistoryEntry, UserHistories, parse_history


@dataclass(frozen=True)
class RecommendedItem:
    """One slot of a served slate."""

    item_id: str
    position: int
    score: float  # the policy's final score (exported policy + online correction)
    click_probability: float | None  # the ranking model's estimate (None: a baseline bundle has no click model)
    propensity: float  # probability the policy put this item in this slot, given the slots above


@dataclass(frozen=True)
class Recommendation:
    """A served slate and what is needed to attribute feedback to it."""

    request_id: str
    user_id: str
    items: list[RecommendedItem]
    model_version: str
    policy_id: str
    variant: str
    cold_start: bool
    context: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """The slate as plain values (what ``dataclasses.asdict`` gives, built directly: ``asdict`` deep-copies
        field by field and costs a millisecond per slate under load; a served slate is converted twice)."""
        return {
            "request_id": self.request_id,
            "user_id": self.user_id,
            "items": [
                {"item_id": s.item_id, "position": s.position, "score": s.score,
                 "click_probability": s.click_probability, "propensity": s.propensity}
                for s in self.items
            ],
            "model_version": self.model_version,
            "policy_id": self.policy_id,
            "variant": self.variant,
            "cold_start": self.cold_start,
            "context": dict(self.context),
        }


@dataclass
class Variant:
    """A bundle being served under an A/B variant name, with its own online model."""

    name: str
    bundle: ServingBundle
    online: OnlineLinUCB | None
    served: int = 0
    stats: ArmStats = field(default_factory=ArmStats)  # requests, errors, latency, impressions, clicks

    @property
    def policy_id(self) -> str:
        if isinstance(self.bundle, BaselineBundle):
            return f"{self.bundle.version}/baseline:{self.bundle.label}"
        return f"{self.bundle.version}/{self.bundle.policy_meta.get('agent', 'policy')}+online"


@dataclass
class Decision:
    """A served slate with the policy features and scores its feedback is learned from."""

    rec: Recommendation
    variant: Variant
    features: np.ndarray  # [k, dim] policy features of the shown items
    base: np.ndarray  # [k] exported policy scores
    created: float = field(default_factory=time.time)


def ab_bucket(user_id: str, salt: str) -> float:
    """A stable number in [0, 1) for ``user_id`` (blake2b of salt and id): the A/B assignment."""
    digest = hashlib.blake2b(f"{salt}:{user_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def epsilon_greedy_slate(
    scores: np.ndarray, k: int, epsilon: float, rng: np.random.Generator
) -> tuple[list[int], list[float]]:
    """Fill ``k`` slots: the best remaining candidate with probability ``1 - epsilon``, else a uniform one.

    Returns the chosen indices and each slot's propensity ``(1 - eps) [pick is best] + eps / remaining``
    (the same rule and propensities as :meth:`recflow.policy.scorer.PolicyScorer.choose`).
    """
    order = list(np.argsort(-scores, kind="stable"))
    chosen: list[int] = []
    props: list[float] = []
    for _ in range(k):
        best = order[0]
        m = len(order)
        pick = order[int(rng.integers(m))] if rng.random() < epsilon else best
        props.append((1.0 - epsilon) * (pick == best) + epsilon / m)
        chosen.append(int(pick))
        order.remove(pick)
    return chosen, props


def retrieve(
    b: ServingBundle,
    cfg: ServingConfig,
    histories: UserHistories,
    user_id: str,
    ctx: Mapping[str, Any],
    history: Sequence[str | HistoryEntry] | None,
    exclude: Sequence[str] | None,
) -> tuple[np.ndarray, np.ndarray | None, bool]:
    """Rows of the top ``retrieval_candidates`` items by inner product (best first), the user embedding
    the policy should see (None when the model has none for the user) and whether this is a cold start
    (an unknown user without any history). ``histories``: what users posted back as feedback."""
    row = b.user_index.get(user_id)
    entries = parse_history(history) if history else histories.get(user_id)
    if b.is_sequence and b.sequence is not None:
        seen = b.sequence.history_for(user_id, entries if history else None, histories.get(user_id))
        query = b.sequence.encode(seen)
        if query is not None:
            return top_rows(b, cfg, query, exclude, scores=b.hybrid_scores(query, seen)), query, False
    entries = [e for e in entries if e.item_id in b.item_index]  # ids outside the catalog say nothing
    cold = row is None and not entries
    if row is None:
        query = b.cold_query(
            int(ctx.get("hour") or 0),
            int(ctx.get("weekday") or 0),
            str(ctx.get("device") or ""),
            str(ctx.get("region") or ""),
        )
        hist_rows = [b.item_index[e.item_id] for e in entries if e.item_id in b.item_index]
        if hist_rows:  # what the user just looked at says more than the context alone
            h = b.item_matrix[hist_rows].mean(axis=0)
            query = 0.5 * query + 0.5 * h * (float(np.linalg.norm(query)) / max(float(np.linalg.norm(h)), 1e-9))
        return top_rows(b, cfg, query, exclude, cfg.popularity_weight), None, cold
    query = b.user_matrix[row]
    return top_rows(b, cfg, query, exclude), query, cold


def top_rows(
    b: ServingBundle, cfg: ServingConfig, query: np.ndarray, exclude: Sequence[str] | None, prior: float = 0.0,
    scores: np.ndarray | None = None,
) -> np.ndarray:
    """Rows of the ``retrieval_candidates`` items of best score ``item . query + prior * log popularity``,
    best first, without ``exclude``: exact over the whole catalog, or re-scored exactly over what the
    bundle's approximate index returns (``ann_overfetch`` times more with a prior, which the index does not
    know). ``scores``: every item's score, already computed (a blend, :meth:`ServingBundle.hybrid_scores`)."""
    banned = [b.item_index[i] for i in exclude if i in b.item_index] if exclude else []
    if scores is not None:  # ties go to the lower row, as in the evaluation loader (recflow.models.hybrid)
        top = top_items(scores, cfg.retrieval_candidates, banned)
        if not len(top):
            raise DataError("exclude: every catalog item is excluded")
        return top
    if b.ann_index is not None:
        m = cfg.retrieval_candidates * (cfg.ann_overfetch if prior else 1)
        _, found = b.ann_index.search(np.asarray(query, np.float32)[None, :], m + len(banned))
        rows = found[0][found[0] >= 0]
        if banned:
            rows = rows[~np.isin(rows, banned)]
        if len(rows):
            scores = b.item_matrix[rows] @ query
            if prior:
                scores = scores + prior * b.item_log_popularity[rows]
            order = np.argsort(-scores, kind="stable")[: cfg.retrieval_candidates]
            return rows[order]
    # float32 like the embeddings (the same order as in float64, without converting 50,000 scores per request);
    # float64 once the popularity prior is added
    scores = np.asarray(b.item_matrix @ query)
    if prior:
        scores = scores.astype(np.float64) + prior * b.item_log_popularity
    return _top_of(scores, banned, cfg.retrieval_candidates)


def _top_of(scores: np.ndarray, banned: Sequence[int], n: int) -> np.ndarray:
    """Rows of the ``n`` best ``scores`` (best first) without the ``banned`` rows (``scores`` is modified)."""
    if banned:
        scores[banned] = -np.inf
    allowed = int(np.isfinite(scores).sum())
    m = min(n, allowed)
    if m < 1:
        raise DataError("exclude: every catalog item is excluded")
    top = np.argpartition(-scores, m - 1)[:m] if m < len(scores) else np.flatnonzero(np.isfinite(scores))
    return top[np.argsort(-scores[top], kind="stable")]


def rank_candidates(
    b: ServingBundle,
    histories: UserHistories,
    user_id: str,
    ctx: Mapping[str, Any],
    top: np.ndarray,
    policy_user: np.ndarray | None,
    history: Sequence[HistoryEntry] | None,
) -> np.ndarray:
    """Click probabilities of the retrieved rows ``top``: the history-aware model when the request has a
    sequence state, else the DCN ranking model (its numpy engine)."""
    if policy_user is not None and b.has_history_ranker and b.sequence is not None:
        seen = b.sequence.history_for(user_id, history, histories.get(user_id))
        return b.rank_with_history(policy_user, seen, top, ctx)
    return b.rank_candidates(user_id, top, ctx)


def _epsilon(b: ServingBundle, cfg: ServingConfig, cold: bool, new_with_history: bool) -> float:
    if cold:
        return cfg.cold_start_epsilon
    if new_with_history and cfg.new_user_epsilon is not None:
        return cfg.new_user_epsilon
    return cfg.epsilon if cfg.epsilon is not None else float(b.policy_meta.get("epsilon", 0.1))


def compute_slate(
    variant: Variant,
    cfg: ServingConfig,
    histories: UserHistories,
    user_id: str,
    context: Mapping[str, Any] | None,
    k: int,
    history: Sequence[HistoryEntry] | None,
    exclude: Sequence[str] | None,
    request_id: str,
    counter: int,
) -> tuple[Recommendation, np.ndarray, np.ndarray]:
    """One request's slate from ``variant``, with the shown items' policy features and exported-policy scores
    (what the online learner learns from). ``counter`` seeds the request's exploration draws."""
    if isinstance(variant.bundle, BaselineBundle):
        return baseline_slate(variant, histories, user_id, context, k, history, exclude, request_id)
    b = variant.bundle
    ctx = b.context_for(user_id, context)
    top, policy_user, cold = retrieve(b, cfg, histories, user_id, ctx, history, exclude)
    new_with_history = not cold and user_id not in b.user_index
    prob = rank_candidates(b, histories, user_id, ctx, top, policy_user, history)
    n_pool = min(max(cfg.ranked_candidates, k), len(top))
    pool_order = np.argsort(-prob, kind="stable")[:n_pool]
    pool, pool_prob = top[pool_order], prob[pool_order]
    g, a = b.policy_features(policy_user, ctx, pool)
    base = b.policy_scores(g, a)
    feats = np.concatenate([np.broadcast_to(g[:, None, :], a.shape[:2] + g.shape[1:]), a], axis=-1)[0]
    if not cfg.policy_rerank:  # the ranking model's order; the policy's scores are only logged
        key = pool_prob
    else:
        key = variant.online.adjust(feats, base) if variant.online is not None else base
    rng = np.random.default_rng([cfg.seed, counter])
    slots, props = epsilon_greedy_slate(key, min(k, len(pool)), _epsilon(b, cfg, cold, new_with_history), rng)
    items = [
        RecommendedItem(str(b.item_ids[pool[s]]), pos, float(key[s]), float(pool_prob[s]), float(p))
        for pos, (s, p) in enumerate(zip(slots, props, strict=True))
    ]
    rec = Recommendation(request_id, user_id, items, b.version, variant.policy_id, variant.name, cold,
                         {c: ctx.get(c) for c in ("hour", "weekday", "device", "region")})
    return rec, feats[slots], base[slots]


def baseline_slate(
    variant: Variant,
    histories: UserHistories,
    user_id: str,
    context: Mapping[str, Any] | None,
    k: int,
    history: Sequence[HistoryEntry] | None,
    exclude: Sequence[str] | None,
    request_id: str,
) -> tuple[Recommendation, np.ndarray, np.ndarray]:
    """A slate from a baseline bundle: its own top-``k`` in order (no exploration: propensity 1), from the
    request's history, else the history this service saw, else the user's training history."""
    b: BaselineBundle = variant.bundle  # type: ignore[assignment]
    entries = history or histories.get(user_id)
    seen = [(e.item_id, e.event_type or "view", e.timestamp) for e in entries or ()]
    items = b.slate(user_id, k, seen or None, list(exclude) if exclude else None)
    slots = [RecommendedItem(item, pos, float(len(items) - pos), None, 1.0) for pos, item in enumerate(items)]
    ctx = dict(context or {})
    cold = not seen and user_id not in b.user_index
    rec = Recommendation(request_id, user_id, slots, b.version, variant.policy_id, variant.name, cold,
                         {c: ctx.get(c) for c in ("hour", "weekday", "device", "region")})
    return rec, np.zeros((len(slots), 0)), np.zeros(len(slots))
