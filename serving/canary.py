"""The canary in a serving process: load the store's canary, route a share of users to it, decide, act.

:class:`CanaryController` is stepped by the model watcher (:meth:`serving.recommender.Recommender.start_watcher`)
or by a caller (the benchmark, tests). Each :meth:`CanaryController.step`:

1. follows the store's ``canary`` alias: a new canary is loaded and warmed up (a bundle that fails either --
   e.g. NaN scores, a transform graph that does not match the serving features -- is rolled back at once, with
   the error as the reason; :func:`bundle_consistency` refuses parts that do not belong together) and served
   to ``release.canary.share`` of users, stable by a hash of the user id;
   a canary decided elsewhere (``recflow models canary promote|abort``) is promoted or dropped here too;
2. asks the guardrail (:func:`recflow.release.canary_decision`) once ``decide_every`` more canary requests were
   served, with both arms' requests, errors, latency, impressions and clicks;
3. acts on ``promote`` (the store's champion moves to the canary; serving swaps the already-loaded bundle in,
   no reload) or ``rollback`` (the canary alias is removed, its users go back to the champion, the version is
   remembered as rejected), and records the decision: the store's decision log
   (``aliases/canary_decisions.jsonl``) and alias history, the MLflow registry aliases (when a tracking URI is
   given), the Prometheus metrics of :func:`register_metrics`, and the log.

Requests keep flowing throughout: the variants change by one reference assignment, and feedback for a slate
served by a rolled-back canary is still attributed and logged (the served decision keeps its variant).

**Several workers** (``recflow serve --workers N``): every worker runs a controller (stepped by its own canary
watcher) and serves the canary to the same users (the hash decides). Each publishes its arms' counts to the
workers' shared database (:class:`serving.decisions.SharedDecisions`); the guardrail sees their sum over the
workers, and exactly one worker decides -- the holder of the ``canary-decider`` lease there (renewed on every
step, taken over by another worker when it lapses, e.g. when its holder is rolled). The others follow the store
as for a decision taken by hand. A decider that takes over starts the guardrail's confidence sequences afresh
from the summed counts.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from typing import Any

from recflow import bundle_layout
from recflow.model_store import CANARY, ModelStore, normalize_version
from recflow.release import CanaryConfig, CanaryDecision, GuardrailState, canary_decision

log = logging.getLogger(__name__)


def bundle_consistency(bundle: Any) -> list[str]:
    """Why a loaded bundle's parts do not belong together (empty: they do): the transform's catalog
    (``transform/candidates.parquet``) must be the model's item set, and every input of the ranking model must be
    a raw feature the transform declares, with the same dtype. A bundle assembled from another run's transform
    serves wrong categories, prices and feature fills without failing any request, so it is refused here."""
    from pathlib import Path

    import pandas as pd

    problems: list[str] = []
    root = Path(bundle.path)
    try:
        path = root / bundle_layout.TRANSFORM_DIR / bundle_layout.CANDIDATES_FILE
        candidates = set(pd.read_parquet(path, columns=["item_id"])["item_id"].astype(str))
    except Exception as exc:  # noqa: BLE001 - an unreadable part is a mismatch too
        return [f"transform/candidates.parquet cannot be read: {exc}"]
    model_items = {str(i) for i in bundle.item_ids[: bundle.trained_items]}
    if candidates != model_items:
        problems.append(f"the transform's catalog ({len(candidates)} items, {len(candidates - model_items)} unknown "
                        f"to the model) is not the model's ({len(model_items)} items, "
                        f"{len(model_items - candidates)} missing from the transform): the transform graph does "
                        "not match the model")
    spec = bundle.feature_spec.get("raw_features")
    if isinstance(spec, str):  # written as a Python repr by the Transform step
        import ast

        try:
            spec = ast.literal_eval(spec)
        except (ValueError, SyntaxError):
            spec = None
    if bundle.ranking_fn is not None and isinstance(spec, dict):
        for name, tensor in bundle.ranking_fn.structured_input_signature[1].items():
            declared = spec.get(name)
            if declared is None:
                problems.append(f"the ranking model needs input {name!r}, which the transform does not declare")
            elif str(declared) != tensor.dtype.name:
                problems.append(f"ranking input {name!r}: the model takes {tensor.dtype.name}, the transform "
                                f"declares {declared}")
    return problems


class CanaryController:
    """Runs the canary of one serving process (see the module docstring)."""

    def __init__(self, recommender: Any, store: ModelStore, config: CanaryConfig, *,
                 tracking_uri: str | None = None, model_name: str | None = None, shared: Any = None,
                 worker: str | None = None, lease_s: float = 30.0) -> None:
        self.rec = recommender
        self.shared = shared  # serving.decisions.SharedDecisions of the service's workers (None: one process)
        self.worker = worker or f"pid{id(self):x}"
        self.lease_s = lease_s
        self.store = store
        self.config = config
        self.tracking_uri = tracking_uri
        self.model_name = model_name
        self.version: str | None = None  # the canary being served
        self.state = GuardrailState()
        self.last_decision: CanaryDecision | None = None
        self.decisions: Counter[str] = Counter()
        self.requests_at_last_check = 0
        self.started_at: float | None = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ following the store
    def _load(self, version: str) -> str:
        from serving.watcher import load_bundle, local_bundle_path

        info = self.store.bundle(version)
        self.rec.hold_served(loading=[version])
        try:
            bundle = load_bundle(local_bundle_path(self.store, info), info.version, self.rec.config)
            problems = bundle_consistency(bundle)
            if problems:
                from recflow.errors import DataError

                raise DataError("; ".join(problems))
            self.rec.warm_up(bundle)
        except Exception as exc:  # noqa: BLE001 - any failure rejects the canary; the champion keeps serving
            reason = f"rejected at load: {type(exc).__name__}: {exc}"
            self.rec.rejected_versions[version] = reason
            self._record("rollback", version, [reason], {})
            self.store.abort_canary(reason, {"canary_requests": 0}, expected=version)
            self._sync_registry()
            return "rejected"
        self.rec.set_canary(bundle, self.config.share, self.config.salt)
        self.version, self.state, self.requests_at_last_check = version, GuardrailState(), 0
        self.started_at = time.time()
        log.info("canary %s now serves %.0f%% of users", version, 100 * self.config.share)
        return "started"

    def step(self) -> str:
        """Follow the store and decide once enough new canary requests came in; returns what happened:
        ``idle``, ``started``, ``rejected``, ``continue``, ``promote``, ``rollback``, ``dropped``."""
        with self._lock:
            state = self.store.alias(CANARY)
            if state is None:
                if self.version is None:
                    return "idle"
                # decided elsewhere (the CLI, another replica): follow the store
                champion = self.store.alias()
                version, self.version = self.version, None
                if champion is not None and champion.version == version:
                    self.rec.promote_canary_variant()
                    return "promote"
                self.rec.set_canary(None)
                return "dropped"
            if state.version != self.version:
                if self.version is not None:
                    self.rec.set_canary(None)
                    self.version = None
                if state.version in self.rec.rejected_versions:
                    return "idle"
                return self._load(state.version)
            return self._decide()

    def _arms(self) -> tuple[Any, Any]:
        variants = self.rec.variants
        return variants["champion"].stats, variants[CANARY].stats

    def _shared_arms(self) -> tuple[Any, Any] | None:
        """With several workers: publish this worker's counts, and the sums over every worker when this worker
        is the one that decides (None when another one is)."""
        assert self.shared is not None and self.version is not None
        champion, canary = self._arms()
        self.shared.publish_arms(self.worker, self.version, {"champion": champion, CANARY: canary})
        if not self.shared.claim("canary-decider", self.worker, self.lease_s):
            return None
        summed = self.shared.summed_arms(self.version)
        return summed.get("champion", champion), summed.get(CANARY, canary)

    def _decide(self, force: bool = False) -> str:
        if self.shared is not None:
            arms = self._shared_arms()
            if arms is None:
                return "continue"  # another worker decides; this one follows the store
            champion, canary = arms
        else:
            champion, canary = self._arms()
        if not force and canary.requests - self.requests_at_last_check < self.config.decide_every:
            return "continue"
        self.requests_at_last_check = canary.requests
        decision = canary_decision(champion, canary, self.config, self.state)
        self.last_decision = decision
        if decision.action == "continue":
            return "continue"
        version = self.version
        assert version is not None
        stats = {"canary": canary.to_dict(), "champion": champion.to_dict(), "intervals": decision.intervals}
        reason = "; ".join(decision.reasons)
        if decision.action == "promote":
            if self.store.promote_canary(reason, stats, expected=version) is not None:
                self.rec.promote_canary_variant()
        else:
            self.rec.rejected_versions[version] = f"canary rolled back: {reason}"
            self.store.abort_canary(reason, stats, expected=version)
            self.rec.set_canary(None)
        self.version = None
        self._record(decision.action, version, decision.reasons, stats)
        self._sync_registry()
        return decision.action

    def _record(self, action: str, version: str, reasons: list[str], stats: dict[str, Any]) -> None:
        self.decisions[action] += 1
        log.warning("canary %s: %s (%s)", version, action, "; ".join(reasons))

    def _sync_registry(self) -> None:
        if not self.tracking_uri or not self.model_name:
            return
        from recflow.model_store import sync_canary_registry
        from serving.pyfunc import write_pyfunc_model

        try:
            sync_canary_registry(self.tracking_uri, self.store, self.model_name, model_writer=write_pyfunc_model)
        except Exception as exc:  # noqa: BLE001 - the store is the truth; a registry outage must not stop serving
            log.warning("MLflow registry aliases not synced after the canary decision: %s", exc)

    # ------------------------------------------------------------------ by hand
    def status(self) -> dict[str, Any]:
        """The running canary and both arms' numbers (for the CLI and the HTTP admin endpoint)."""
        out: dict[str, Any] = {"canary": self.version, "share": self.config.share if self.version else 0.0,
                               "decisions": dict(self.decisions)}
        if self.version is not None:
            champion, canary = self._arms()
            out.update(champion_stats=champion.to_dict(), canary_stats=canary.to_dict())
        if self.last_decision is not None:
            out["last_decision"] = self.last_decision.to_dict()
        return out


