"""Replay of the monitoring end-to-end test in one process: which retraining wins the click rate back, and why.

tests/test_monitoring_e2e.py runs the whole chain once (HTTP, Prometheus, Alertmanager, the watcher) and takes
minutes per run; this replays its shop without any of that, so retraining variants can be compared on the same
drifted traffic: the champion serves the reference day and 8,000 drifted requests (the top three categories lose
2.0 preference logits from day 1), the feedback is saved once, each variant is a real pipeline run on a window of
it, and each model is evaluated in twin shops copied from the saved state (the simulator's true expected CTR).

  serve [--seed S]                                  -> WORK/feedback-seedS, WORK/shop-seedS.pkl, serve-seedS.json
  retrain NAME [--events N] [--set k=v ...]         -> WORK/variants/NAME (a pipeline run on that window)
  eval NAME [NAME ...] [--requests N] [--arms ...]  -> eval-TAG-seedS.json: per arm the true expected CTR

Arms: full (the Recommender as served, its online correction fed and learned synchronously, so a run is
deterministic), full_nool (online correction off), full_nofb (on but never fed), full_noexp (no exploration),
full_cfg (ServingConfig overrides from RECOV_CFG, JSON), retrieval / ranking / policy (each stage's top 10 alone),
rank_all (the ranking model over the whole catalog) and oracle (the simulator's myopic best slate).
``@CHAMPION`` in a --set value is the champion's model directory (``trainer.warm_start_from=@CHAMPION``).

The runs behind docs/monitoring.md are in benchmarks/results/retraining_replay/ (eval-*.json, serve-*.json,
retrain-*.json with each variant's window, overrides and wall time). Variant names: base = cold start on the last
80,000 events (the e2e's former setting); ev160 = cold on 160,000; warm / warm160 / warm200 = warm-started towers
on 80,000 / 160,000 / 200,000; warmR / warmR160 = towers and ranking model warm-started (an experimental trainer
patch, not kept); the _s11 variants are shop seed 11 (warmR160_s11 ran after that patch was reverted: towers
only, like warm160). Their champion was the e2e's cached bundle of that day (RECOV_CHAMPION; default: the
current code's bundle from pipelines/sample_bundle.py, the one the e2e test uses).

    RECOV_WORK=/tmp/replay .venv/bin/python benchmarks/retraining_replay.py serve --seed 7
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import shutil
import subprocess
import sys
import time
from pathlib import Path

import recflow  # noqa: F401  (configures TensorFlow's environment first)

# isort: split

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
# benchmarks/serving.py would shadow the serving package
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]

# the shop, the drift and the client of the end-to-end test this replays
from recflow.simulator.client import context_of, slate_feedback  # noqa: E402
from recflow.simulator.scenarios import MONITORING_E2E  # noqa: E402

WORLD, ONSET = MONITORING_E2E.world, MONITORING_E2E.onset
DRIFT_CATEGORIES, DEMAND_SHIFT = MONITORING_E2E.drift_categories, MONITORING_E2E.demand_shift
WORK = Path(os.environ.get("RECOV_WORK", "/tmp/recov_work"))
POST_DRIFT_REQUESTS = int(os.environ.get("RECOV_POST", MONITORING_E2E.post_drift_requests))


def champion_parts() -> Path:
    """The champion that serves the drifted traffic: RECOV_CHAMPION, else the e2e test's (cached) bundle."""
    if os.environ.get("RECOV_CHAMPION"):
        return Path(os.environ["RECOV_CHAMPION"])
    from pipelines.sample_bundle import bundle_parts

    return bundle_parts(WORLD)


def catalog() -> Path:
    data = WORK / "catalog"
    if not (data / "items.parquet").is_file():
        from recflow.config import load_config
        from recflow.simulator import generate_dataset

        config = load_config(None, [f"simulator.{k}={v}" for k, v in WORLD.items()])
        generate_dataset(config.simulator, data, progress=False)
    return data


