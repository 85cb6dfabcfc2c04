"""Where does the RL policy lose its headroom over collaborative filtering: the features, or the data?

    .venv/bin/python benchmarks/policy/headroom.py [--seeds 20] [--requests 300] [--train-requests 50000]
    .venv/bin/python benchmarks/policy/headroom.py --quick        # about 15 s, to check the script

The benchmark's own world (``run_benchmark.world_config(False)``, seed 7), ALS model and
:class:`recflow.policy.environment.CandidateFeaturizer`. Experience comes from fresh ``ShopEnv`` traffic seeds
(20000 + k, disjoint from the evaluation seeds 0..seeds-1), 300 requests per seed like the evaluation, with a
behaviour that shows a uniformly random slate of the 40 candidates or the CF top 5 (half and half). Then:

1. **feature-limited ceiling**: models fitted on features -> logit of the TRUE attraction probability
   (``ShopEnv.attraction_probabilities``) of the candidates of up to ``--train-requests`` requests;
2. **data-limited**: the same models fitted on ``--sizes`` requests with the true probabilities as labels, and
   with what a learner really observes (the shown items' clicks, position as a feature, served at position 0);
3. **missing features**: the best model family refitted with one extra column at a time: the world's true
   components of the logit (diagnostics: no shop observes them) and observable proxies a shop could compute
   (the user's per-category click rate and price taste in the training log, a cross-session decayed record of the
   categories shown to the user).

Each fitted model is served as a :class:`ScoreSlatePolicy` (top 5 of the same 40 candidates) on the benchmark's
evaluation protocol (seeds x requests, each policy its own fresh ``ShopEnv(seed=s)``), beside collaborative
filtering and the click oracle; per-seed CTRs are compared with collaborative filtering's by
``recflow.evaluation.significance.paired_tests``. Writes benchmarks/results/policy_headroom.json.
"""

from __future__ import annotations

import os

# One OpenMP thread unless told otherwise: gradient-boosting prediction on 40 rows per request is ~10x slower
# with a thread team on a shared 2-core machine (set before numpy/sklearn load their OpenMP runtimes).
os.environ.setdefault("OMP_NUM_THREADS", "1")

import recflow  # noqa: E402,F401  (legacy Keras before TensorFlow)

# isort: split

import argparse
import json
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from run_benchmark import world_config  # noqa: E402

from recflow.baselines import ALSRecommender  # noqa: E402
from recflow.evaluation.significance import paired_tests  # noqa: E402
from recflow.io import atomic_path  # noqa: E402
from recflow.policy.config import DeepRLConfig  # noqa: E402
from recflow.policy.environment import CandidateFeaturizer, ShopPyEnvironment  # noqa: E402
from recflow.policy.simulator_evaluation import ScoreSlatePolicy, run_policy  # noqa: E402
from recflow.simulator import ShopEnv, SimulatorConfig, simulate_log  # noqa: E402
from recflow.simulator.world import World  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
TRAIN_SEED0 = 20_000
CHUNK = 300  # requests per training traffic seed (the evaluation's length: day 0, fresh satiation)
HALF_LIFE_H = 12.0  # the decay the cross-session exposure proxy uses
#: The world's true components of the attraction logit (diagnostic columns; no shop observes them).
ORACLE_COLUMNS = ("true_category_preference", "true_factor_affinity", "true_price_term", "true_context_term",
                  "true_item_static", "true_satiation_term")
#: Observable proxies a shop could compute from its log and its own traffic.
PROXY_COLUMNS = ("log_user_category_ctr", "log_user_price_taste", "cross_session_exposure")


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


@dataclass
class Bench:
    """The benchmark's world, ALS retrieval model and featurizer, plus the log-derived proxy tables."""

    cfg: SimulatorConfig
    world: World
    events: pd.DataFrame
    featurizer: CandidateFeaturizer
    user_cat_logodds: np.ndarray  # [users, categories] smoothed log-odds of a click in the training log
    user_price_taste: np.ndarray  # [users] mean log price ratio of clicked minus shown items in the log


