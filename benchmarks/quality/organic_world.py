"""Benchmark: the organic-views world, served online to new users, recflow against count baselines.

Protocol (issue 13, "organic_world"), per world seed:

1. ``recflow data generate --world organic`` (the simulator's ``organic`` preset, docs/simulator.md: mostly organic
   views, uniformly random logged recommendations with ~1% clicks, 10 products, 1,000 training users).
2. ``recflow pipeline run`` on it (KFP local runner, the default configuration apart from the overrides recorded
   in the JSON's ``pipeline_overrides``), pushing a bundle to a fresh model store.
3. Online: ``--users`` NEW users of ``OrganicShop`` (unseen at training time; they arrive with the views of their
   first visit) are served until they leave. Every method meets the same users with the same views at the same
   times (the shop's browsing stream does not depend on what is shown); each request carries the user's whole
   history. Methods: ``recflow`` (the pushed bundle through :class:`serving.Recommender` with the default serving
   configuration, feedback posted back), the same bundle with ``serving.policy_rerank`` flipped
   (``recflow_policy_rerank_on|off``: is the policy layer worth its place?) and without exploration
   (``recflow_no_exploration``: what the default epsilon costs online), the count baselines fitted on the
   training log (``most_viewed``, ``most_recent``, ``coview``: their ``recommend_from_history``; ``popularity``:
   the count of past clicks per item) and ``random``. The same users are also served over HTTP by
   ``recflow serve`` on the same store (``--http-users`` of them), and the items are compared request by request
   with the Python API's. ``oracle`` shows the products of highest true click probability for each user's
   current taste (ground truth no method sees): the ceiling of the world. ``history_bayes`` shows the products
   of highest *posterior* expected click probability given what the user's requests hold (their views and the
   clicks on what it showed), computed with the true world model (a particle filter,
   ``recflow.simulator.organic.HistoryBayesRecommender``): the ceiling of any recommender that reads the
   requests, which must learn that model from the training log instead.
4. The figure of merit is the *expected* click rate: the mean of the simulator's true click probability of each
   shown item (far less noisy than sampled clicks, which are reported too). ``ratio_to_best_baseline`` is
   recflow's expected CTR over the best count baseline's (popularity included); ``policy_lift`` is the bundle with
   the policy's re-ranking over the bundle without it; per-user paired t-test and Wilcoxon p-values compare
   recflow with that baseline. ``history_bayes_to_best_baseline`` (with a 95% bootstrap interval over users)
   says whether 1.2x that baseline is attainable from the requests at all; ``target.attainable_seeds`` lists
   the seeds where it is, ``target.unattainable_seeds_ci95`` those where even the interval lies below 1.2x.

    .venv/bin/python benchmarks/quality/organic_world.py --seeds 0 1 2 --work /tmp/organic

Prints JSON and a markdown table; updates ``benchmarks/results/quality.json`` (section ``organic_world``).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import recflow  # noqa: F401  (must come before TensorFlow)

# isort: split

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
import serving  # noqa: E402,F401  (the package, before report.py puts benchmarks/ (and its serving.py) on the path)

sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from report import machine_info, update_results  # noqa: E402

from recflow.baselines import (  # noqa: E402
    CoViewRecommender,
    MostRecentRecommender,
    MostViewedRecommender,
    PopularityRecommender,
)
from recflow.config import load_config  # noqa: E402
from recflow.evaluation.off_policy import bootstrap_ratio  # noqa: E402
from recflow.evaluation.significance import paired_tests  # noqa: E402
from recflow.simulator import OrganicShop, SimulatorConfig  # noqa: E402
from recflow.simulator.organic import HistoryBayesRecommender, OrganicUser  # noqa: E402

#: Overrides of the default configuration for the pipeline run, recorded in the results. The Evaluator must not
#: exclude items a user already viewed (this shop's clicks are mostly on viewed products), and the lift rules
#: are off so that the candidate is pushed and measured online whatever its offline verdict, which is recorded
#: per seed (``blessed`` and ``blessing_reasons`` of the same run with the rules on are not available: the
#: reasons below are what the relaxed run reports; ``offline`` has the candidate's and baselines' NDCG@10).
PIPELINE_OVERRIDES: tuple[str, ...] = (
    "evaluator.exclude_train_items=false",
    "evaluator.thresholds.min_lift_over_best_baseline=null",
    "evaluator.thresholds.min_lift_over_popularity=null",
)
#: The baselines recflow must beat: per-user view counts, recency and co-views, and the count of past clicks per
#: item (``popularity``; the issue's first measurement found it ahead of recflow, so it is in the comparison).
COUNT_BASELINES = ("most_viewed", "most_recent", "coview", "popularity")
#: The count baselines that read the user's own history (the issue's item 3).
PER_USER_BASELINES = ("most_viewed", "most_recent", "coview")

Serve = Callable[[str, list[dict[str, Any]], int], list[str]]
#: The HTTP API takes at most this many history events per request (serving/app.py); recflow gets the latest
#: ones through both APIs, the count baselines the whole history (which can only help them).
REQUEST_HISTORY = 100


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def train(seed: int, work: Path, items: int, users: int, extra: Sequence[str], reuse: bool = False
          ) -> dict[str, Any]:
    """Generate the world's batch log and run the pipeline on it; returns paths and the run's verdict.
    ``reuse``: keep a previous run's data, store and verdict in ``work`` (same seed and arguments)."""
    from trained_world import generate_and_train

    data, store = work / f"data-{seed}", work / f"store-{seed}"
    sim = SimulatorConfig(world="organic", seed=seed).model_copy(
        update={"organic": SimulatorConfig().organic.model_copy(update={"items": items, "users": users})})
    run = generate_and_train(sim, data, store, work / f"run-{seed}", work / f"trained-{seed}.json",
                             [*PIPELINE_OVERRIDES, *extra], reuse)
    blessing = run.get("blessing") or {}
    best = blessing.get("best_baseline") or {}
    offline = {"candidate_ndcg@10": (blessing.get("metrics") or {}).get("ndcg@10"),
               "best_baseline": best.get("name"), "best_baseline_ndcg@10": best.get("value")}
    return {"pipeline_seconds": run["pipeline_seconds"], "blessed": run["blessed"],
            "blessing_reasons": blessing.get("reasons", []), "blessing_checks": blessing.get("checks", []),
            "offline": offline, "run_dir": run["run_dir"], "data": data, "store": store}