def top_categories(data: Path) -> list[str]:
    history = pd.read_parquet(data / "events.parquet")
    category = history["item_id"].map(pd.read_parquet(data / "items.parquet").set_index("item_id")["category"])
    return category[history["event_type"] == "click"].value_counts().index[:DRIFT_CATEGORIES].tolist()


def make_env(data: Path, seed: int):
    from recflow.simulator import ShopEnv, SimulatorConfig

    shift = dict.fromkeys(top_categories(data), DEMAND_SHIFT)
    return ShopEnv(SimulatorConfig(**WORLD, drift={
        "day": ONSET, "preference_shift": 0.0, "category_demand_shift": shift, "new_items": 0,
        "price_change_share": 0.0}), seed=seed)


def sync_online(rec) -> None:
    """Online correction on, but learned in the caller's thread (deterministic)."""
    for v in rec.variants.values():
        if v.online is not None:
            v.online.stop()
            v.online.submit = v.online.learn  # type: ignore[method-assign]


def make_rec(bundle_dir: Path, version: str, items: pd.DataFrame, feedback_dir: Path | None = None,
             online: bool = True, **overrides):
    from serving.bundle import ServingBundle
    from serving.config import ServingConfig
    from serving.feedback_log import FeedbackLog
    from serving.recommender import Recommender

    config = ServingConfig(online_learning=online, **overrides)
    fb = FeedbackLog(feedback_dir) if feedback_dir is not None else None
    rec = Recommender(ServingBundle.load(bundle_dir, version), config, feedback_log=fb, catalog=items)
    sync_online(rec)
    return rec


def serve_one(env, obs, rec, record: bool = True) -> tuple[object, float, float, list[str]]:
    r = rec.recommend(obs.user_id, context_of(obs), 10)
    slate = [it.item_id for it in r.items]
    step = env.step_ids(slate)
    if record:
        rec.record_feedback(slate_feedback(slate, r.request_id, step))
    nxt = env.reset() if step.done else step.observation
    return (nxt, float(step.info["expected_reward"]) / len(slate),
            float(step.info["oracle_expected_reward"]) / len(slate), slate)


def cmd_serve(args) -> None:
    data = catalog()
    items = pd.read_parquet(data / "items.parquet")
    parts = champion_parts()
    feedback = WORK / f"feedback-seed{args.seed}"
    shutil.rmtree(feedback, ignore_errors=True)
    rec = make_rec(parts, "v0001", items, feedback)
    env = make_env(data, args.seed)
    obs = env.reset()
    t0 = time.time()
    pre, drifted = [], []
    states = {}
    while obs.day < ONSET:
        for _ in range(50):
            obs, ctr, _, _ = serve_one(env, obs, rec)
            pre.append(ctr)
    states["day1"] = pickle.dumps((env, obs))
    for _ in range(POST_DRIFT_REQUESTS):
        obs, ctr, _, _ = serve_one(env, obs, rec)
        drifted.append(ctr)
    rec.close()
    with open(WORK / f"shop-seed{args.seed}.pkl", "wb") as fh:
        pickle.dump((env, obs), fh)
    with open(WORK / f"shop-day1-seed{args.seed}.pkl", "wb") as fh:
        fh.write(states["day1"])
    out = {"seed": args.seed, "pre_requests": len(pre), "pre_ctr": float(np.mean(pre)),
           "drifted_ctr_all": float(np.mean(drifted)), "drifted_ctr_last2000": float(np.mean(drifted[-2000:])),
           "day_at_end": obs.day, "seconds": round(time.time() - t0, 1), "top_categories": top_categories(data)}
    (WORK / f"serve-seed{args.seed}.json").write_text(json.dumps(out, indent=1))
    print(json.dumps(out))


