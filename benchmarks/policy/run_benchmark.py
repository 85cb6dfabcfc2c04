"""The policy comparison table: RL policies vs collaborative filtering, content-based, popularity and random.

    .venv/bin/python benchmarks/policy/run_benchmark.py [--seeds 20] [--requests 300] [--quick]

Writes benchmarks/results/policy.json, policy.md and policy_learning_curves.png (see benchmarks/policy/README.md).
One world, one training log, one training run per learned policy; the seeds are independent evaluation
traffic (paired across policies: every policy meets the same seed's traffic stream and candidate draws).
"""

from __future__ import annotations

import recflow  # noqa: F401  (legacy Keras before TensorFlow)

# isort: split

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from recflow.baselines import ALSRecommender, ContentBasedRecommender
from recflow.evaluation.significance import paired_tests
from recflow.io import atomic_path
from recflow.policy import dqn, obd_ope, ppo
from recflow.policy.candidate_networks import CandidatePolicy
from recflow.policy.config import DeepRLConfig, PolicyConfig
from recflow.policy.environment import CandidateFeaturizer, ShopPyEnvironment
from recflow.policy.online import OnlineLinUCB
from recflow.policy.scorer import load_policy
from recflow.policy.simulator_evaluation import (
    BanditSlatePolicy,
    ScoreSlatePolicy,
    SessionAgentSlatePolicy,
    fast_forward,
    recovery_steps,
    run_policy,
)
from recflow.policy.trainer import train_policy
from recflow.simulator import DriftConfig, RewardConfig, ShopEnv, SimulatorConfig, simulate_log

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results"
RL_POLICIES = ("dqn", "ppo", "neural_bandit")
BASELINES = ("collaborative_filtering", "content_based", "popularity", "random")
#: Shows the candidates of highest true click probability (ground truth no policy sees): what choosing among the
#: same candidates can earn at best, so whether the 1.25x goal over collaborative filtering is within reach.
CEILING = "click_oracle"
METRICS = ("ctr", "cvr", "aov", "cart_abandonment", "avg_reward", "reward_per_request", "regret", "cumulative_regret",
           "exploration_cost", "cold_start_ctr", "inference_ms")

#: Sections of policy.json that another benchmark writes (benchmarks/policy/policy_lift.py); a rerun keeps them.
KEPT_SECTIONS = ("policy_lift",)