def serve_users(shop: OrganicShop, n_users: int, slate: int, serve: Serve,
                feedback: Callable[[list[str], Any], None] | None = None, oracle: bool = False,
                pick: Callable[[OrganicUser, int], list[str]] | None = None) -> dict[str, Any]:
    """Serve ``n_users`` new users until they leave; per-user expected clicks and requests, and every slate.
    ``oracle``: ignore ``serve`` and show the products of highest true click probability for the user's current
    taste (the ground truth no recommender sees: the ceiling of this world). ``pick``: ignore ``serve`` and ask
    ``pick(user, k)`` (a ceiling that reads the shop's user object, :class:`HistoryBayesRecommender`)."""
    expected = np.zeros(n_users)
    clicks = np.zeros(n_users)
    requests = np.zeros(n_users)
    slates: list[list[str]] = []
    ids = np.asarray(shop.item_ids, dtype=object)
    for u in range(n_users):
        user = shop.user(u)
        while not user.done:
            if oracle:
                items = [str(i) for i in ids[np.argsort(-shop.world.first_slot_probabilities(user.latent),
                                                        kind="stable")[:slate]]]
            elif pick is not None:
                items = pick(user, slate)
            else:
                items = serve(user.user_id, list(user.history), slate)
            fb = shop.show(user, items)
            slates.append(list(items))
            expected[u] += float(np.sum(fb.probabilities))
            clicks[u] += fb.n_clicks
            requests[u] += 1
            if feedback is not None:
                feedback(items, fb)
    return {"expected": expected, "clicks": clicks, "requests": requests, "slates": slates}


def summarize_method(run: dict[str, Any]) -> dict[str, float]:
    n = float(run["requests"].sum())
    return {"expected_ctr": float(run["expected"].sum() / n), "sampled_ctr": float(run["clicks"].sum() / n),
            "requests": int(n)}


def recflow_api(store: Path, **overrides: Any) -> tuple[Serve, Callable[[list[str], Any], None], Any]:
    """The pushed bundle through :class:`serving.Recommender` with the default serving configuration (plus
    the ``overrides`` of its fields)."""
    from serving.recommender import Recommender

    config = load_config().serving.model_copy(update=overrides)
    rec = Recommender.load(store, config)
    last: dict[str, str] = {}

    def serve(user_id: str, history: list[dict[str, Any]], k: int) -> list[str]:
        out = rec.recommend(user_id, None, k, history[-REQUEST_HISTORY:])
        last["request_id"] = out.request_id
        return [s.item_id for s in out.items]

    def feedback(items: list[str], fb: Any) -> None:
        events = [{"event_type": "impression", "item_id": i, "request_id": last["request_id"]} for i in items]
        events += [{"event_type": "click", "item_id": i, "request_id": last["request_id"]}
                   for i, hit in zip(items, fb.clicks, strict=True) if hit]
        rec.record_feedback(events)

    return serve, feedback, rec