def cmd_retrain(args) -> None:
    from monitoring.retraining import recent_dataset
    from monitoring.watcher import pipeline_command
    from pipelines.sample_bundle import push
    from recflow.config import RecflowConfig  # noqa: F401
    from recflow.model_store import ModelStore

    data = catalog()
    vdir = WORK / "variants" / args.name
    shutil.rmtree(vdir, ignore_errors=True)
    vdir.mkdir(parents=True)
    store = vdir / "store"
    push(ModelStore(store), champion_parts())
    history = None if args.no_history else data
    recent = recent_dataset(WORK / f"feedback-seed{args.seed}", vdir / "data", args.events, data / "items.parquet",
                            data / "users.parquet", history=history)
    overrides = ["evaluator.thresholds.min_lift_over_popularity=null",
                 "evaluator.thresholds.min_lift_over_best_baseline=null", *args.set]
    overrides = [o.replace("@CHAMPION", str(store / "versions" / "v0001" / "model")) for o in overrides]
    argv = pipeline_command(recent.resolve(), model_store=str(store), overrides=overrides)
    argv = [*argv[:3], "--set", f"paths.data_dir={vdir / 'home'}", *argv[3:], "--no-tracking"]
    t0 = time.time()
    with open(vdir / "pipeline.log", "w") as log:
        code = subprocess.call(argv, stdout=log, stderr=subprocess.STDOUT, cwd=str(vdir))
    wall = time.time() - t0
    run_dir = sorted((vdir / "home" / "pipeline-runs").iterdir())[-1]
    art = next((run_dir / "artifacts").iterdir())
    bundle = vdir / "bundle"
    bundle.mkdir()
    (bundle / "model").symlink_to(art / "tfrs-trainer" / "model")
    (bundle / "policy").symlink_to(art / "agents-trainer" / "policy")
    (bundle / "transform").symlink_to(art / "transform" / "transformed")
    tail = (vdir / "pipeline.log").read_text()[-1500:]
    info = {"name": args.name, "exit": code, "wall_s": round(wall, 1), "overrides": overrides,
            "events": args.events, "history": history is not None,
            "pushed": (store / "versions" / "v0002").exists(), "log_tail": tail}
    (vdir / "retrain.json").write_text(json.dumps(info, indent=1))
    print(json.dumps({k: v for k, v in info.items() if k != "log_tail"}))
    print(tail[-800:])


def bundle_of(name: str) -> Path:
    return champion_parts() if name == "champion" else WORK / "variants" / name / "bundle"


def stage_arm(arm: str, rec, env, obs, n: int, cat_of: dict, drifted_cats: set) -> dict:
    """Serve ``n`` requests in ``env`` with one stage's slate; mean true expected CTR and diagnostics."""
    b = rec.champion
    ctrs, oracle, in_drift, recall_oracle, cold = [], [], [], [], []
    for _ in range(n):
        ctx = b.context_for(obs.user_id, context_of(obs))
        if arm.startswith("full"):
            r = rec.recommend(obs.user_id, context_of(obs), 10)
            slate = [it.item_id for it in r.items]
            cold.append(r.cold_start)
        elif arm == "oracle":
            slate = env.world.item_ids[env.oracle_slate()].tolist()
        elif arm == "rank_all":  # the ranking model over the whole catalog (no retrieval cut)
            prob = b.rank(obs.user_id, b.item_ids.tolist(), ctx)
            slate = b.item_ids[np.argsort(-prob, kind="stable")[:10]].tolist()
        else:
            top, policy_user, _ = rec.retrieve(b, obs.user_id, ctx, None, None)
            if arm == "retrieval":
                slate = b.item_ids[top[:10]].tolist()
            else:
                top_ids = b.item_ids[top]
                prob = b.rank(obs.user_id, top_ids.tolist(), ctx)
                order = np.argsort(-prob, kind="stable")
                if arm == "ranking":
                    slate = top_ids[order[:10]].tolist()
                else:  # policy greedy on the ranked pool (no exploration, no online correction)
                    pool = top[order[:30]]
                    g, a = b.policy_features(policy_user, ctx, pool)
                    base = b.policy_scores(g, a)
                    slate = b.item_ids[pool[np.argsort(-base, kind="stable")[:10]]].tolist()
            if arm == "retrieval":
                orc = set(env.world.item_ids[env.oracle_slate()].tolist())
                recall_oracle.append(len(orc & set(b.item_ids[top].tolist())) / 10)
        slate = [str(s) for s in slate]
        in_drift.append(np.mean([cat_of.get(i) in drifted_cats for i in slate]))
        step = env.step_ids(slate)
        if arm.startswith("full") and arm != "full_nofb":  # full_nofb: online correction never fed (e2e's old arm)
            rec.record_feedback(slate_feedback(slate, r.request_id, step))
        ctrs.append(float(step.info["expected_reward"]) / len(slate))
        oracle.append(float(step.info["oracle_expected_reward"]) / len(slate))
        obs = env.reset() if step.done else step.observation
    out = {"ctr": float(np.mean(ctrs)), "se": float(np.std(ctrs) / np.sqrt(n)),
           "drifted_cat_share": float(np.mean(in_drift))}
    if cold:
        out["cold_share"] = float(np.mean(cold))
    if recall_oracle:
        out["oracle_items_in_top100"] = float(np.mean(recall_oracle))
    return out