def world_config(quick: bool) -> SimulatorConfig:
    return SimulatorConfig(
        users=400 if quick else 1000, items=200 if quick else 400, days=3, slate_size=5, seed=7,
        drift=DriftConfig(day=3, preference_shift=0.8, new_items=40),
        reward=RewardConfig(click=1.0, add_to_cart=2.0, purchase=5.0),
    )


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def train_everything(cfg: SimulatorConfig, rl: DeepRLConfig, work: Path, quick: bool) -> dict[str, Any]:
    """The training log, the baselines, the bandit (pipeline trainer), DQN and PPO; with their timings."""
    t = time.perf_counter()
    log = simulate_log(cfg)
    events, world = log.events, log.world
    items = world.items_frame(day=0)
    timing: dict[str, float] = {}
    t0 = time.perf_counter()
    als = ALSRecommender(factors=16, iterations=10, regularization=5.0, seed=cfg.seed).fit(events, items)
    timing["collaborative_filtering"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    content = ContentBasedRecommender().fit(events, world.items_frame())
    timing["content_based"] = time.perf_counter() - t0
    _log(f"log: {len(events)} events; ALS {timing['collaborative_filtering']:.1f}s")

    # the per-arm bandit through the pipeline's own trainer, with ALS as the retrieval model
    examples, model = work / "examples", work / "model"
    examples.mkdir(parents=True, exist_ok=True)
    model.mkdir(parents=True, exist_ok=True)
    events.to_parquet(examples / "train.parquet")
    user_ids = np.array(list(als._user_pos.keys()), dtype=object)
    user_rows = np.array(list(als._user_pos.values()))
    pd.DataFrame({"item_id": als.item_ids, "embedding": list(als.item_factors.astype(np.float32))}).to_parquet(
        model / "item_embeddings.parquet")
    pd.DataFrame({"user_id": user_ids, "embedding": list(als.user_factors[user_rows].astype(np.float32))}
                 ).to_parquet(model / "user_embeddings.parquet")
    bandit_cfg = PolicyConfig(agent="neural_epsilon_greedy", epsilon=0.05, num_arms=10, slate_size=cfg.slate_size,
                              epochs=3, hidden_units=(32, 16), learning_rate=0.003,
                              reward_weights={"click": 1.0, "add_to_cart": 2.0, "purchase": 5.0}, seed=0)
    t0 = time.perf_counter()
    bandit = train_policy(examples, model, work / "neural_bandit", bandit_cfg)
    timing["neural_bandit"] = time.perf_counter() - t0
    _log(f"neural bandit trained on {bandit.n_decisions} logged decisions in {timing['neural_bandit']:.1f}s")

    train_env = ShopEnv(cfg, seed=10_000, world=world)
    featurizer = CandidateFeaturizer(train_env, als, events, rl)
    curves: dict[str, list[tuple[int, float]]] = {}
    for name, trainer, exporter in (("dqn", dqn.train_dqn, dqn.export_dqn), ("ppo", ppo.train_ppo, ppo.export_ppo)):
        env = ShopPyEnvironment(ShopEnv(cfg, seed=10_000 + len(curves), world=world), featurizer, seed=1)
        kwargs: dict[str, Any] = {"seed": 0}
        if name == "dqn":
            kwargs["behaviour"] = dqn.logging_behaviour(log.policy)
        t0 = time.perf_counter()
        res = trainer(env, rl, **kwargs)
        timing[name] = time.perf_counter() - t0
        exporter(res.agent, work / name, rl, env, {"requests": res.requests, "train_steps": res.steps})
        curves[name] = res.curve
        _log(f"{name}: {res.requests} requests, {res.steps} train steps, {timing[name]:.1f}s")
    emb = dict(zip(map(str, user_ids), als.user_factors[user_rows].astype(np.float32), strict=True))
    return {"log": log, "world": world, "als": als, "content": content, "featurizer": featurizer,
            "timing": timing, "curves": curves, "user_embeddings": emb, "work": work,
            "log_seconds": time.perf_counter() - t, "bandit_decisions": bandit.n_decisions}


def content_scores(content: ContentBasedRecommender, world: Any) -> np.ndarray:
    """Dense [users, items] content-based scores (rank-based; users without a profile get popularity order)."""
    n_items = world.n_items
    ranked = content.recommend(list(world.user_ids), n_items)
    index = {item: j for j, item in enumerate(world.item_ids)}
    out = np.zeros((world.n_users, n_items))
    for u, items in enumerate(ranked):
        cols = [index[i] for i in items if i in index]
        out[u, cols] = -np.arange(len(cols), dtype=float)
    return out


def make_policies(trained: dict[str, Any], eval_seed: int) -> dict[str, Any]:
    fz: CandidateFeaturizer = trained["featurizer"]
    rng = np.random.default_rng(eval_seed + 555)
    cscore = trained["content_matrix"]

    def cf(env: ShopPyEnvironment) -> np.ndarray:
        u = env.observation.user_idx
        s = fz.cf_scores(u, env.candidate_items)
        return s if fz.user_known[u] else fz.popularity[env.candidate_items]

    work = trained["work"]
    return {
        "dqn": SessionAgentSlatePolicy("dqn", CandidatePolicy(work / "dqn", seed=eval_seed)),
        "ppo": SessionAgentSlatePolicy("ppo", CandidatePolicy(work / "ppo", seed=eval_seed)),
        "neural_bandit": BanditSlatePolicy("neural_bandit", load_policy(work / "neural_bandit", seed=eval_seed),
                                     trained["user_embeddings"]),
        "collaborative_filtering": ScoreSlatePolicy("collaborative_filtering", cf),
        "content_based": ScoreSlatePolicy(
            "content_based", lambda env: cscore[env.observation.user_idx, env.candidate_items]),
        "popularity": ScoreSlatePolicy("popularity", lambda env: fz.popularity[env.candidate_items]),
        "random": ScoreSlatePolicy("random", lambda env: rng.random(len(env.candidate_items))),
    }


def evaluate(trained: dict[str, Any], cfg: SimulatorConfig, seeds: int, requests: int) -> dict[str, list[dict]]:
    world = trained["world"]
    seen = set(trained["log"].events["user_id"].astype(str))
    cold = np.array([u not in seen for u in world.user_ids])
    per_seed: dict[str, list[dict]] = {}
    for s in range(seeds):
        policies = make_policies(trained, s)
        # The ceiling of choosing among the same candidates: the myopic click oracle (true probabilities).
        policies[CEILING] = ScoreSlatePolicy(CEILING, lambda env: env.env.attraction_probabilities(env.candidate_items))
        for name, policy in policies.items():
            shop = ShopEnv(cfg, seed=s, world=world, record_events=False)
            env = ShopPyEnvironment(shop, trained["featurizer"], seed=s)
            m = run_policy(env, policy, requests, cold_users=cold, explores=name in RL_POLICIES)
            per_seed.setdefault(name, []).append({**m.summary(), "cold_impressions": m.cold_impressions})
        _log(f"seed {s}: " + ", ".join(f"{k} {v[-1]['ctr']:.4f}" for k, v in per_seed.items()))
    return per_seed


class OnlineCorrectedBandit(BanditSlatePolicy):
    """The bandit with recflow's online learner (:class:`recflow.policy.online.OnlineLinUCB`) correcting its
    scores from feedback, exactly as serving corrects its exported policy (``serving.online_learning``)."""

    def __init__(self, name: str, scorer: Any, user_embeddings: dict[str, np.ndarray], online: OnlineLinUCB,
                 seed: int = 0) -> None:
        super().__init__(name, scorer, user_embeddings, seed)
        self.online = online
        self._row = {str(i): n for n, i in enumerate(scorer.item_ids)}
        self.shown: dict[str, tuple[np.ndarray, float]] = {}  # item id -> (policy features, base score)

    def _scores(self, env: ShopPyEnvironment) -> tuple[np.ndarray, np.ndarray]:
        from recflow.policy.logged_data import arm_features, context_onehots, global_features

        obs = env.observation
        if self._cache is not None and self._cache[0] is obs:
            return self._cache[1], self._cache[2]
        known, ranks = super()._scores(env)
        if known.size == 0:
            return known, ranks
        layout = self.scorer.layout
        ids = env.env.world.item_ids[env.candidate_items].astype(str)[known]
        user = self.user_embeddings.get(obs.user_id)
        user = np.asarray(layout.unknown_user_embedding if user is None else user, np.float32)[None, :]
        ctx = context_onehots({"hour": obs.hour, "weekday": obs.weekday, "device": obs.device},
                              layout.context_columns, 1)
        g = global_features(user, ctx)
        a = arm_features(user, self.scorer.item_embeddings[[self._row[i] for i in ids]][None, :, :])
        feats = np.concatenate([np.broadcast_to(g[:, None, :], a.shape[:2] + g.shape[1:]), a], axis=-1)[0]
        ranks = ranks.copy()
        ranks[0] = self.online.adjust(feats, ranks[1])
        self.shown = {i: (f, float(b)) for i, f, b in zip(ids, feats, ranks[1], strict=True)}
        self._cache = (obs, known, ranks)
        return known, ranks

    def observe(self, env: ShopPyEnvironment, slate: np.ndarray, result: Any) -> None:
        """Learn from the feedback on the slate just shown (impressions, then clicks, carts, purchases)."""
        for kind, item in zip(result.events["event_type"], result.events["item_id"].astype(str), strict=True):
            if item in self.shown:
                features, base = self.shown[item]
                self.online.learn(kind, features, base)


def drift_scenario(trained: dict[str, Any], cfg: SimulatorConfig, seeds: int, pre: int, post: int,
                   forgetting: float = 0.999) -> dict[str, Any]:
    """Serve ``pre`` requests before the drift day and ``post`` after it; the online bandit corrects itself from
    its feedback (recflow's online learner with an exponential window, ``forgetting`` per impression)."""
    world, work = trained["world"], trained["work"]
    quality: dict[str, list[np.ndarray]] = {}
    for s in range(seeds):
        policies = make_policies(trained, 100 + s)
        base = policies["neural_bandit"]
        layout = base.scorer.layout
        online = OnlineCorrectedBandit(
            "neural_bandit_online", load_policy(work / "neural_bandit", seed=100 + s), trained["user_embeddings"],
            OnlineLinUCB(layout.global_dim + layout.arm_dim, publish_every=50, forgetting=forgetting),
            seed=100 + s)
        policies["neural_bandit_online"] = online
        for name, policy in policies.items():
            shop = ShopEnv(cfg, seed=1000 + s, world=world, record_events=name == "neural_bandit_online")
            env = ShopPyEnvironment(shop, trained["featurizer"], seed=s)
            fast_forward(env, cfg.drift.day, margin_sessions=int(pre / 2.2))
            m = run_policy(env, policy, pre + post, explores=False,
                           observer=online.observe if name == "neural_bandit_online" else None)
            # index of the first post-drift request: the env's day is recorded through the quality list order
            quality.setdefault(name, []).append(np.asarray(m.quality))
        _log(f"drift seed {s} done")
    return quality


def drift_summary(trained: dict[str, Any], cfg: SimulatorConfig, seeds: int, pre: int, post: int
                  ) -> dict[str, Any]:
    q = drift_scenario(trained, cfg, seeds, pre, post)
    out: dict[str, Any] = {"steps": {}, "recovered": {}, "detail": {}}
    for name, runs in q.items():
        n = min(len(r) for r in runs)
        mean = np.mean([r[:n] for r in runs], axis=0)
        drift_at = min(pre, n)
        steps, ok, level, low = recovery_steps(mean, drift_at)
        out["steps"][name] = steps
        out["recovered"][name] = ok
        out["detail"][name] = {"pre_drift_quality": level, "lowest_rolling_quality": low,
                               "last_100_quality": float(mean[-100:].mean()),
                               "first_100_after_drift_quality": float(mean[drift_at:drift_at + 100].mean())}
    return out


def summarize(per_seed: dict[str, list[dict]]) -> dict[str, dict[str, float]]:
    out = {}
    for name, rows in per_seed.items():
        frame = pd.DataFrame(rows)
        stats = {}
        for metric in METRICS:
            stats[metric] = float(frame[metric].mean())
            stats[f"{metric}_std"] = float(frame[metric].std(ddof=1))
        out[name] = stats
    return out


def significance(per_seed: dict[str, list[dict]], summary: dict[str, dict[str, float]]) -> dict[str, Any]:
    best = max(RL_POLICIES, key=lambda p: summary[p]["ctr"])
    a = np.array([r["ctr"] for r in per_seed[best]])
    out = {}
    for base in BASELINES:
        b = np.array([r["ctr"] for r in per_seed[base]])
        test = paired_tests(a, b, metric="ctr", reference=base)
        out[base] = {"best_rl_policy": best, "metric": "ctr", "t_test_p": test.t_p, "wilcoxon_p": test.wilcoxon_p,
                     "mean_diff": test.mean_diff, "relative_lift": float(a.mean() / b.mean() - 1.0),
                     "n_seeds": test.n, "note": test.note}
    return out


def ceiling(per_seed: dict[str, list[dict]]) -> dict[str, Any]:
    """The click oracle's CTR over collaborative filtering's (mean over seeds, with a 95% bootstrap interval over
    the seeds), and whether 1.25x lies within it: a policy choosing among the same candidates cannot beat the
    oracle's expected clicks request by request (it can at most differ through what it does to satiation)."""
    from recflow.evaluation.off_policy import bootstrap_ratio

    oracle = np.array([r["ctr"] for r in per_seed[CEILING]])
    cf = np.array([r["ctr"] for r in per_seed["collaborative_filtering"]])
    value, low, high = bootstrap_ratio(oracle, cf, seed=0)
    return {"click_oracle_to_cf": value, "click_oracle_to_cf_ci95": [low, high],
            "attainable": bool(value >= 1.25)}


def plot_curves(curves: dict[str, list[tuple[int, float]]], summary: dict[str, dict[str, float]], path: Path
                ) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for name, curve in curves.items():
        if curve:
            x, y = zip(*curve, strict=True)
            ax.plot(x, y, marker="o", ms=3, label=f"{name} (training, exploring)")
    colors = {"collaborative_filtering": "k", "content_based": "tab:brown", "popularity": "tab:gray",
              "random": "tab:olive", "neural_bandit": "tab:purple"}
    for name, color in colors.items():
        per_request = summary[name]["reward_per_request"]
        ax.axhline(per_request, color=color, ls="--", lw=1, label=f"{name} (evaluation)")
    ax.set_xlabel("environment requests (slates) seen in training")
    ax.set_ylabel("reward per request (window mean)")
    ax.set_title("Learning curves in the simulator (reward: click 1, cart 2, purchase 5)")
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def markdown(doc: dict[str, Any]) -> str:
    sim, sig = doc["simulator"], doc["significance"]
    names = [*RL_POLICIES, *BASELINES, *([CEILING] if CEILING in sim else [])]
    lines = [
        "# Policy comparison on the simulator (generated by benchmarks/policy/run_benchmark.py)",
        "",
        f"{doc['setup']['seeds']} evaluation seeds x {doc['setup']['requests_per_seed']} requests, slate of "
        f"{doc['setup']['slate_size']} from {doc['setup']['num_candidates']} candidates; mean ± std over seeds.",
        "",
        "| policy | CTR | CVR | AOV | cart abandonment | reward / session | regret / request | exploration cost |"
        " cold-start CTR | drift recovery (requests) | train s | inference ms |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for n in names:
        s = sim[n]
        rec = doc["drift_recovery_steps"].get(n)
        ok = doc["drift_recovered"].get(n)
        rec_txt = "n/a" if rec is None else (f"{rec}" if ok else f">{rec} (not recovered)")
        lines.append(
            f"| {n} | {s['ctr']:.4f} ± {s['ctr_std']:.4f} | {s['cvr']:.4f} ± {s['cvr_std']:.4f} | {s['aov']:.1f} | "
            f"{s['cart_abandonment']:.3f} | {s['avg_reward']:.3f} ± {s['avg_reward_std']:.3f} | "
            f"{s['regret']:.3f} | {s['exploration_cost']:.3f} | {s['cold_start_ctr']:.4f} | {rec_txt} | "
            f"{doc['training_seconds'].get(n, 0.0):.1f} | {s['inference_ms']:.2f} |")
    if "neural_bandit_online" in doc["drift_recovery_steps"]:
        n = "neural_bandit_online"
        ok = doc["drift_recovered"][n]
        lines.append(f"| {n} (drift scenario only) | | | | | | | | | "
                     f"{doc['drift_recovery_steps'][n] if ok else '>' + str(doc['drift_recovery_steps'][n])} | | |")
    best = next(iter(sig.values()))["best_rl_policy"]
    lines += ["", f"Paired tests of the best RL policy by CTR (**{best}**) against each baseline (per-seed CTR):", "",
              "| baseline | CTR lift | t-test p | Wilcoxon p |", "|---|---|---|---|"]
    for b, r in sig.items():
        lines.append(f"| {b} | {100 * r['relative_lift']:+.1f}% | {r['t_test_p']:.2g} | {r['wilcoxon_p']:.2g} |")
    t = doc["target"]
    lines += ["", f"Target (best RL beats collaborative filtering on CTR by >= 25% with p < 0.01): "
              f"**{'met' if t['met'] else 'not met'}** (lift {100 * t['cf_ctr_lift']:+.1f}%, t-test p "
              f"{t['t_test_p']:.2g}, Wilcoxon p {t['wilcoxon_p']:.2g})."
              + (f" The click oracle (true probabilities, same candidates) earns {t['click_oracle_to_cf']:.3f}x "
                 f"collaborative filtering's CTR (95% interval over seeds {t['click_oracle_to_cf_ci95'][0]:.3f}-"
                 f"{t['click_oracle_to_cf_ci95'][1]:.3f}): 1.25x is "
                 f"{'within' if t['attainable'] else 'beyond'} reach of any policy choosing among these candidates."
                 if "click_oracle_to_cf" in t else ""), "",
              "## OPE estimators on the Open Bandit Dataset (OBP's validation)", "",
              "| estimator | BTS CTR from random log | rel. error | OBP published rel. error | random CTR from BTS "
              "log | rel. error |", "|---|---|---|---|---|---|"]
    v = doc["obd_validation"]
    for e in obd_ope.ESTIMATORS:
        a, b = v["bts_from_random"][e], v["random_from_bts"][e]
        pub = obd_ope.OBP_PUBLISHED_RELATIVE_ERROR.get(e)
        lines.append(f"| {e} | {a['value']:.5f} [{a['ci_low']:.5f}, {a['ci_high']:.5f}] | {a['relative_error']:.3f} "
                     f"| {'' if pub is None else pub} | {b['value']:.5f} | {b['relative_error']:.3f} |")
    lines += ["", f"Truth: BTS log CTR {v['bts_from_random']['truth']:.4f}, random log CTR "
              f"{v['random_from_bts']['truth']:.4f}.", "", "OPE of each policy's CTR on the OBD random log "
              "(fitted on the BTS log; epsilon 0.05):", "", "| policy | IPS | SNIPS | DM | DR | IPS ESS |",
              "|---|---|---|---|---|---|"]
    for p, r in doc["obd_policy_ope"].items():
        lines.append(f"| {p} | {r['ips']['value']:.5f} | {r['snips']['value']:.5f} | {r['dm']['value']:.5f} | "
                     f"{r['dr']['value']:.5f} | {r['ips']['effective_sample_size']:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--drift-seeds", type=int, default=5)
    ap.add_argument("--drift-pre", type=int, default=200)
    ap.add_argument("--drift-post", type=int, default=800)
    ap.add_argument("--train-requests", type=int, default=2000)
    ap.add_argument("--quick", action="store_true", help="tiny run to check the script")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    started = time.perf_counter()
    cfg = world_config(args.quick)
    rl = DeepRLConfig(train_requests=args.train_requests, warmup_requests=min(300, args.train_requests // 4),
                      epsilon_decay_steps=max(1, args.train_requests // 2))
    with tempfile.TemporaryDirectory(prefix="recflow-policy-bench-") as tmp:
        trained = train_everything(cfg, rl, Path(tmp), args.quick)
        trained["content_matrix"] = content_scores(trained["content"], trained["world"])
        per_seed = evaluate(trained, cfg, args.seeds, args.requests)
        summary = summarize(per_seed)
        drift = drift_summary(trained, cfg, args.drift_seeds, args.drift_pre, args.drift_post)
    _log("OBD")
    logs = obd_ope.load_logs(ROOT / "data" / "cache")
    validation = obd_ope.validate_estimators(logs, seed=0)
    policy_ope = obd_ope.evaluate_policies(logs, seed=0)
    sig = significance(per_seed, summary)
    cf = sig["collaborative_filtering"]
    target = {"cf_ctr_lift": cf["relative_lift"], "t_test_p": cf["t_test_p"], "wilcoxon_p": cf["wilcoxon_p"],
              "best_rl_policy": cf["best_rl_policy"],
              "met": bool(cf["relative_lift"] >= 0.25 and cf["t_test_p"] < 0.01 and cf["wilcoxon_p"] < 0.01),
              **ceiling(per_seed)}
    doc = {
        "setup": {"seeds": args.seeds, "requests_per_seed": args.requests, "slate_size": cfg.slate_size,
                  "num_candidates": rl.num_candidates, "simulator": cfg.model_dump(mode="json"),
                  "deep_rl": rl.model_dump(mode="json"), "drift_seeds": args.drift_seeds,
                  "drift_pre_requests": args.drift_pre, "drift_post_requests": args.drift_post,
                  "training_log_events": int(len(trained["log"].events)),
                  "bandit_decisions": trained["bandit_decisions"],
                  "machine": f"{platform.processor() or platform.machine()}, Python {platform.python_version()}"},
        "simulator": summary,
        "per_seed_ctr": {n: [r["ctr"] for r in rows] for n, rows in per_seed.items()},
        "significance": sig,
        "target": target,
        "drift_recovery_steps": drift["steps"],
        "drift_recovered": drift["recovered"],
        "drift": drift["detail"],
        "obd_ope": {e: {"relative_error": validation["bts_from_random"][e]["relative_error"],
                        "estimate": validation["bts_from_random"][e]["value"],
                        "truth": validation["bts_from_random"]["truth"],
                        "relative_error_random_from_bts": validation["random_from_bts"][e]["relative_error"],
                        "obp_published_relative_error": obd_ope.OBP_PUBLISHED_RELATIVE_ERROR.get(e)}
                    for e in obd_ope.ESTIMATORS},
        "obd_validation": validation,
        "obd_policy_ope": policy_ope,
        "training_seconds": trained["timing"],
        "inference_ms": {n: summary[n]["inference_ms"] for n in summary},
        "learning_curves": trained["curves"],
        "seconds": time.perf_counter() - started,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    previous = args.out / "policy.json"
    if previous.is_file():  # keep the sections other scripts write into this file (policy_lift.py)
        kept = json.loads(previous.read_text(encoding="utf-8"))
        doc.update({k: v for k, v in kept.items() if k in KEPT_SECTIONS})
    with atomic_path(args.out / "policy.json") as p:
        p.write_text(json.dumps(doc, indent=2), encoding="utf-8")
    with atomic_path(args.out / "policy.md") as p:
        p.write_text(markdown(doc), encoding="utf-8")
    plot_curves(trained["curves"], summary, args.out / "policy_learning_curves.png")
    _log(f"done in {doc['seconds']:.0f}s -> {args.out / 'policy.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())  # `import recflow` installed the exit guard against the post-Beam teardown crash