def canary_status(store: ModelStore) -> dict[str, Any]:
    """What the store says about the canary: the running one (version, champion it would replace, since when)
    and the decisions so far, newest last."""
    state = store.alias(CANARY)
    champion = store.alias()
    return {
        "canary": None if state is None else {"version": state.version, "replaces": state.previous,
                                              "since": state.moved_at},
        "champion": champion.version if champion else None,
        "decisions": store.canary_decisions(),
    }


def decide_by_hand(store: ModelStore, action: str, reason: str, *, version: str | None = None) -> str:
    """``promote`` or ``abort`` the store's canary by hand (``recflow models canary promote|abort``); serving
    follows on its next poll. Returns the version acted on."""
    from recflow.errors import DataError

    state = store.alias(CANARY)
    if state is None:
        raise DataError(f"model store {store.root}: no canary is running (nothing to {action})")
    expected = normalize_version(version) if version else state.version
    if expected != state.version:
        raise DataError(f"model store {store.root}: the canary is {state.version}, not {expected}")
    stats = {"by_hand": True}
    done: object
    if action == "promote":
        done = store.promote_canary(f"by hand: {reason}", stats, expected=expected)
    elif action == "abort":
        done = store.abort_canary(f"by hand: {reason}", stats, expected=expected)
    else:
        raise DataError(f"canary action {action!r}: expected promote or abort")
    if done is None:
        raise DataError(f"model store {store.root}: the canary changed while deciding; check `models canary status`")
    return expected