def cmd_eval(args) -> None:
    data = catalog()
    items = pd.read_parquet(data / "items.parquet")
    cat_of = dict(zip(items["item_id"].astype(str), items["category"].astype(str), strict=True))
    drifted_cats = set(top_categories(data))
    state_file = WORK / (f"shop-day1-seed{args.seed}.pkl" if args.day1 else f"shop-seed{args.seed}.pkl")
    state = state_file.read_bytes()
    serve = json.loads((WORK / f"serve-seed{args.seed}.json").read_text())
    results = {}
    arms = args.arms.split(",")
    for name in args.names:
        res = {}
        for arm in arms:
            if arm == "oracle" and name != args.names[0]:
                continue
            env, obs = pickle.loads(state)
            extra = {"epsilon": 0.0, "cold_start_epsilon": 0.0} if arm == "full_noexp" else {}
            if arm == "full_cfg":  # serving config overrides from RECOV_CFG (JSON)
                extra = json.loads(os.environ["RECOV_CFG"])
            rec = make_rec(bundle_of(name), name, items, online=arm != "full_nool", **extra)
            t0 = time.time()
            res[arm] = stage_arm(arm, rec, env, obs, args.requests, cat_of, drifted_cats)
            res[arm]["s"] = round(time.time() - t0, 1)
            rec.close()
            print(name, arm, json.dumps(res[arm]), flush=True)
        results[name] = res
    pre, drifted = serve["pre_ctr"], results.get("champion", {}).get("full", {}).get("ctr")
    if drifted is not None:
        for res in results.values():
            if "full" in res:
                res["recovered_share"] = (res["full"]["ctr"] - drifted) / (pre - drifted)
    out = {"seed": args.seed, "day1": args.day1, "pre_ctr": pre, "requests": args.requests, "results": results}
    tag = args.tag or "-".join(args.names)
    (WORK / f"eval-{tag}-seed{args.seed}{'-day1' if args.day1 else ''}.json").write_text(json.dumps(out, indent=1))
    print(json.dumps(out))


def main() -> None:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--seed", type=int, default=7)
    r = sub.add_parser("retrain")
    r.add_argument("name")
    r.add_argument("--events", type=int, default=80_000)
    r.add_argument("--no-history", action="store_true")
    r.add_argument("--seed", type=int, default=7)
    r.add_argument("--set", action="append", default=[])
    e = sub.add_parser("eval")
    e.add_argument("names", nargs="+")
    e.add_argument("--seed", type=int, default=7)
    e.add_argument("--requests", type=int, default=600)
    e.add_argument("--arms", default="full,retrieval,ranking,rank_all,policy,oracle")
    e.add_argument("--day1", action="store_true", help="twin shops from the state at the drift onset")
    e.add_argument("--tag", default=None)
    args = p.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    {"serve": cmd_serve, "retrain": cmd_retrain, "eval": cmd_eval}[args.cmd](args)


if __name__ == "__main__":
    main()