class HttpClient:
    """``recflow serve`` on the store, on a free loopback port, with an API key; stopped by :meth:`close`."""

    def __init__(self, store: Path, log_path: Path) -> None:
        self.port = _free_port()
        self.key = "organic-benchmark"
        env = dict(os.environ, RECFLOW_API_KEY=self.key)
        self._log = open(log_path, "w", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(
            [str(ROOT / ".venv" / "bin" / "recflow"), "serve", "--models", str(store), "--host", "127.0.0.1",
             "--port", str(self.port), "--feedback-dir", str(log_path.with_suffix(".feedback"))],
            stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"recflow serve exited with {self.proc.returncode}; see {log_path}")
            try:
                self._get("/healthz")
                break
            except OSError:
                time.sleep(0.5)
        else:
            raise RuntimeError(f"recflow serve did not become ready in 300 s; see {log_path}")
        self.last: dict[str, str] = {}

    def _get(self, path: str) -> Any:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=10) as r:
            return json.loads(r.read())

    def _post(self, path: str, body: Any) -> Any:
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=json.dumps(body).encode(),
                                     headers={"content-type": "application/json", "x-api-key": self.key})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as exc:
            raise RuntimeError(f"POST {path}: HTTP {exc.code}: {exc.read().decode(errors='replace')[:500]}") from None

    def serve(self, user_id: str, history: list[dict[str, Any]], k: int) -> list[str]:
        out = self._post("/v1/recommendations", {"user_id": user_id, "k": k,
                                                 "history": history[-REQUEST_HISTORY:]})
        self.last["request_id"] = out["request_id"]
        return [s["item_id"] for s in out["items"]]

    def feedback(self, items: list[str], fb: Any) -> None:
        events = [{"event_type": "impression", "item_id": i, "request_id": self.last["request_id"]} for i in items]
        events += [{"event_type": "click", "item_id": i, "request_id": self.last["request_id"]}
                   for i, hit in zip(items, fb.clicks, strict=True) if hit]
        self._post("/v1/feedback", {"events": events})

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self._log.close()


def baseline_servers(train_events: pd.DataFrame, items: pd.DataFrame, seed: int) -> dict[str, Serve]:
    out: dict[str, Serve] = {}
    for name, model in (("most_viewed", MostViewedRecommender()), ("most_recent", MostRecentRecommender()),
                        ("coview", CoViewRecommender())):
        model.fit(train_events, items)

        def serve(_user: str, history: list[dict[str, Any]], k: int, m: Any = model) -> list[str]:
            return m.recommend_from_history([h["item_id"] for h in history], k,
                                            event_types=[h["event_type"] for h in history],
                                            timestamps=[h["timestamp"] for h in history])
        out[name] = serve
    popularity = PopularityRecommender().fit(train_events, items)
    out["popularity"] = lambda _u, _h, k: popularity.fill([], k, set())
    catalog = items["item_id"].astype(str).to_numpy()
    rng = np.random.default_rng([seed, 99])
    out["random"] = lambda _u, _h, k: [str(i) for i in rng.choice(catalog, size=k, replace=False)]
    return out