def register_metrics(registry: Any, controller_ref: Any) -> None:
    """Export the canary's state on a Prometheus ``registry``: ``recflow_canary_active`` (1 while a canary
    serves), ``recflow_canary_share``, ``recflow_canary_requests`` and ``recflow_canary_decisions_total``
    (by ``decision``: promote, rollback, which the alert rules watch)."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    class _Collector:
        def collect(self) -> Any:
            controller = controller_ref()
            active = GaugeMetricFamily("recflow_canary_active", "1 while a canary serves a share of users")
            share = GaugeMetricFamily("recflow_canary_share", "Share of users the canary serves")
            requests = GaugeMetricFamily("recflow_canary_requests", "Requests served by the running canary")
            decisions = CounterMetricFamily("recflow_canary_decisions", "Canary decisions by outcome",
                                            labels=["decision"])
            running = controller is not None and controller.version is not None
            active.add_metric([], 1.0 if running else 0.0)
            share.add_metric([], controller.config.share if running else 0.0)
            n = controller.rec.variants[CANARY].stats.requests if running and CANARY in controller.rec.variants \
                else 0
            requests.add_metric([], float(n))
            for name in ("promote", "rollback"):
                decisions.add_metric([name], float(controller.decisions.get(name, 0) if controller else 0))
            yield from (active, share, requests, decisions)

    registry.register(_Collector())
