"""Does the policy layer earn its place? The served pipeline with and without the TF-Agents policy's re-ranking.

Protocol (issue 13, item 5):

1. ``recflow data generate`` on the simulator's default world (``SimulatorConfig`` defaults apart from the sizes
   in ``--users/--items/--days``, recorded in the JSON) and one ``recflow pipeline run`` on it (KFP local runner,
   default configuration apart from the overrides recorded in ``pipeline_overrides``: the blessing's baseline
   rules are switched off so that a bundle is pushed whatever it scores -- this benchmark measures the policy
   layer, not the blessing).
2. Online, per traffic seed (``--seeds``, at least 20): fresh ``ShopEnv`` traffic of the same world (seed
   ``1000 + s``), ``--requests`` requests. Two :class:`serving.Recommender` instances on the same pushed bundle
   serve it: ``serving.policy_rerank: true`` (the slate ordered by the policy's scores over the ranked pool) and
   ``false`` (ordered by the ranking model's click probability); everything else is the default serving
   configuration. Feedback (impressions, clicks) is posted back, as a shop would. Both meet the same seed's
   traffic stream (same users, sessions and contexts until their slates make the streams differ).
3. Per seed: sampled CTR (clicks / shown items) and the true expected reward per request (the simulator's
   expected value of the shown slate: far less noisy). Lift = with / without; paired t-test and Wilcoxon
   signed-rank test over the seeds.

    .venv/bin/python benchmarks/policy/policy_lift.py [--seeds 20] [--requests 300] [--work /tmp/policy-lift]

Updates ``benchmarks/results/policy.json`` (key ``policy_lift``) and prints the JSON.
"""

from __future__ import annotations

import recflow  # noqa: F401  (legacy Keras before TensorFlow)

# isort: split

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import numpy as np  # noqa: E402

from recflow.config import load_config  # noqa: E402
from recflow.evaluation.significance import paired_tests  # noqa: E402
from recflow.io import atomic_path  # noqa: E402
from recflow.simulator import SimulatorConfig  # noqa: E402
from recflow.simulator.env import ShopEnv  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "policy.json"
#: The shop's events posted back as feedback after each slate.
FEEDBACK_TYPES = ("impression", "click", "add_to_cart", "purchase")
PIPELINE_OVERRIDES = ("evaluator.thresholds.min_lift_over_popularity=null",
                      "evaluator.thresholds.min_lift_over_best_baseline=null")


def train(work: Path, world: SimulatorConfig, reuse: bool) -> dict[str, Any]:
    """Generate the world's log and run the pipeline on it; returns the store and the run's verdict."""
    from trained_world import generate_and_train

    run = generate_and_train(world, work / "data", work / "store", work / "run", work / "trained.json",
                             PIPELINE_OVERRIDES, reuse)
    return {"pipeline_seconds": run["pipeline_seconds"], "blessed": run["blessed"], "run_dir": run["run_dir"],
            "store": work / "store"}


def serve_traffic(store: Path, world: SimulatorConfig, seed: int, requests: int, policy_rerank: bool
                  ) -> dict[str, float]:
    """Serve ``requests`` requests of traffic seed ``1000 + seed`` through the Recommender; CTR and reward."""
    from serving.recommender import Recommender

    config = load_config().serving.model_copy(update={"policy_rerank": policy_rerank})
    rec = Recommender.load(store, config)
    env = ShopEnv(world, seed=1000 + seed, record_events=True)
    obs = env.reset(seed=1000 + seed)
    shown = clicks = 0
    expected: list[float] = []
    try:
        for _ in range(requests):
            context = {"hour": obs.hour, "weekday": obs.weekday, "device": obs.device, "region": obs.region}
            out = rec.recommend(obs.user_id, context, world.slate_size)
            slate = [s.item_id for s in out.items]
            result = env.step_ids(slate)
            expected.append(float(result.info["expected_reward"]))
            shown += len(slate)
            clicks += int(result.info["clicks"])
            logged = result.events
            assert logged is not None
            rec.record_feedback([{"event_type": str(t), "item_id": str(i), "request_id": out.request_id}
                                 for t, i in zip(logged["event_type"], logged["item_id"], strict=True)
                                 if t in FEEDBACK_TYPES])
            obs = env.reset() if result.done else result.observation
    finally:
        rec.close()
    return {"ctr": clicks / shown, "expected_reward_per_request": float(np.mean(expected)), "requests": requests}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--items", type=int, default=300)
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--work", type=Path, default=Path("/tmp/recflow-policy-lift"))
    parser.add_argument("--reuse", action="store_true", help="reuse the pipeline run already in --work")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    if args.seeds < 2:
        parser.error("--seeds: at least 2 (the tests are over seeds)")
    args.work.mkdir(parents=True, exist_ok=True)
    world = SimulatorConfig(users=args.users, items=args.items, days=args.days)
    started = time.perf_counter()
    trained = train(args.work, world, args.reuse)
    per_seed: dict[str, list[dict[str, float]]] = {"with_policy": [], "without_policy": []}
    for s in range(args.seeds):
        per_seed["with_policy"].append(serve_traffic(trained["store"], world, s, args.requests, True))
        per_seed["without_policy"].append(serve_traffic(trained["store"], world, s, args.requests, False))
        print(f"seed {s}: with {per_seed['with_policy'][-1]} without {per_seed['without_policy'][-1]}",
              file=sys.stderr, flush=True)
    lift: dict[str, Any] = {}
    for metric in ("ctr", "expected_reward_per_request"):
        a = np.array([r[metric] for r in per_seed["with_policy"]])
        b = np.array([r[metric] for r in per_seed["without_policy"]])
        test = paired_tests(a, b)
        lift[metric] = {"with_policy_mean": float(a.mean()), "without_policy_mean": float(b.mean()),
                        "ratio": float(a.mean() / b.mean()), "t_test_p": test.t_p, "wilcoxon_p": test.wilcoxon_p,
                        "seeds": len(a), "with_better_on_seeds": int((a > b).sum())}
    default = load_config().serving.policy_rerank
    r = lift["expected_reward_per_request"]
    significant_gain = r["ratio"] > 1 and r["t_test_p"] < 0.05 and r["wilcoxon_p"] < 0.05
    doc = {
        "protocol": __doc__.split("Protocol (issue 13, item 5):")[1].split("    .venv")[0].strip(),
        "world": {"users": args.users, "items": args.items, "days": args.days, "seed": world.seed,
                  "slate_size": world.slate_size},
        "pipeline_overrides": list(PIPELINE_OVERRIDES),
        "pipeline": {k: trained[k] for k in ("pipeline_seconds", "blessed")},
        "requests_per_seed": args.requests,
        "per_seed": per_seed,
        "lift": lift,
        "policy_rerank_default": default,
        "verdict": ("the policy's re-ranking helps significantly (p < 0.05, both tests): serve with it"
                    if significant_gain else
                    "no significant gain from the policy's re-ranking (p >= 0.05 or lift <= 1): the default "
                    "configuration serves without it"),
        "default_consistent_with_verdict": bool(default == significant_gain),
        "seconds": time.perf_counter() - started,
    }
    print(json.dumps(doc, indent=2, default=float))
    if not args.no_write:
        existing = json.loads(RESULTS.read_text(encoding="utf-8")) if RESULTS.is_file() else {}
        existing["policy_lift"] = doc
        with atomic_path(RESULTS) as tmp:
            tmp.write_text(json.dumps(existing, indent=2, default=float) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