def run_seed(seed: int, args: argparse.Namespace) -> dict[str, Any]:
    work = args.work
    trained = train(seed, work, args.items, args.train_users, args.set, args.reuse)
    data = trained["data"]
    events = pd.read_parquet(data / "events.parquet")
    items = pd.read_parquet(data / "items.parquet")
    sim = SimulatorConfig(world="organic", seed=seed)
    organic = sim.organic.model_copy(update={"items": args.items, "users": args.train_users})
    slate = organic.slate_size
    methods: dict[str, dict[str, Any]] = {}
    runs: dict[str, dict[str, Any]] = {}

    serve, feedback, rec = recflow_api(trained["store"])
    started = time.perf_counter()
    runs["recflow"] = serve_users(OrganicShop(organic, seed=seed, start_date=sim.start_date), args.users, slate,
                                  serve, feedback)
    api_seconds = time.perf_counter() - started
    rec.close()
    # The same bundle with the policy layer's re-ranking switched the other way (issue 13 item 5: the policy
    # must earn its place): ``recflow_policy_rerank_<on|off>``.
    flipped = not load_config().serving.policy_rerank
    serve, feedback, rec = recflow_api(trained["store"], policy_rerank=flipped)
    other = f"recflow_policy_rerank_{'on' if flipped else 'off'}"
    runs[other] = serve_users(OrganicShop(organic, seed=seed, start_date=sim.start_date), args.users, slate,
                              serve, feedback)
    rec.close()
    # The default bundle without exploration (epsilon 0 for every user): what exploring costs online.
    serve, feedback, rec = recflow_api(trained["store"], epsilon=0.0, new_user_epsilon=0.0)
    runs["recflow_no_exploration"] = serve_users(OrganicShop(organic, seed=seed, start_date=sim.start_date),
                                                 args.users, slate, serve, feedback)
    rec.close()
    for name, fn in baseline_servers(events, items, seed).items():
        runs[name] = serve_users(OrganicShop(organic, seed=seed, start_date=sim.start_date), args.users, slate, fn)
    runs["oracle"] = serve_users(OrganicShop(organic, seed=seed, start_date=sim.start_date), args.users, slate,
                                 lambda _u, _h, _k: [], oracle=True)
    # The history-Bayes ceiling: what the user's requests allow at best (the true model's posterior).
    shop = OrganicShop(organic, seed=seed, start_date=sim.start_date)
    bayes = HistoryBayesRecommender(shop, args.particles)
    runs["history_bayes"] = serve_users(shop, args.users, slate, lambda _u, _h, _k: [],
                                        lambda _items, fb: bayes.feedback(fb), pick=bayes.slate)
    http: dict[str, Any] = {"users": 0}
    if args.http_users > 0:
        client = HttpClient(trained["store"], work / f"serve-{seed}.log")
        try:
            n = min(args.http_users, args.users)
            h = serve_users(OrganicShop(organic, seed=seed, start_date=sim.start_date), n, slate, client.serve,
                            client.feedback)
        finally:
            client.close()
        api_slates = runs["recflow"]["slates"][: len(h["slates"])]
        same = sum(a == b for a, b in zip(api_slates, h["slates"], strict=True))
        http = {"users": n, "requests": len(h["slates"]), "same_items_as_api": same,
                **{f"http_{k}": v for k, v in summarize_method(h).items()}}
    for name, run in runs.items():
        methods[name] = summarize_method(run)
    best = max(COUNT_BASELINES, key=lambda m: methods[m]["expected_ctr"])
    best_per_user = max(PER_USER_BASELINES, key=lambda m: methods[m]["expected_ctr"])
    # The ceiling's ratio with a 95% bootstrap interval over the users (each method meets the same users with
    # the same number of requests, so the ratio of their expected clicks is the ratio of their CTRs).
    ceiling = {name: bootstrap_ratio(runs["history_bayes"]["expected"], runs[m]["expected"], seed=seed)
               for name, m in (("best", best), ("best_per_user", best_per_user))}
    per_user = {m: runs[m]["expected"] / np.maximum(runs[m]["requests"], 1) for m in runs}
    test = paired_tests(per_user["recflow"], per_user[best])
    with_policy, without = (("recflow", other) if not flipped else (other, "recflow"))
    policy_test = paired_tests(per_user[with_policy], per_user[without])
    return {
        "seed": seed,
        "methods": methods,
        "best_baseline": best,
        "ratio_to_best_baseline": methods["recflow"]["expected_ctr"] / methods[best]["expected_ctr"],
        "ratio_to_random": methods["recflow"]["expected_ctr"] / methods["random"]["expected_ctr"],
        "ratio_to_oracle": methods["recflow"]["expected_ctr"] / methods["oracle"]["expected_ctr"],
        "best_baseline_to_oracle": methods[best]["expected_ctr"] / methods["oracle"]["expected_ctr"],
        "ratio_to_history_bayes": methods["recflow"]["expected_ctr"] / methods["history_bayes"]["expected_ctr"],
        "history_bayes_to_best_baseline": ceiling["best"][0],
        "history_bayes_to_best_baseline_ci95": list(ceiling["best"][1:]),
        "history_bayes_to_best_per_user_baseline": ceiling["best_per_user"][0],
        "history_bayes_to_best_per_user_baseline_ci95": list(ceiling["best_per_user"][1:]),
        "ratio_to_best_per_user_baseline": methods["recflow"]["expected_ctr"] / max(
            methods[m]["expected_ctr"] for m in PER_USER_BASELINES),
        "vs_best_baseline": {"t_test_p": test.t_p, "wilcoxon_p": test.wilcoxon_p, "users": test.n,
                             "mean_difference_per_request": test.mean_diff},
        "policy_rerank_default": not flipped,
        "policy_lift": {"ratio": methods[with_policy]["expected_ctr"] / methods[without]["expected_ctr"],
                        "t_test_p": policy_test.t_p, "wilcoxon_p": policy_test.wilcoxon_p},
        "http": http,
        "blessed": trained["blessed"],
        "blessing_reasons": trained["blessing_reasons"],
        "blessing_checks": trained["blessing_checks"],
        "offline": trained["offline"],
        "pipeline_seconds": trained["pipeline_seconds"],
        "serving_seconds": api_seconds,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--users", type=int, default=1000, help="new online users per world seed")
    parser.add_argument("--http-users", type=int, default=100, help="of them, also served over HTTP")
    parser.add_argument("--items", type=int, default=10)
    parser.add_argument("--train-users", type=int, default=1000)
    parser.add_argument("--particles", type=int, default=4000, help="particles of the history-Bayes ceiling")
    parser.add_argument("--work", type=Path, default=Path("/tmp/recflow-organic"))
    parser.add_argument("--set", action="append", default=[], help="extra config override for the pipeline run")
    parser.add_argument("--no-write", action="store_true", help="print only; do not update the results file")
    parser.add_argument("--reuse", action="store_true", help="reuse the pipeline runs already in --work")
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    per_seed = [run_seed(s, args) for s in args.seeds]
    ratios = [r["ratio_to_best_baseline"] for r in per_seed]
    doc: dict[str, Any] = {
        "protocol": __doc__.split("Protocol (issue 13, \"organic_world\"), per world seed:")[1]
        .split("    .venv")[0].strip(),
        "world": {"preset": "organic", "items": args.items, "train_users": args.train_users,
                  "online_users_per_seed": args.users},
        "pipeline_overrides": [*PIPELINE_OVERRIDES, *args.set],
        "per_seed": per_seed,
        "ratio_to_best_baseline": {"per_seed": ratios, "median": float(np.median(ratios)),
                                   "min": float(np.min(ratios))},
        "target": {"ratio_to_best_baseline": 1.2, "met": bool(min(ratios) >= 1.2),
                   # Seeds on which 1.2x is attainable at all from the requests: the history-Bayes ceiling
                   # (the true model's posterior given each user's history) reaches it.
                   "attainable_seeds": [r["seed"] for r in per_seed if r["history_bayes_to_best_baseline"] >= 1.2],
                   "attainable_seeds_per_user_baselines": [
                       r["seed"] for r in per_seed if r["history_bayes_to_best_per_user_baseline"] >= 1.2],
                   # ... and those on which even the ceiling's 95% interval lies below 1.2x.
                   "unattainable_seeds_ci95": [
                       r["seed"] for r in per_seed if r["history_bayes_to_best_baseline_ci95"][1] < 1.2],
                   "unattainable_seeds_per_user_baselines_ci95": [
                       r["seed"] for r in per_seed if r["history_bayes_to_best_per_user_baseline_ci95"][1] < 1.2]},
        "seconds": time.perf_counter() - started,
        "machine": machine_info(("numpy", "tensorflow", "tensorflow-recommenders")),
    }
    names = list(per_seed[0]["methods"])
    rows = ["| seed | " + " | ".join(names) + " | best count baseline | recflow / best | p (t / Wilcoxon) |",
            "|---" * (len(names) + 4) + "|"]
    for r in per_seed:
        cells = " | ".join(f"{r['methods'][m]['expected_ctr']:.4f}" for m in names)
        v = r["vs_best_baseline"]
        rows.append(f"| {r['seed']} | {cells} | {r['best_baseline']} | {r['ratio_to_best_baseline']:.3f} | "
                    f"{v['t_test_p']:.2g} / {v['wilcoxon_p']:.2g} |")
    md = (f"Organic-views world ({args.items} products, {args.train_users} training users, {args.users} new "
          f"online users per seed); expected CTR of the shown items. Target: recflow >= 1.2 x the best count "
          f"baseline on every seed.\n\n" + "\n".join(rows) + "\n")
    print(json.dumps(doc, indent=2, default=float))
    print(md)
    if not args.no_write:
        update_results("organic_world", doc, md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
