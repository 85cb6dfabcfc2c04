"""The in-process recommendation API; the HTTP service (:mod:`serving.app`) is a thin layer over it.

    from serving import Recommender
    rec = Recommender.load("data/models")          # the champion of a model store
    out = rec.recommend("u000001", context={"hour": 20, "device": "mobile"}, k=10)
    out.items[0].item_id, out.items[0].propensity, out.request_id, out.variant

One request (:mod:`serving.slates`, the request path): retrieval (numpy inner products, exact top-M) -> ranking
model (numpy) on the M candidates -> the best ``ranked_candidates`` by click probability -> the policy (exported
TF-Agents policy + online LinUCB correction, :class:`recflow.policy.online.OnlineLinUCB`) fills ``k`` slots
epsilon-greedily and reports each slot's propensity.

A user's history (:mod:`serving.history`) is the request's ``history`` when it has one, else what the bundle
stored for the user plus the events the user posted back as feedback. With a sequence bundle every user with a
history -- known or new -- is served from it (the numpy sequence encoder); with a two-tower bundle a known user
has their trained embedding and an unknown user the query tower's output for their context, blended with the
history. Only an unknown user with no history at all is a cold start: a log-popularity prior and
``cold_start_epsilon`` exploration.

:class:`Recommender` puts the parts together: the A/B (and canary) variants and request ids here, the feedback
sink (:mod:`serving.feedback`: served slates, feedback log, learners), the model watcher (:mod:`serving.watcher`:
hot swap, rollback, leases) and explanations (:mod:`serving.explain`); see docs/serving.md.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from recflow.errors import DataError
from recflow.policy.online import OnlineLinUCB
from recflow.release import ArmStats
from serving.baseline_bundle import BaselineBundle
from serving.bundle import ServingBundle
from serving.config import ServingConfig
from serving.decisions import SharedDecisions
from serving.feedback import FEEDBACK_TYPES, FeedbackSink
from serving.feedback_log import FeedbackLog
from serving.history import HistoryEntry, UserHistories, parse_history
from serving.logs import log_event
from serving.slates import (
    Decision,
    Recommendation,
    RecommendedItem,
    Variant,
    ab_bucket,
    compute_slate,
    epsilon_greedy_slate,
    retrieve,
    top_rows,
)
from serving.watcher import ModelWatcher, load_bundle, local_bundle_path

__all__ = [
    "CANARY", "CHALLENGER", "CHAMPION", "FEEDBACK_TYPES", "Recommendation", "RecommendedItem", "Recommender",
    "Variant", "ab_bucket", "epsilon_greedy_slate", "limit_threads", "load_bundle", "local_bundle_path",
]

log = logging.getLogger(__name__)

CHAMPION, CHALLENGER, CANARY = "champion", "challenger", "canary"


def limit_threads(config: ServingConfig) -> None:
    """Pin BLAS and TensorFlow thread pools for a serving process (call before loading any bundle).

    One request is a single matrix-vector product and a small model call: extra threads only add
    synchronisation, and under load they compete with the requests themselves. Also sets the interpreter's
    thread switch interval (``serving.switch_interval_ms``) and starts TensorFlow's runtime (its thread pools
    are created now, by the calling thread, with its CPU priority: see
    :func:`serving.workers.load_at_low_priority`).
    """
    import sys

    if config.switch_interval_ms is not None:
        sys.setswitchinterval(config.switch_interval_ms / 1000.0)
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
    tf.constant(0).numpy()  # the eager runtime and its thread pools start now, on this thread


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
        self.on_event: Callable[[str], None] | None = None  # told "swap", "rollback", "swap_rejected"
        self.store = store
        self.catalog = catalog
        self.reward_weights = dict(reward_weights or {"click": 1.0, "add_to_cart": 2.0, "purchase": 5.0})
        self.histories = UserHistories(self.config.history_length, self.config.history_users)
        self.feedback = FeedbackSink(self.config.request_cache_size, self.histories, feedback_log, shared_decisions)
        self.watcher = ModelWatcher(self, store)
        self._variants: dict[str, Variant] = {CHAMPION: self._variant(CHAMPION, champion)}
        if challenger is not None:
            self._variants[CHALLENGER] = self._variant(CHALLENGER, challenger)
        self._counter = 0
        self._counter_lock = threading.Lock()
        self._id_pool, self._id_pos = b"", 0  # random bytes of the next request ids (_next_request_id)
        self._closed = False
        self.canary_share = 0.0
        self.canary_salt = "canary"
        self.canary: Any = None  # a serving.canary.CanaryController, stepped by the model watcher

    # ------------------------------------------------------------------ construction
    def _variant(self, name: str, bundle: ServingBundle) -> Variant:
        if self.catalog is not None:
            bundle.add_items(self.catalog)
        online = None
        if self.config.online_learning and not isinstance(bundle, BaselineBundle):
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
        :class:`serving.canary.CanaryController` (stepped by the model watcher; with several workers their
        counts are summed through ``shared_decisions`` and one of them decides)."""
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

            rec.canary = CanaryController(rec, store, canary, shared=shared, worker=worker,
                                          lease_s=3 * config.watch_interval_s)
            rec.canary.step()  # a canary already running: serve it from the start
        return rec

    # ------------------------------------------------------------------ parts, for callers of the former API
    @property
    def feedback_log(self) -> FeedbackLog | None:
        return self.feedback.feedback_log

    @property
    def shared_decisions(self) -> SharedDecisions | None:
        return self.feedback.shared

    @property
    def feedback_events(self) -> int:
        return self.feedback.events

    @property
    def rejected_versions(self) -> dict[str, str]:
        return self.watcher.rejected_versions

    @property
    def swaps(self) -> int:
        return self.watcher.swaps

    @property
    def rollbacks(self) -> int:
        return self.watcher.rollbacks

    @property
    def lease_holder(self) -> str:
        return self.watcher.lease_holder

    def hold_served(self, loading: Sequence[str] = ()) -> None:
        """Lease the served versions (and ``loading``): :meth:`serving.watcher.ModelWatcher.hold_served`."""
        self.watcher.hold_served(loading)

    # ------------------------------------------------------------------ variants
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

    def replace_champion(self, bundle: ServingBundle) -> str:
        """Serve ``bundle`` as the champion (one reference assignment: requests see the old or the new
        variants, whole); returns the previous champion's version."""
        old = self._variants[CHAMPION]
        new_variants = dict(self._variants)
        new_variants[CHAMPION] = self._variant(CHAMPION, bundle)
        self._variants = new_variants
        if old.online is not None:
            old.online.stop()
        return old.bundle.version

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
        self.watcher.swaps += 1
        self.hold_served()
        if old.online is not None:
            old.online.stop()

    # ------------------------------------------------------------------ recommending
    def _next_request_id(self) -> tuple[str, int]:
        """A fresh request id (32 random hex digits, like ``uuid4().hex``: unguessable, since it is the handle of
        a served slate's explanation) and the request's sequence number. The random bytes are drawn from the OS
        4 KiB at a time: one system call per 256 requests instead of one each (a system call on the request
        thread hands the interpreter lock to the event loop and waits to get it back)."""
        with self._counter_lock:
            self._counter += 1
            n = self._counter
            if self._id_pos >= len(self._id_pool):
                self._id_pool, self._id_pos = os.urandom(4096), 0
            raw = self._id_pool[self._id_pos : self._id_pos + 16]
            self._id_pos += 16
        return raw.hex(), n

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
            rec, feats, base = compute_slate(
                chosen, self.config, self.histories, str(user_id), context, k, entries or None, exclude,
                request_id, n,
            )
        except Exception:
            chosen.stats.add_request((time.perf_counter() - started) * 1000.0, error=True)
            raise
        chosen.stats.add_request((time.perf_counter() - started) * 1000.0)
        chosen.served += 1
        self.feedback.remember(Decision(rec, chosen, feats, base))
        return rec

    def retrieve(
        self,
        b: ServingBundle,
        user_id: str,
        ctx: Mapping[str, Any],
        history: Sequence[str | HistoryEntry] | None,
        exclude: Sequence[str] | None,
    ) -> tuple[np.ndarray, np.ndarray | None, bool]:
        """:func:`serving.slates.retrieve` with this recommender's config and users' histories."""
        return retrieve(b, self.config, self.histories, user_id, ctx, history, exclude)

    def _top(
        self, b: ServingBundle, query: np.ndarray, exclude: Sequence[str] | None, prior: float = 0.0
    ) -> np.ndarray:
        return top_rows(b, self.config, query, exclude, prior)

    # ------------------------------------------------------------------ feedback
    def decision(self, request_id: str) -> Recommendation | None:
        """The slate served under ``request_id`` (if still remembered)."""
        d = self.feedback.decision(request_id, self._variants)
        return None if d is None else d.rec

    def record_feedback(self, events: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Validate, enrich from the served slate, append durably to the feedback log, and queue for learning
        (:meth:`serving.feedback.FeedbackSink.record`). Returns the logged events; raises :class:`DataError`
        naming the event index and field for a bad event (nothing is logged then)."""
        return self.feedback.record(events, self._variants)

    def feedback_counts(self) -> dict[tuple[str, str], int]:
        """Feedback events this process logged since start, by (variant, event type); ``unattributed`` when the
        event had no known request id (the service's Prometheus counters count the same per worker)."""
        return self.feedback.counts()

    def click_through_rate(self, window_s: float = 300.0) -> float:
        """Clicks per impression in the last ``window_s`` seconds (NaN without impressions)."""
        return self.feedback.click_through_rate(window_s)

    def learner_lag(self) -> int:
        """Feedback events queued for the online learners but not learned yet."""
        return sum(v.online.lag for v in self._variants.values() if v.online is not None)

    # ------------------------------------------------------------------ hot swap (serving.watcher)
    def warm_up(self, bundle: ServingBundle, requests: int | None = None) -> None:
        """Precompute ``bundle``'s cold-start queries (:meth:`ServingBundle.precompute_cold_queries`), then answer
        ``requests`` requests with it (known and unknown users); raise on a bad answer."""
        if not isinstance(bundle, BaselineBundle):
            bundle.precompute_cold_queries()
        n = requests or self.config.warmup_requests
        users = list(bundle.user_index)[: max(1, n - 2)] + ["__warmup_unknown__"]
        probe = Variant("warmup", bundle, None)
        for i, user in enumerate(users[:n]):
            rec, _, _ = compute_slate(probe, self.config, self.histories, user, None, min(10, self.config.max_k),
                                      None, None, f"warmup-{i}", i)
            scores = [s.score for s in rec.items] + [s.click_probability for s in rec.items
                                                     if s.click_probability is not None]
            if not rec.items or not np.all(np.isfinite(scores)):
                raise DataError(f"bundle {bundle.version}: warm-up request for {user!r} gave no valid slate")

    def check_for_new_champion(self) -> str:
        """One poll of the store's champion alias: ``unchanged``, ``swapped`` or ``rejected``."""
        return self.watcher.check_for_new_champion()

    def start_watcher(self, interval_s: float | None = None, *, swap: bool = True) -> None:
        """Poll the store's alias in a background thread and hot-swap new champions (``swap``; see
        :meth:`serving.watcher.ModelWatcher.start`)."""
        self.watcher.start(interval_s or self.config.watch_interval_s, swap=swap)

    def rollback(self) -> str:
        """Move the store's champion alias back to the previous version and swap to it now."""
        return self.watcher.rollback()

    def tell(self, event: str) -> None:
        """Pass a model event (``swap``, ``rollback``, ``swap_rejected``) to :attr:`on_event`."""
        if self.on_event is not None:
            self.on_event(event)

    def close(self) -> None:
        """Stop the watcher and learners and close the feedback log."""
        if self._closed:
            return
        self._closed = True
        self.watcher.stop()
        for v in self._variants.values():
            if v.online is not None:
                v.online.stop()
        self.feedback.close()
        log_event("shutdown", model_version=self.champion.version, served=sum(
            v.served for v in self._variants.values()), feedback_events=self.feedback.events)

    # ------------------------------------------------------------------ explanations
    def warm_explanations(self, bundle: ServingBundle | None = None) -> float:
        """Explain one slate of ``bundle`` (default: the champion) and forget it, so that the first real
        explanation does not pay for importing SHAP and building the explainer. Returns the seconds it took."""
        from serving.explain import explain_slate

        b = bundle or self.champion
        if isinstance(b, BaselineBundle):
            return 0.0  # nothing to explain: a baseline has no ranking model
        started = time.perf_counter()
        user = next(iter(b.user_index), "__warmup_unknown__")
        rec, _, _ = compute_slate(Variant("warmup", b, None), self.config, self.histories, user, None,
                                  min(10, self.config.max_k), None, None, "warmup-explain", 0)
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

        d = self.feedback.decision(request_id, self._variants)
        if d is None:
            raise KeyError(request_id)
        if isinstance(d.variant.bundle, BaselineBundle):
            raise DataError(f"request {request_id} was served by the baseline {d.variant.bundle.label} "
                            f"(model {d.variant.bundle.version}): a count has no features to explain")
        return explain_slate(
            d.variant.bundle, d.rec, background=self.config.explanation_background, seed=self.config.seed
        )