def build(quick: bool) -> Bench:
    """The same world, log, ALS and featurizer as benchmarks/policy/run_benchmark.py."""
    cfg = world_config(quick)
    log = simulate_log(cfg)
    events, world = log.events, log.world
    als = ALSRecommender(factors=16, iterations=10, regularization=5.0, seed=cfg.seed).fit(
        events, world.items_frame(day=0))
    rl = DeepRLConfig(train_requests=2000, warmup_requests=300, epsilon_decay_steps=1000)
    featurizer = CandidateFeaturizer(ShopEnv(cfg, seed=10_000, world=world), als, events, rl)
    logodds, taste = log_proxies(world, events)
    return Bench(cfg, world, events, featurizer, logodds, taste)


def log_proxies(world: World, events: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Per (user, category) smoothed click log-odds and per-user price taste, from the training log only."""
    ev = events[events["event_type"].isin(["impression", "click"])]
    u = pd.Index(world.user_ids).get_indexer(ev["user_id"].astype(str))
    i = pd.Index(world.item_ids).get_indexer(ev["item_id"].astype(str))
    ok = (np.asarray(u) >= 0) & (np.asarray(i) >= 0)
    u, i, kind = np.asarray(u)[ok], np.asarray(i)[ok], ev["event_type"].to_numpy()[ok]
    cat = world.item_category[i]
    shape = (world.n_users, world.n_categories)
    imp, clk = np.zeros(shape), np.zeros(shape)
    np.add.at(imp, (u[kind == "impression"], cat[kind == "impression"]), 1.0)
    np.add.at(clk, (u[kind == "click"], cat[kind == "click"]), 1.0)
    prior = clk.sum() / max(imp.sum(), 1.0)
    strength = 10.0
    rate = (clk + strength * prior) / (imp + strength)
    logodds = np.log(rate / (1 - rate)) - np.log(prior / (1 - prior))
    ratio = np.log(world.prices(0)[i] / world.category_reference_price[cat])
    taste = np.zeros(world.n_users)
    for mask, sign in ((kind == "click", 1.0), (kind == "impression", -1.0)):
        s, n = np.zeros(world.n_users), np.zeros(world.n_users)
        np.add.at(s, u[mask], ratio[mask])
        np.add.at(n, u[mask], 1.0)
        taste += sign * np.where(n > 0, s / np.maximum(n, 1.0), 0.0)
    return logodds, taste


class ExposureTracker:
    """Per-user category exposure across sessions (shown share per slate + slate-level clicks), decayed with a
    ``HALF_LIFE_H`` half-life on the request timestamps: what the shop can record of the user's satiation."""

    def __init__(self, n_users: int, n_categories: int, item_category: np.ndarray) -> None:
        self.value = np.zeros((n_users, n_categories))
        self.last_ms = np.zeros(n_users, dtype=np.int64)
        self.item_category = item_category

    def at(self, user: int, now_ms: int) -> np.ndarray:
        if self.last_ms[user]:
            self.value[user] *= 0.5 ** ((now_ms - self.last_ms[user]) / 3.6e6 / HALF_LIFE_H)
        self.last_ms[user] = now_ms
        return self.value[user]

    def observe(self, env: ShopPyEnvironment, slate: np.ndarray, result: Any) -> None:
        cat = self.item_category[env.candidate_items[slate]]
        u = result.observation.user_idx
        add = np.bincount(cat, minlength=self.value.shape[1]) / len(cat)
        self.value[u] += add * (1.0 + float(result.info["clicks"]))


def _ms(obs: Any) -> int:
    return int(obs.timestamp.value // 1_000_000)


def extra_columns(bench: Bench, env: ShopPyEnvironment, tracker: ExposureTracker) -> dict[str, np.ndarray]:
    """The diagnostic (true) and proxy columns of the current request's candidates."""
    w, obs, items = bench.world, env.observation, env.candidate_items
    assert obs is not None
    c = w.config
    u, cat, day = obs.user_idx, w.item_category[items], obs.day
    log_ratio = np.log(w.prices(day)[items] / w.category_reference_price[cat])
    pref = w.preferences(day)[u, cat]
    aff = c.latent_weight * (w.item_factors[items] @ w.user_factors[u]) / np.sqrt(c.latent_dim)
    price = -w.user_price_sensitivity[u] * log_ratio
    device = c.devices.index(obs.device) if isinstance(obs.device, str) else int(obs.device)
    ctx = (w.daypart_effect[obs.hour // 6, cat] + (w.weekend_effect[cat] if obs.weekday >= 5 else 0.0)
           + w.device_click_effect[device])
    static = c.quality_weight * w.item_quality[items] + c.popularity_weight * w.popularity_z[items]
    p = env.env.attraction_probabilities(items)
    logit = np.log(p / (1 - p))
    sat = logit - (w.click_intercept + pref + aff + price + ctx + static)  # what is left: -lambda * satiation
    return {
        "true_category_preference": pref, "true_factor_affinity": aff, "true_price_term": price,
        "true_context_term": np.broadcast_to(ctx, items.shape).astype(float), "true_item_static": static,
        "true_satiation_term": sat,
        "log_user_category_ctr": bench.user_cat_logodds[u, cat],
        "log_user_price_taste": bench.user_price_taste[u] * log_ratio,
        "cross_session_exposure": tracker.at(u, _ms(obs))[cat],
    }


@dataclass
class Experience:
    """Rows of the candidates of each training request: features, extra columns, the true logit; and the shown
    rows with their click and position."""

    request: list[np.ndarray] = field(default_factory=list)
    x: list[np.ndarray] = field(default_factory=list)
    extra: list[np.ndarray] = field(default_factory=list)
    logit: list[np.ndarray] = field(default_factory=list)
    s_request: list[np.ndarray] = field(default_factory=list)
    s_x: list[np.ndarray] = field(default_factory=list)
    s_extra: list[np.ndarray] = field(default_factory=list)
    s_pos: list[np.ndarray] = field(default_factory=list)
    s_click: list[np.ndarray] = field(default_factory=list)

    def arrays(self) -> dict[str, np.ndarray]:
        return {k: np.concatenate(v) for k, v in self.__dict__.items()}


EXTRA = (*ORACLE_COLUMNS, *PROXY_COLUMNS)


def collect(bench: Bench, requests: int, rows_per_request: int, seed: int) -> dict[str, np.ndarray]:
    """``requests`` requests of behaviour traffic (uniform random slate or CF top 5, half and half) in chunks of
    ``CHUNK`` requests on fresh traffic seeds ``TRAIN_SEED0 + k``; ``rows_per_request`` random candidates per
    request keep their true logit, the 5 shown keep their click."""
    fz, w, cfg = bench.featurizer, bench.world, bench.cfg
    rng = np.random.default_rng(seed)
    exp = Experience()
    done, chunk = 0, 0
    while done < requests:
        env = ShopPyEnvironment(ShopEnv(cfg, seed=TRAIN_SEED0 + chunk, world=w, record_events=True), fz,
                                seed=TRAIN_SEED0 + chunk)
        tracker = ExposureTracker(w.n_users, w.n_categories, w.item_category)
        step = env.reset()
        for _ in range(min(CHUNK, requests - done)):
            obs = env.observation
            assert obs is not None
            x = env.features.copy()
            cols = extra_columns(bench, env, tracker)
            extra = np.stack([cols[c] for c in EXTRA], axis=1).astype(np.float32)
            p = env.env.attraction_probabilities(env.candidate_items)
            m = len(env.candidate_items)
            keep = rng.choice(m, size=min(rows_per_request, m), replace=False)
            exp.request.append(np.full(len(keep), done))
            exp.x.append(x[keep])
            exp.extra.append(extra[keep])
            exp.logit.append(np.log(p[keep] / (1 - p[keep])).astype(np.float32))
            if rng.random() < 0.5:
                slate = rng.choice(m, size=env.slate_size, replace=False)
            else:
                u = obs.user_idx
                s = fz.cf_scores(u, env.candidate_items) if fz.user_known[u] else fz.popularity[env.candidate_items]
                slate = np.argsort(-s, kind="stable")[: env.slate_size]
            step = env.step(slate.astype(np.int32))
            result = env.last_result
            assert result is not None and result.events is not None
            ev = result.events
            clicked = set(pd.to_numeric(ev.loc[ev["event_type"] == "click", "position"]).astype(int).tolist())
            tracker.observe(env, slate, result)
            exp.s_request.append(np.full(len(slate), done))
            exp.s_x.append(x[slate])
            exp.s_extra.append(extra[slate])
            exp.s_pos.append(np.arange(len(slate), dtype=np.float32))
            exp.s_click.append(np.array([k in clicked for k in range(len(slate))], dtype=np.float32))
            done += 1
            if step.is_last():
                step = env.reset()
        chunk += 1
    return exp.arrays()


# ---------------------------------------------------------------- models

Model = Callable[[np.ndarray], np.ndarray]


def fit_regressor(kind: str, x: np.ndarray, y: np.ndarray, seed: int) -> Model:
    """features -> true logit."""
    from sklearn.ensemble import HistGradientBoostingRegressor
    from sklearn.linear_model import Ridge
    from sklearn.neural_network import MLPRegressor
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if kind == "linear":
        model: Any = make_pipeline(StandardScaler(), Ridge(alpha=1.0))
    elif kind == "gbdt":
        model = HistGradientBoostingRegressor(max_iter=300, learning_rate=0.1, max_leaf_nodes=63,
                                              min_samples_leaf=40, early_stopping=True, random_state=seed)
    elif kind == "mlp":
        model = make_pipeline(StandardScaler(), MLPRegressor(hidden_layer_sizes=(64, 32), max_iter=30,
                                                             early_stopping=True, random_state=seed))
    else:
        raise ValueError(f"unknown model kind {kind!r} (linear, gbdt, mlp)")
    model.fit(x, y)
    return lambda f: np.asarray(model.predict(f), dtype=float)


def fit_click_model(kind: str, x: np.ndarray, pos: np.ndarray, click: np.ndarray, seed: int) -> Model:
    """Shown rows' features + position -> click; served at position 0 (the ranking ignores the position)."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    xp = np.concatenate([x, np.eye(5, dtype=np.float32)[pos.astype(int)]], axis=1)
    if kind == "linear":
        model: Any = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=500))
    elif kind == "gbdt":
        model = HistGradientBoostingClassifier(max_iter=200, learning_rate=0.05, max_leaf_nodes=15,
                                               min_samples_leaf=50, l2_regularization=1.0, early_stopping=True,
                                               random_state=seed)
    else:
        raise ValueError(f"unknown click model kind {kind!r} (linear, gbdt)")
    model.fit(xp, click.astype(int))

    def score(f: np.ndarray) -> np.ndarray:
        at0 = np.zeros((len(f), 5), dtype=np.float32)
        at0[:, 0] = 1.0
        p = np.clip(model.predict_proba(np.concatenate([f, at0], axis=1))[:, 1], 1e-6, 1 - 1e-6)
        return np.log(p / (1 - p))  # the click logit at position 0 (fit quality compares it with the true logit)

    return score


# ---------------------------------------------------------------- evaluation


def evaluate(bench: Bench, scorers: dict[str, tuple[Model, tuple[str, ...]]], seeds: int, requests: int
             ) -> dict[str, list[float]]:
    """Per-seed CTR of collaborative filtering, the click oracle and every scorer (model, extra columns it uses),
    each on its own fresh ``ShopEnv(seed=s)`` exactly as run_benchmark.evaluate builds them."""
    fz, w, cfg = bench.featurizer, bench.world, bench.cfg
    out: dict[str, list[float]] = {}

    def cf(env: ShopPyEnvironment) -> np.ndarray:
        assert env.observation is not None
        u = env.observation.user_idx
        return fz.cf_scores(u, env.candidate_items) if fz.user_known[u] else fz.popularity[env.candidate_items]

    def oracle(env: ShopPyEnvironment) -> np.ndarray:
        return env.env.attraction_probabilities(env.candidate_items)

    fixed: dict[str, tuple[Model | None, tuple[str, ...], Callable[[ShopPyEnvironment], np.ndarray] | None]] = {
        "collaborative_filtering": (None, (), cf), "click_oracle": (None, (), oracle)}
    everything = {**fixed, **{k: (m, cols, None) for k, (m, cols) in scorers.items()}}
    for s in range(seeds):
        for name, (model, cols, direct) in everything.items():
            shop = ShopEnv(cfg, seed=s, world=w, record_events=False)
            env = ShopPyEnvironment(shop, fz, seed=s)
            tracker = ExposureTracker(w.n_users, w.n_categories, w.item_category)

            def score(e: ShopPyEnvironment, model: Model | None = model, cols: tuple[str, ...] = cols,
                      direct: Any = direct, tracker: ExposureTracker = tracker) -> np.ndarray:
                if direct is not None:
                    return np.asarray(direct(e))
                f = e.features
                if cols:
                    extra = extra_columns(bench, e, tracker)
                    f = np.concatenate([f, np.stack([extra[c] for c in cols], axis=1)], axis=1)
                assert model is not None
                return model(f)

            m = run_policy(env, ScoreSlatePolicy(name, score), requests, explores=False,
                           observer=tracker.observe)
            out.setdefault(name, []).append(m.ctr)
        _log(f"seed {s}: " + ", ".join(f"{k} {v[-1]:.4f}" for k, v in out.items()))
    return out


def compare(per_seed: dict[str, list[float]], ceiling: str) -> dict[str, dict[str, float]]:
    """Each policy's mean CTR, its ratio to collaborative filtering's and the paired tests over seeds; the
    learned policies other than ``ceiling`` (the feature-limited ceiling) are also tested against it."""
    cf = np.asarray(per_seed["collaborative_filtering"])
    top = np.asarray(per_seed[ceiling])
    out = {}
    for name, ctrs in per_seed.items():
        a = np.asarray(ctrs)
        row: dict[str, float] = {"ctr": float(a.mean()), "ctr_std": float(a.std(ddof=1)) if len(a) > 1 else 0.0,
                                 "ratio_to_cf": float(a.mean() / cf.mean())}
        if name != "collaborative_filtering":
            t = paired_tests(a, cf, metric="ctr", reference="collaborative_filtering")
            row.update({"t_test_p": t.t_p, "wilcoxon_p": t.wilcoxon_p, "mean_diff": t.mean_diff})
        if name not in ("collaborative_filtering", "click_oracle", ceiling):
            t = paired_tests(a, top, metric="ctr", reference=ceiling)
            row.update({"ratio_to_ceiling": float(a.mean() / top.mean()), "vs_ceiling_t_test_p": t.t_p,
                        "vs_ceiling_wilcoxon_p": t.wilcoxon_p})
        out[name] = row
    return out


def fit_quality(model: Model, x: np.ndarray, y: np.ndarray, request: np.ndarray) -> dict[str, float]:
    """Held-out fit: R^2 of the true logit and the mean within-request Spearman rank correlation."""
    from scipy.stats import spearmanr

    pred = model(x)
    r2 = 1.0 - float(((pred - y) ** 2).mean() / y.var())
    rhos = []
    for r in np.unique(request)[:2000]:
        mask = request == r
        if mask.sum() > 2:
            rho = spearmanr(pred[mask], y[mask]).statistic
            if np.isfinite(rho):
                rhos.append(rho)
    return {"r2_true_logit": r2, "within_request_spearman": float(np.mean(rhos)) if rhos else float("nan")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=20, help="evaluation seeds 0..seeds-1 (the benchmark's)")
    ap.add_argument("--requests", type=int, default=300, help="evaluation requests per seed")
    ap.add_argument("--train-requests", type=int, default=50_000, help="experience for the ceiling")
    ap.add_argument("--sizes", type=int, nargs="*", default=[2000, 5000, 20_000],
                    help="smaller experience sizes (the data-limited learning curve)")
    ap.add_argument("--rows-per-request", type=int, default=8, help="candidates per request kept with labels")
    ap.add_argument("--models", nargs="*", default=["linear", "gbdt", "mlp"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="OpenMP/BLAS threads for the model fits")
    ap.add_argument("--quick", action="store_true", help="small world and sizes: a one-minute check")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    if args.quick:
        args.seeds, args.requests, args.train_requests, args.sizes = 2, 40, 1000, [400]
        args.models = ["linear", "gbdt"]
    if any(s > args.train_requests for s in args.sizes):
        raise SystemExit(f"--sizes {args.sizes}: every size must be <= --train-requests {args.train_requests}")
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=args.threads):
        return run(args)


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    bench = build(args.quick)
    _log(f"world built: {len(bench.events)} log events")
    t0 = time.perf_counter()
    data = collect(bench, args.train_requests, args.rows_per_request, args.seed)
    collect_s = time.perf_counter() - t0
    _log(f"collected {args.train_requests} requests ({len(data['logit'])} labelled rows) in {collect_s:.0f}s")
    # a held-out 10% of requests for the fit quality (the policies are judged on the evaluation traffic)
    n = args.train_requests
    held = data["request"] >= int(0.9 * n)
    s_held = data["s_request"] >= int(0.9 * n)
    extra_idx = {c: j for j, c in enumerate(EXTRA)}
    scorers: dict[str, tuple[Model, tuple[str, ...]]] = {}
    fits: dict[str, Any] = {}

    def add_truth(name: str, kind: str, size: int, cols: tuple[str, ...] = ()) -> None:
        mask = (data["request"] < size) & ~held if size < n else ~held
        x = data["x"]
        if cols:
            x = np.concatenate([x, data["extra"][:, [extra_idx[c] for c in cols]]], axis=1)
        t = time.perf_counter()
        model = fit_regressor(kind, x[mask], data["logit"][mask], args.seed)
        fits[name] = {"kind": kind, "labels": "true_logit", "requests": int(min(size, int(0.9 * n))),
                      "rows": int(mask.sum()), "extra_columns": list(cols), "fit_s": time.perf_counter() - t,
                      **fit_quality(model, x[held], data["logit"][held], data["request"][held])}
        scorers[name] = (model, cols)
        _log(f"{name}: {fits[name]}")

    def add_clicks(name: str, kind: str, size: int) -> None:
        mask = (data["s_request"] < size) & ~s_held if size < n else ~s_held
        t = time.perf_counter()
        model = fit_click_model(kind, data["s_x"][mask], data["s_pos"][mask], data["s_click"][mask], args.seed)
        fits[name] = {"kind": kind, "labels": "observed_clicks", "requests": int(min(size, int(0.9 * n))),
                      "rows": int(mask.sum()), "clicks": int(data["s_click"][mask].sum()),
                      "fit_s": time.perf_counter() - t,
                      **fit_quality(model, data["x"][held], data["logit"][held], data["request"][held])}
        scorers[name] = (model, ())
        _log(f"{name}: {fits[name]}")

    # 1. the feature-limited ceiling: every model family on all the experience, true labels
    for kind in args.models:
        add_truth(f"ceiling_{kind}", kind, n)
    best_kind = "gbdt" if "gbdt" in args.models else args.models[0]
    # 2. data-limited: the learning curve with true labels and with observed clicks
    for size in args.sizes:
        add_truth(f"truth_{best_kind}_{size}", best_kind, size)
        for kind in ("linear", "gbdt"):
            add_clicks(f"clicks_{kind}_{size}", kind, size)
    add_clicks(f"clicks_gbdt_{n}", "gbdt", n)
    # 3. one extra column at a time (and all true components / all proxies together)
    for col in EXTRA:
        add_truth(f"plus_{col}", best_kind, n, (col,))
    add_truth("plus_all_true_components", best_kind, n, ORACLE_COLUMNS)
    add_truth("plus_all_proxies", best_kind, n, PROXY_COLUMNS)
    cf_fit = fit_quality(lambda f: f[:, 0], data["x"][held], data["logit"][held], data["request"][held])
    fits["collaborative_filtering"] = {"kind": "CF score (feature column 0)", **cf_fit}
    _log(f"{len(scorers)} models fitted; evaluating (CF score held out: {cf_fit})")
    per_seed = evaluate(bench, scorers, args.seeds, args.requests)
    table = compare(per_seed, f"ceiling_{best_kind}")
    doc = {
        "setup": {"seeds": args.seeds, "requests_per_seed": args.requests, "train_requests": n,
                  "held_out_requests": n - int(0.9 * n), "sizes": args.sizes,
                  "rows_per_request": args.rows_per_request, "models": args.models, "seed": args.seed,
                  "quick": args.quick, "training_traffic_seeds": f"{TRAIN_SEED0}..{TRAIN_SEED0 + -(-n // CHUNK) - 1}",
                  "behaviour": "per request: uniform random 5 of the candidates or the CF top 5 (p = 0.5 each)",
                  "training_log_events": int(len(bench.events)), "simulator": bench.cfg.model_dump(mode="json")},
        "feature_limited_ceiling": f"ceiling_{best_kind}",
        "policies": table,
        "fits": fits,
        "per_seed_ctr": per_seed,
        "collect_seconds": collect_s,
        "max_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2,
        "seconds": time.perf_counter() - started,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    name = "policy_headroom_quick.json" if args.quick else "policy_headroom.json"
    with atomic_path(args.out / name) as p:
        p.write_text(json.dumps(doc, indent=2), encoding="utf-8")
    print(json.dumps({k: {"ctr": round(v["ctr"], 4), "ratio_to_cf": round(v["ratio_to_cf"], 3),
                          "t_test_p": v.get("t_test_p")} for k, v in table.items()}, indent=1))
    _log(f"done in {doc['seconds']:.0f}s -> {args.out / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
