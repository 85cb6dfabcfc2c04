"""The in-process recommendation API; the HTTP service (:mod:`serving.app`) is a thin layer over it.

    from serving import Recommender
    rec = Recommender.load("data/models")          # the champion of a model store
    out = rec.recommend("u000001", context={"hour": 20, "device": "mobile"}, k=10)
    out.items[0].item_id, out.items[0].propensity, out.request_id, out.variant

One request: retrieval (numpy inner products, exact top-M) -> ranking model (numpy) on the M candidates -> the best
``ranked_candidates`` by click probability -> the policy (exported TF-Agents policy + online LinUCB
correction) fills ``k`` slots epsilon-greedily and reports each slot's propensity.

A user's history (:mod:`serving.history`) is the request's ``history`` when it has one, else what the bundle
stored for the user plus the events the user posted back as feedback. With a sequence bundle every user with a
history -- known or new -- is served from it (the numpy sequence encoder); with a two-tower bundle a known user
has their trained embedding and an unknown user the query tower's output for their context, blended with the
history. Only an unknown user with no history at all is a cold start: a log-popularity prior and
``cold_start_epsilon`` exploration. Feedback, hot swap and A/B variants are handled here too; see
docs/serving.md.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import sys
import tempfile
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from recflow.errors import DataError
from recflow.release import ArmStats
from serving.bundle import ServingBundle
from serving.config import ServingConfig
from serving.decisions import SharedDecisions
from serving.feedback_log import FeedbackLog
from serving.history import HISTORY_EVENT_TYPES, HistoryEntry, UserHistories, parse_history
from serving.logs import log_event
from serving.online import OnlineLinUCB

log = logging.getLogger(__name__)

CHAMPION, CHALLENGER, CANARY = "champion", "challenger", "canary"
FEEDBACK_TYPES: tuple[str, ...] = (
    "impression",
    "view",
    "click",
    "add_to_cart",
    "remove_from_cart",
    "purchase",
)


@dataclass(frozen=True)
class RecommendedItem:
    """One slot of a served slate."""

    item_id: str
    position: int
    score: float  # the policy's final score (exported policy + online correction)
    click_probability: float  # the ranking model's estimate
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
        return asdict(self)


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
        return f"{self.bundle.version}/{self.bundle.policy_meta.get('agent', 'policy')}+online"


@dataclass
class _Decision:
    rec: Recommendation
    variant: Variant
    features: np.ndarray  # [k, dim] policy features of the shown items
    base: np.ndarray  # [k] exported policy scores
    created: float = field(default_factory=time.time)


def limit_threads(config: ServingConfig) -> None:
    """Pin BLAS and TensorFlow thread pools for a serving process (call before loading any bundle).

    One request is a single matrix-vector product and a small model call: extra threads only add
    synchronisation, and under load they compete with the requests themselves.
    """
    if config.blas_threads is not None:
        from threadpoolctl import threadpool_limits

        threadpool_limits(config.blas_threads)
    import tensorflow as tf

    try:
        if config.tf_intra_op_threads is not None:
            tf.config.threading.set_intra_op_parallelism_threads(config.tf_intra_op_threads)
        if config.tf_inter_op_threads is not None:
            tf.config.threading.set_inter_op_parallelism_threads(config.tf_inter_op_threads)
    except RuntimeError:  # TensorFlow already initialised its runtime: keep what it has
        log.warning("TensorFlow thread pools were already initialised; serving thread limits not applied")


def local_bundle_path(store: Any, info: Any) -> str:
    """A local directory holding bundle ``info``: its own path in a local store, else a fresh download
    (gs:// and other fsspec stores) into a temporary directory."""
    if store.is_local:
        return str(info.path)
    local = Path(tempfile.mkdtemp(prefix=f"recflow-bundle-{info.version}-"))
    store.fs.get(str(info.path).rstrip("/") + "/", str(local), recursive=True)
    return str(local)


def load_bundle(path: str | Path, version: str, config: ServingConfig, *, share_arrays: bool = False) -> ServingBundle:
    """:meth:`ServingBundle.load` with the serving config's index settings (approximate index and its check);
    ``share_arrays``: memory-map the arrays shared by the service's worker processes."""
    return ServingBundle.load(
        path,
        version,
        ann_index=config.ann_index,
        min_index_recall=config.min_index_recall,
        index_check_queries=config.index_check_queries,
        share_arrays=share_arrays,
    )


def ab_bucket(user_id: str, salt: str) -> float:
    """A stable number in [0, 1) for ``user_id`` (blake2b of salt and id): the A/B assignment."""
    digest = hashlib.blake2b(f"{salt}:{user_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


class Recommender:
    """Serves the champion bundle (and a challenger for a share of users); see the module docstring."""

    def __init__(
        self,
        champion: ServingBundle,
        config: ServingConfig | None = None,
        *,
        challenger: ServingBundle | None = None,
        feedback_log: FeedbackLog | None = None,
        store: Any = None,
        catalog: pd.DataFrame | None = None,
        reward_weights: Mapping[str, float] | None = None,
        shared_decisions: SharedDecisions | None = None,
    ) -> None:
        self.config = config or ServingConfig()
        self.shared_decisions = shared_decisions  # slates shared with the other workers (None: one process)
        self.on_event: Callable[[str], None] | None = None  # told "swap", "rollback", "swap_rejected"
        self.store = store
        self.catalog = catalog
        self.reward_weights = dict(reward_weights or {"click": 1.0, "add_to_cart": 2.0, "purchase": 5.0})
        self.feedback_log = feedback_log
        self._variants: dict[str, Variant] = {CHAMPION: self._variant(CHAMPION, champion)}
        if challenger is not None:
            self._variants[CHALLENGER] = self._variant(CHALLENGER, challenger)
        self._decisions: OrderedDict[str, _Decision] = OrderedDict()
        self._decisions_lock = threading.Lock()
        self._counter = 0
        self._counter_lock = threading.Lock()
        self._watcher: threading.Thread | None = None
        self._stop = threading.Event()
        self.rejected_versions: dict[str, str] = {}
        self.swaps = 0
        self.rollbacks = 0
        self._swap_lock = threading.Lock()
        self.feedback_events = 0
        self._event_counts: dict[tuple[str, str], int] = {}  # (variant, event type) -> events logged
        self._closed = False
        self._window: list[tuple[float, int, int]] = []  # (time, impressions, clicks) for the CTR window
        self._window_lock = threading.Lock()
        self._explainers: dict[str, Any] = {}
        self.histories = UserHistories(self.config.history_length, self.config.history_users)
        self.canary_share = 0.0
        self.canary_salt = "canary"
        self.canary: Any = None  # a serving.canary.CanaryController, stepped by the model watcher

    # ------------------------------------------------------------------ construction
    def _variant(self, name: str, bundle: ServingBundle) -> Variant:
        if self.catalog is not None:
            bundle.add_items(self.catalog)
        online = None
        if self.config.online_learning:
            layout = bundle.policy_scorer.layout
            online = OnlineLinUCB(
                layout.global_dim + layout.arm_dim,
                ridge=self.config.online_ridge,
                alpha=self.config.online_alpha,
                weight=self.config.online_weight,
                publish_every=self.config.online_publish_every,
                reward_weights=self.reward_weights,
            )
            online.start()
        return Variant(name, bundle, online)

    @classmethod
    def load(
        cls,
        store: Any,
        config: ServingConfig | None = None,
        *,
        feedback_dir: str | Path | None = None,
        catalog: pd.DataFrame | None = None,
        worker: str | None = None,
        shared_decisions: str | Path | None = None,
        canary: Any = None,
    ) -> Recommender:
        """Serve the champion (and the configured challenger) of a model store (a path or a ModelStore).

        ``worker``: this process's name among the service's workers (its feedback log segments carry it, so each
        worker's log is its own ordered sequence); ``shared_decisions``: the SQLite file of served slates shared
        by the workers (:mod:`serving.decisions`). ``canary`` (a :class:`recflow.release.CanaryConfig`, the
        config's ``release.canary``): follow the store's canary alias with a
        :class:`serving.canary.CanaryController` (stepped by the model watcher; single-worker service only)."""
        from recflow.model_store import ModelStore

        config = config or ServingConfig()
        store = store if isinstance(store, ModelStore) else ModelStore(os.fspath(store))
        champion = store.champion()
        if champion is None:
            raise DataError(
                f"model store {store.root}: no champion yet (run `recflow demo` or the pipeline)",
                hint="a blessed pipeline run pushes one",
            )
        share = worker is not None
        bundle = load_bundle(local_bundle_path(store, champion), champion.version, config, share_arrays=share)
        challenger = None
        if config.challenger and config.challenger_share > 0:
            info = store.resolve(config.challenger)
            challenger = load_bundle(local_bundle_path(store, info), info.version, config, share_arrays=share)
        fb = (
            FeedbackLog(feedback_dir, config.feedback_segment_bytes, config.feedback_segment_seconds, writer=worker)
            if feedback_dir is not None
            else None
        )
        shared = SharedDecisions(shared_decisions, config.request_cache_size) if shared_decisions else None
        rec = cls(
            bundle, config, challenger=challenger, feedback_log=fb, store=store, catalog=catalog,
            shared_decisions=shared,
        )
        rec.warm_up(rec._variants[CHAMPION].bundle)
        rec.hold_served()
        if canary is not None and getattr(canary, "enabled", False):
            from serving.canary import CanaryController

            rec.canary = CanaryController(rec, store, canary)
            rec.canary.step()  # a canary already running: serve it from the start
        return rec

    @property
    def lease_holder(self) -> str:
        """This process's name on the store's leases (see :meth:`recflow.model_store.ModelStore.hold`)."""
        import socket

        return f"serving-{socket.gethostname()}-{os.getpid()}-{id(self):x}"

    def hold_served(self, loading: Sequence[str] = ()) -> None:
        """Lease the versions this process serves (and ``loading``) so the store's garbage collection keeps
        them; a store that cannot be written (read-only) only logs."""
        if self.store is None or not hasattr(self.store, "hold"):
            return
        versions = {v.bundle.version for v in self._variants.values()} | set(loading)
        try:
            self.store.hold(self.lease_holder, sorted(versions))
        except Exception as exc:  # noqa: BLE001 - a lease is a courtesy to the collector; serving goes on
            log.warning("could not lease served versions %s: %s", sorted(versions), exc)

    # ------------------------------------------------------------------ properties
    @property
    def champion(self) -> ServingBundle:
        return self._variants[CHAMPION].bundle

    @property
    def variants(self) -> dict[str, Variant]:
        return dict(self._variants)

    def variant_for(self, user_id: str) -> Variant:
        """The variant that serves ``user_id`` (stable hashes decide): the canary for ``canary_share`` of users
        while one runs, else the A/B challenger for ``challenger_share``, else the champion."""
        variants = self._variants
        if CANARY in variants and ab_bucket(user_id, self.canary_salt) < self.canary_share:
            return variants[CANARY]
        if CHALLENGER in variants and ab_bucket(user_id, self.config.ab_salt) < self.config.challenger_share:
            return variants[CHALLENGER]
        return variants[CHAMPION]

    # ------------------------------------------------------------------ recommending
    def _next_request_id(self) -> tuple[str, int]:
        with self._counter_lock:
            self._counter += 1
            n = self._counter
        return uuid.uuid4().hex, n

    def recommend(
        self,
        user_id: str,
        context: Mapping[str, Any] | None = None,
        k: int | None = None,
        history: Sequence[str | Mapping[str, Any] | HistoryEntry] | None = None,
        exclude: Sequence[str] | None = None,
        *,
        variant: str | None = None,
    ) -> Recommendation:
        """A slate of ``k`` items for ``user_id`` (see the module docstring); never raises for unknown ids.

        ``history``: the user's recent events, oldest first -- item ids (views) or mappings with ``item_id``,
        ``event_type`` and ``timestamp`` (see :func:`serving.history.parse_history`); when given it is the
        user's history for this request. ``exclude``: item ids never to show. ``variant`` forces an A/B
        variant (default: by hash of the user id). Raises DataError for a bad ``k`` or history entry.
        """
        k = self.config.default_k if k is None else int(k)
        if not 1 <= k <= self.config.max_k:
            raise DataError(f"k: must be between 1 and {self.config.max_k}, got {k}")
        entries = parse_history(history)
        chosen = self._variants[variant] if variant else self.variant_for(str(user_id))
        request_id, n = self._next_request_id()
        started = time.perf_counter()
        try:
            rec, feats, base = self._recommend_with(
                chosen, str(user_id), context, k, entries or None, exclude, request_id, n
            )
        except Exception:
            chosen.stats.add_request((time.perf_counter() - started) * 1000.0, error=True)
            raise
        chosen.stats.add_request((time.perf_counter() - started) * 1000.0)
        chosen.served += 1
        with self._decisions_lock:
            self._decisions[request_id] = _Decision(rec, chosen, feats, base)
            while len(self._decisions) > self.config.request_cache_size:
                self._decisions.popitem(last=False)
        if self.shared_decisions is not None:
            self.shared_decisions.put(request_id, rec.to_dict(), feats, base)
        return rec

    def _decision(self, request_id: str | None) -> _Decision | None:
        """The decision served under ``request_id``: from this process's memory, else from the other workers'."""
        if not request_id:
            return None
        with self._decisions_lock:
            d = self._decisions.get(request_id)
        if d is not None or self.shared_decisions is None:
            return d
        found = self.shared_decisions.get(request_id)
        if found is None:
            return None
        slate, feats, base = found
        items = [RecommendedItem(**it) for it in slate.pop("items")]
        rec = Recommendation(items=items, **slate)
        variant = self._variants.get(rec.variant) or self._variants[CHAMPION]
        return _Decision(rec, variant, feats, base)

    def _recommend_with(
        self,
        variant: Variant,
        user_id: str,
        context: Mapping[str, Any] | None,
        k: int,
        history: Sequence[HistoryEntry] | None,
        exclude: Sequence[str] | None,
        request_id: str,
        counter: int,
    ) -> tuple[Recommendation, np.ndarray, np.ndarray]:
        b, cfg = variant.bundle, self.config
        ctx = b.context_for(user_id, context)
        top, policy_user, cold = self.retrieve(b, user_id, ctx, history, exclude)
        new_with_history = not cold and user_id not in b.user_index
        if policy_user is not None and b.has_history_ranker and b.sequence is not None:
            seen = b.sequence.history_for(user_id, history, self.histories.get(user_id))
            prob = b.rank_with_history(policy_user, seen, top, ctx)
        else:
            prob = b.rank_candidates(user_id, top, ctx)
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
        eps = cfg.epsilon if cfg.epsilon is not None else float(b.policy_meta.get("epsilon", 0.1))
        if cold:
            eps = cfg.cold_start_epsilon
        elif new_with_history and cfg.new_user_epsilon is not None:
            eps = cfg.new_user_epsilon
        rng = np.random.default_rng([cfg.seed, counter])
        slots, props = epsilon_greedy_slate(key, min(k, len(pool)), eps, rng)
        items = [
            RecommendedItem(str(b.item_ids[pool[s]]), pos, float(key[s]), float(pool_prob[s]), float(p))
            for pos, (s, p) in enumerate(zip(slots, props, strict=True))
        ]
        rec = Recommendation(
            request_id,
            user_id,
            items,
            b.version,
            variant.policy_id,
            variant.name,
            cold,
            {c: ctx.get(c) for c in ("hour", "weekday", "device", "region")},
        )
        return rec, feats[slots], base[slots]

    def retrieve(
        self,
        b: ServingBundle,
        user_id: str,
        ctx: Mapping[str, Any],
        history: Sequence[str | HistoryEntry] | None,
        exclude: Sequence[str] | None,
    ) -> tuple[np.ndarray, np.ndarray | None, bool]:
        """Rows of the top ``retrieval_candidates`` items by inner product (best first), the user embedding
        the policy should see (None when the model has none for the user) and whether this is a cold start
        (an unknown user without any history)."""
        cfg = self.config
        row = b.user_index.get(user_id)
        entries = parse_history(history) if history else self.histories.get(user_id)
        if b.is_sequence:
            query = b.sequence_query(user_id, entries if history else None, self.histories.get(user_id))
            if query is not None:
                return self._top(b, query, exclude), query, False
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
                query = 0.5 * query + 0.5 * h * (np.linalg.norm(query) / max(np.linalg.norm(h), 1e-9))
            return self._top(b, query, exclude, cfg.popularity_weight), None, cold
        query = b.user_matrix[row]
        return self._top(b, query, exclude), query, cold

    def _top(
        self, b: ServingBundle, query: np.ndarray, exclude: Sequence[str] | None, prior: float = 0.0
    ) -> np.ndarray:
        """Rows of the ``retrieval_candidates`` items of best score ``item . query + prior * log popularity``,
        best first, without ``exclude``: exact over the whole catalog, or re-scored exactly over what the
        bundle's approximate index returns (``ann_overfetch`` times more with a prior, which the index does not
        know)."""
        cfg = self.config
        banned = [b.item_index[i] for i in exclude if i in b.item_index] if exclude else []
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
        scores = np.asarray(b.item_matrix @ query, dtype=np.float64)
        if prior:
            scores = scores + prior * b.item_log_popularity
        if banned:
            scores[banned] = -np.inf
        allowed = int(np.isfinite(scores).sum())
        m = min(cfg.retrieval_candidates, allowed)
        if m < 1:
            raise DataError("exclude: every catalog item is excluded")
        top = np.argpartition(-scores, m - 1)[:m] if m < len(scores) else np.flatnonzero(np.isfinite(scores))
        return top[np.argsort(-scores[top], kind="stable")]

    # ------------------------------------------------------------------ feedback
    def decision(self, request_id: str) -> Recommendation | None:
        """The slate served under ``request_id`` (if still remembered)."""
        d = self._decision(request_id)
        return None if d is None else d.rec

    def record_feedback(self, events: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Validate, enrich from the served slate, append durably to the feedback log, and queue for learning.

        Each event needs ``event_type`` and ``item_id``; with a known ``request_id`` the user, position,
        propensity, policy id, variant and context come from the served slate (impressions also get the model's
        score and click probability, for monitoring). Returns the logged events.
        Raises :class:`DataError` naming the event index and field for a bad event (nothing is logged then).
        """
        now = pd.Timestamp.now(tz="UTC").floor("ms")
        rows: list[dict[str, Any]] = []
        learn: list[tuple[_Decision, int, str]] = []
        for n, ev in enumerate(events):
            kind = ev.get("event_type")
            if kind not in FEEDBACK_TYPES:
                raise DataError(
                    f"events[{n}].event_type: must be one of {', '.join(FEEDBACK_TYPES)}, got {kind!r}"
                )
            item = ev.get("item_id")
            rid = ev.get("request_id")
            d = self._decision(rid)
            if d is None and not ev.get("user_id"):
                raise DataError(f"events[{n}]: request_id {rid!r} is unknown, so user_id is required")
            row: dict[str, Any] = {
                "event_id": ev.get("event_id") or uuid.uuid4().hex,
                "event_type": kind,
                "timestamp": (_timestamp(ev["timestamp"], n) if ev.get("timestamp") else now).isoformat(),
                "user_id": ev.get("user_id") or (d.rec.user_id if d else None),
                "item_id": item,
                "session_id": ev.get("session_id"),
                "request_id": rid,
                "price": ev.get("price"),
                "order_value": ev.get("order_value"),
            }
            if d is not None:
                pos = next((s.position for s in d.rec.items if s.item_id == item), None)
                row.update({"policy_id": d.rec.policy_id, "variant": d.rec.variant, **d.rec.context})
                if pos is not None:
                    row["position"] = pos
                    row["propensity"] = d.rec.items[pos].propensity
                    if kind == "impression":  # what the model predicted, for the drift job's prediction tests
                        for name in ("score", "click_probability"):
                            value = float(getattr(d.rec.items[pos], name))
                            if math.isfinite(value):
                                row[name] = value
                    if row["price"] is None:
                        idx = d.variant.bundle.item_index.get(item)
                        row["price"] = None if idx is None else float(d.variant.bundle.item_price[idx])
                    learn.append((d, pos, kind))
            rows.append({key: value for key, value in row.items() if value is not None})
        if self.feedback_log is not None:
            self.feedback_log.append(rows)
        for r in rows:  # the user's next request sees what they just did
            if r["event_type"] in HISTORY_EVENT_TYPES and r.get("user_id") and r.get("item_id"):
                ts = pd.Timestamp(r["timestamp"]).value / 1e9
                self.histories.extend(str(r["user_id"]), [HistoryEntry(str(r["item_id"]), r["event_type"], ts)])
        self.feedback_events += len(rows)
        with self._window_lock:
            for r in rows:
                key = (str(r.get("variant") or "unattributed"), str(r["event_type"]))
                self._event_counts[key] = self._event_counts.get(key, 0) + 1
        for d, pos, kind in learn:
            if d.variant.online is not None:
                d.variant.online.submit(kind, d.features[pos], float(d.base[pos]))
        for d, _pos, kind in learn:  # per-variant outcomes, for the canary guardrail
            if kind == "impression":
                d.variant.stats.impressions += 1
            elif kind == "click":
                d.variant.stats.clicks += 1
        imps = sum(r["event_type"] == "impression" for r in rows)
        clicks = sum(r["event_type"] == "click" for r in rows)
        if imps or clicks:
            with self._window_lock:
                self._window.append((time.time(), imps, clicks))
        return rows

    def feedback_counts(self) -> dict[tuple[str, str], int]:
        """Feedback events this process logged since start, by (variant, event type); ``unattributed`` when the
        event had no known request id (the service's Prometheus counters count the same per worker)."""
        with self._window_lock:
            return dict(self._event_counts)

    def click_through_rate(self, window_s: float = 300.0) -> float:
        """Clicks per impression in the last ``window_s`` seconds (NaN without impressions)."""
        cutoff = time.time() - window_s
        with self._window_lock:
            self._window = [w for w in self._window if w[0] >= cutoff]
            imps = sum(w[1] for w in self._window)
            clicks = sum(w[2] for w in self._window)
        return clicks / imps if imps else float("nan")

    def learner_lag(self) -> int:
        """Feedback events queued for the online learners but not learned yet."""
        return sum(v.online.lag for v in self._variants.values() if v.online is not None)

    # ------------------------------------------------------------------ hot swap
    def warm_up(self, bundle: ServingBundle, requests: int | None = None) -> None:
        """Answer ``requests`` requests with ``bundle`` (known and unknown users); raise on a bad answer."""
        n = requests or self.config.warmup_requests
        users = list(bundle.user_index)[: max(1, n - 2)] + ["__warmup_unknown__"]
        probe = Variant("warmup", bundle, None)
        for i, user in enumerate(users[:n]):
            rec, _, _ = self._recommend_with(
                probe, user, None, min(10, self.config.max_k), None, None, f"warmup-{i}", i
            )
            scores = [s.score for s in rec.items] + [s.click_probability for s in rec.items]
            if not rec.items or not np.all(np.isfinite(scores)):
                raise DataError(f"bundle {bundle.version}: warm-up request for {user!r} gave no valid slate")

    def set_canary(self, bundle: ServingBundle | None, share: float = 0.0, salt: str = "canary") -> None:
        """Serve ``bundle`` as the canary to ``share`` of users (stable by a hash of the user id with ``salt``),
        or stop serving a canary (None). Every variant's stats restart, so both arms are compared over the same
        period. One reference assignment: a request sees the old or the new variants, whole."""
        new_variants = {n: v for n, v in self._variants.items() if n != CANARY}
        old = self._variants.get(CANARY)
        if bundle is not None:
            new_variants[CANARY] = self._variant(CANARY, bundle)
        for v in new_variants.values():
            v.stats = ArmStats()
        self.canary_share, self.canary_salt = (float(share), salt) if bundle is not None else (0.0, salt)
        self._variants = new_variants
        self.hold_served()
        if old is not None and old.online is not None:
            old.online.stop()

    def promote_canary_variant(self) -> None:
        """The canary variant becomes the champion (its bundle is loaded and warm already; no reload)."""
        canary = self._variants.get(CANARY)
        if canary is None:
            return
        old = self._variants[CHAMPION]
        new_variants = {n: v for n, v in self._variants.items() if n not in (CANARY, CHAMPION)}
        canary.name = CHAMPION
        new_variants[CHAMPION] = canary
        self.canary_share = 0.0
        self._variants = new_variants
        self.swaps += 1
        self.hold_served()
        if old.online is not None:
            old.online.stop()

    def check_for_new_champion(self) -> str:
        """One poll of the store's champion alias: ``unchanged``, ``swapped`` or ``rejected``."""
        if self.store is None:
            return "unchanged"
        state = self.store.alias()
        current = self.champion.version
        if state is None or state.version == current or state.version in self.rejected_versions:
            return "unchanged"
        with self._swap_lock:
            # Loading is Python-heavy and holds the GIL for long stretches; a short switch interval hands the
            # GIL back to request threads often, so requests keep flowing while the new bundle loads.
            interval = sys.getswitchinterval()
            sys.setswitchinterval(min(interval, 0.0005))
            self.hold_served(loading=[state.version])  # nobody deletes it while it loads
            try:
                info = self.store.resolve(state.version)
                bundle = load_bundle(local_bundle_path(self.store, info), info.version, self.config)
                self.warm_up(bundle)
                if self.config.warm_explanations:
                    try:
                        self.warm_explanations(bundle)
                    except Exception as exc:  # noqa: BLE001 - a slower first explanation is no reason to reject
                        log_event("explainer_warm_failed", logging.WARNING, version=bundle.version,
                                  reason=f"{type(exc).__name__}: {exc}")
            except Exception as exc:  # noqa: BLE001 - any failure rejects the bundle; the old one keeps serving
                self.rejected_versions[state.version] = f"{type(exc).__name__}: {exc}"
                log_event("swap_rejected", logging.ERROR, version=state.version, serving=current,
                          reason=self.rejected_versions[state.version])
                self._tell("swap_rejected")
                return "rejected"
            finally:
                sys.setswitchinterval(interval)
            old = self._variants[CHAMPION]
            new_variants = dict(self._variants)
            new_variants[CHAMPION] = self._variant(CHAMPION, bundle)
            self._variants = new_variants  # one reference assignment: requests see the old or the new, whole
            self.swaps += 1
            self.hold_served()
            if old.online is not None:
                old.online.stop()
            log_event("swap", version=bundle.version, previous=old.bundle.version, variant=CHAMPION,
                      items=len(bundle.item_ids))
            self._tell("swap")
            return "swapped"

    def start_watcher(self, interval_s: float | None = None) -> None:
        """Poll the store's alias in a background thread and hot-swap new champions."""
        if self._watcher is not None or self.store is None:
            return
        interval = interval_s or self.config.watch_interval_s

        def run() -> None:
            while not self._stop.wait(interval):
                try:
                    self.hold_served()  # refresh the lease
                    if self.canary is not None:
                        self.canary.step()
                    self.check_for_new_champion()
                except Exception:  # noqa: BLE001 - the watcher must survive a flaky store
                    log.exception("model watcher poll failed")

        self._watcher = threading.Thread(target=run, name="model-watcher", daemon=True)
        self._watcher.start()

    def rollback(self) -> str:
        """Move the store's champion alias back to the previous version and swap to it now."""
        if self.store is None:
            raise DataError("this recommender was not loaded from a model store: nothing to roll back to")
        current = self.champion.version
        self.store.rollback()
        outcome = self.check_for_new_champion()
        self.rollbacks += 1
        log_event("rollback", previous=current, version=self.champion.version, outcome=outcome)
        self._tell("rollback")
        return outcome

    def _tell(self, event: str) -> None:
        if self.on_event is not None:
            self.on_event(event)

    def close(self) -> None:
        """Stop the watcher and learners and close the feedback log."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(5)
        if self.store is not None and hasattr(self.store, "release"):
            try:
                self.store.release(self.lease_holder)
            except Exception as exc:  # noqa: BLE001 - the lease expires by itself
                log.warning("could not release the serving lease: %s", exc)
        for v in self._variants.values():
            if v.online is not None:
                v.online.stop()
        if self.feedback_log is not None:
            self.feedback_log.close()
        if self.shared_decisions is not None:
            self.shared_decisions.close()
        log_event("shutdown", model_version=self.champion.version, served=sum(
            v.served for v in self._variants.values()), feedback_events=self.feedback_events)

    # ------------------------------------------------------------------ explanations
    def warm_explanations(self, bundle: ServingBundle | None = None) -> float:
        """Explain one slate of ``bundle`` (default: the champion) and forget it, so that the first real
        explanation does not pay for importing SHAP and building the explainer. Returns the seconds it took."""
        from serving.explain import explain_slate

        b = bundle or self.champion
        started = time.perf_counter()
        user = next(iter(b.user_index), "__warmup_unknown__")
        rec, _, _ = self._recommend_with(
            Variant("warmup", b, None), user, None, min(10, self.config.max_k), None, None, "warmup-explain", 0
        )
        explain_slate(b, rec, background=self.config.explanation_background, seed=self.config.seed)
        seconds = time.perf_counter() - started
        log_event("explainer_warm", version=b.version, seconds=round(seconds, 3))
        return seconds

    def start_explainer_warmup(self) -> threading.Thread:
        """Run :meth:`warm_explanations` in a background thread (a failure is logged, never raised)."""

        def run() -> None:
            try:
                self.warm_explanations()
            except Exception as exc:  # noqa: BLE001 - explanations stay available, only slower the first time
                log_event("explainer_warm_failed", logging.WARNING, reason=f"{type(exc).__name__}: {exc}")

        thread = threading.Thread(target=run, name="explainer-warmup", daemon=True)
        thread.start()
        return thread

    def explain(self, request_id: str) -> dict[str, Any]:
        """SHAP attributions of the ranking model's score for each item of a served slate."""
        from serving.explain import explain_slate

        d = self._decision(request_id)
        if d is None:
            raise KeyError(request_id)
        return explain_slate(
            d.variant.bundle, d.rec, background=self.config.explanation_background, seed=self.config.seed
        )


def _timestamp(value: Any, n: int) -> pd.Timestamp:
    try:
        ts = pd.Timestamp(value)
    except (TypeError, ValueError) as exc:
        raise DataError(f"events[{n}].timestamp: not a date/time ({exc})") from None
    if ts is pd.NaT:
        raise DataError(f"events[{n}].timestamp: not a date/time")
    ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
    return ts.floor("ms")


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
