"""Benchmark: recommendation quality on the simulator's default world, offline and online.

Protocol:

* data: ``recflow data generate`` with the default world (2,000 users, 1,000 items, 14 days, seed 42), then the
  pipeline's ExampleGen (time split: train / eval / test at the 70% / 85% time quantiles) and Transform;
* offline: every method ranks the catalog for every test user with a relevant item (a click, add-to-cart or
  purchase in the test split on an item they did not interact with in train), without their train items;
  Recall@10, NDCG@10, MRR@10 -- the pipeline Evaluator's protocol -- plus the cold-start slices: ``new_users``
  (no train events) and ``new_items`` (recall of relevant items that have no train event);
* online: each method's top-10 (for the user of each request, train items not excluded) is shown to simulated
  users with ``ShopEnv.step_ids`` for ``--requests`` requests of fresh traffic (same world, traffic seed
  1000 + seed); CTR = clicks / shown items, conversion = purchases / clicks; the logging policy's logged CTR is
  the reference;
* methods: ``recflow`` (the pipeline's TFRS trainer with its default config) and the baselines
  ``popularity``, ``item_knn``, ``als`` (the Evaluator's default hyper-parameters), ``bpr``, ``ease``,
  ``content``, on the same split; seeds vary the models' initialisation (recflow, ALS, BPR) and the online
  traffic; the data set is fixed (one Transform run takes minutes on these CPUs);
* warm start: from the second seed on, ``recflow_warm`` is trained from the first seed's model
  (``trainer.warm_start_from``) and compared on time-to-quality (epochs / seconds until the eval top-10
  accuracy reaches 98% of the cold run's best) and final quality.

Prints JSON and a markdown table; updates ``benchmarks/results/quality.json`` (section ``simulator``).

    .venv/bin/python benchmarks/quality/simulator_quality.py --work /tmp/simq --seeds 42 43 44
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import recflow  # noqa: F401  (must come before TensorFlow)

# isort: split

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pandas as pd  # noqa: E402
from report import machine_info, markdown_table, summarize, update_results  # noqa: E402

from recflow.baselines import (  # noqa: E402
    ALSRecommender,
    BPRRecommender,
    ContentBasedRecommender,
    EASERecommender,
    ItemKNNRecommender,
    PopularityRecommender,
)
from recflow.config import load_config  # noqa: E402
from recflow.evaluation.evaluator import load_examples  # noqa: E402
from recflow.evaluation.metrics import aggregate, ground_truth, interacted_items, per_user_metrics  # noqa: E402
from recflow.simulator import SimulatorConfig, generate_dataset  # noqa: E402
from recflow.simulator.env import ShopEnv  # noqa: E402

K = 10


def prepare(work: Path) -> Path:
    """Generate the default world and run ExampleGen + Transform into ``work`` (skipped when already there)."""
    from recflow.examplegen import run_example_gen
    from recflow.features.transform import run_transform

    config = load_config(None)
    if not (work / "shop" / "events.parquet").is_file():
        generate_dataset(SimulatorConfig(), work / "shop", progress=False)
    if not (work / "examples" / "train.parquet").is_file():
        run_example_gen(work / "shop", work / "examples", config.example_gen, config.validation)
    if not (work / "transform" / "feature_spec.json").is_file():
        run_transform(work / "examples", work / "transform", config.transform)
    return work


def baselines(seed: int) -> dict[str, object]:
    als = load_config(None).evaluator.als
    return {
        "popularity": PopularityRecommender(),
        "item_knn": ItemKNNRecommender(neighbors=50),
        "als": ALSRecommender(factors=als.factors, iterations=als.iterations, regularization=als.regularization,
                              alpha=als.alpha, seed=seed),
        "bpr": BPRRecommender(factors=32, iterations=100, seed=seed),
        "ease": EASERecommender(l2=200.0),
        "content": ContentBasedRecommender(),
    }


def online(recommender: object, seed: int, requests: int, users: list[str]) -> dict[str, float]:
    """CTR and conversion when the recommender's top-10 is shown to simulated users (fresh traffic)."""
    env = ShopEnv(SimulatorConfig(), seed=1000 + seed, record_events=False)
    lists = dict(zip(users, recommender.recommend(users, K, {}), strict=True))  # type: ignore[attr-defined]
    shown = clicks = purchases = 0
    obs = env.reset(seed=1000 + seed)
    while shown < requests * K:
        slate = lists.get(obs.user_id) or recommender.recommend([obs.user_id], K, {})[0]  # type: ignore[attr-defined]
        result = env.step_ids(slate)
        shown += len(slate)
        clicks += int(result.info["clicks"])
        purchases += int(result.info["purchases"])
        obs = env.reset() if result.done else result.observation
    return {"ctr": clicks / shown, "conversion": purchases / clicks if clicks else 0.0}


def offline(recs: list[list[str]], users: list[str], truth: dict[str, set[str]], new_users: set[str],
            new_items: set[str]) -> dict[str, float]:
    per_user = per_user_metrics(recs, [truth[u] for u in users], K, user_ids=users)
    out = {key: aggregate(per_user)[key] for key in (f"ndcg@{K}", f"recall@{K}", f"mrr@{K}")}
    new_mask = per_user.index.isin(list(new_users))
    out[f"new_users.ndcg@{K}"] = float(per_user.loc[new_mask, f"ndcg@{K}"].mean()) if new_mask.any() else float("nan")
    hits = total = 0
    for user, items in zip(users, recs, strict=True):
        wanted = truth[user] & new_items
        hits += len(wanted & set(items[:K]))
        total += len(wanted)
    out[f"new_items.recall@{K}"] = hits / total if total else float("nan")
    return out


def time_to_quality(report: dict, target: float) -> dict[str, float]:
    """Epochs and seconds of retrieval training until the eval top-10 accuracy first reached ``target``."""
    curve = report["retrieval"]["history"]["val_factorized_top_k/top_10_categorical_accuracy"]
    epochs = next((i + 1 for i, v in enumerate(curve) if v >= target), float("nan"))
    per_epoch = report["retrieval"]["seconds"] / max(len(curve), 1)
    return {"epochs_to_quality": float(epochs), "seconds_to_quality": float(epochs) * per_epoch,
            "eval_top10_accuracy": max(curve)}


def run_seed(work: Path, seed: int, requests: int, champion: Path | None = None) -> dict[str, dict[str, float]]:
    from recflow.models import load_recommender
    from recflow.training.tfrs_trainer import train_tfrs

    train, held, items = load_examples(work / "examples", "test")
    exclude = interacted_items(train)
    truth = ground_truth(held, exclude)
    users = sorted(truth)
    new_users = set(users) - set(train["user_id"])
    new_items = set(items["item_id"]) - set(train["item_id"]) if items is not None else set()
    everyone = sorted(set(train["user_id"]) | set(held["user_id"]))
    out: dict[str, dict[str, float]] = {}
    trainer = load_config(None).trainer.model_copy(update={"seed": seed})
    started = time.perf_counter()
    result = train_tfrs(work / "examples", work / "transform", work / f"model_{seed}", trainer)
    model = load_recommender(work / f"model_{seed}")
    report = json.loads(result.training_json.read_text(encoding="utf-8"))
    target = 0.98 * max(report["retrieval"]["history"]["val_factorized_top_k/top_10_categorical_accuracy"])
    out["recflow"] = offline(model.recommend(users, K, exclude), users, truth, new_users, new_items) | online(
        model, seed, requests, everyone) | {
        "train_seconds": time.perf_counter() - started,
        "examples_per_second": report["retrieval"]["examples_per_second"]} | time_to_quality(report, target)
    if champion is not None:
        warm_cfg = trainer.model_copy(update={"warm_start_from": str(champion)})
        started = time.perf_counter()
        warm = train_tfrs(work / "examples", work / "transform", work / f"model_{seed}_warm", warm_cfg)
        warm_report = json.loads(warm.training_json.read_text(encoding="utf-8"))
        warm_model = load_recommender(work / f"model_{seed}_warm")
        out["recflow_warm"] = offline(warm_model.recommend(users, K, exclude), users, truth, new_users,
                                      new_items) | {"train_seconds": time.perf_counter() - started} | \
            time_to_quality(warm_report, target)
    for name, baseline in baselines(seed).items():
        baseline.fit(train, items)  # type: ignore[attr-defined]
        recs = baseline.recommend(users, K, exclude)  # type: ignore[attr-defined]
        out[name] = offline(recs, users, truth, new_users, new_items) | online(baseline, seed, requests, everyone)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="work directory (data, examples, transform)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    parser.add_argument("--requests", type=int, default=3000, help="simulated requests per method and seed")
    parser.add_argument("--no-write", action="store_true", help="print only; do not update the results file")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    info = machine_info(("numpy", "tensorflow", "tensorflow-recommenders", "implicit"))
    work = prepare(args.work)
    # The first seed's model plays the champion that later seeds warm-start from (same data: the retraining
    # case where little changed; time-to-quality = epochs until 98% of the cold run's best eval top-10).
    runs = [run_seed(work, s, args.requests, None if i == 0 else work / f"model_{args.seeds[0]}")
            for i, s in enumerate(args.seeds)]
    methods = {m: summarize([r[m] for r in runs if m in r]) for m in {k for r in runs for k in r}}
    methods = {m: methods[m] for m in ["recflow", "recflow_warm", *[k for k in runs[0] if k != "recflow"]]
               if m in methods}
    logged = pd.read_parquet(work / "shop" / "events.parquet", columns=["event_type"])["event_type"].value_counts()
    doc: dict[str, object] = {
        "protocol": __doc__.split("Protocol:")[1].split("Prints JSON")[0].strip(),
        "seeds": args.seeds,
        "requests_per_method": args.requests,
        **methods,
        "logging_policy": {"ctr": float(logged.get("click", 0) / logged.get("impression", 1)),
                           "conversion": float(logged.get("purchase", 0) / max(logged.get("click", 0), 1))},
        "seconds": time.perf_counter() - started,
        "machine": info,
    }
    metrics = [f"ndcg@{K}", f"recall@{K}", f"mrr@{K}", "ctr", "conversion", f"new_users.ndcg@{K}",
               f"new_items.recall@{K}", "epochs_to_quality", "seconds_to_quality", "examples_per_second"]
    md = (f"Simulator default world (seeds {args.seeds}, {args.requests} simulated requests per method and seed; "
          f"logging policy CTR {doc['logging_policy']['ctr']:.4f}).\n\n"  # type: ignore[index]
          f"{markdown_table(methods, metrics)}\n")
    print(json.dumps(doc, indent=2, default=float))
    print(md)
    if not args.no_write:
        update_results("simulator", json.loads(json.dumps(doc, default=float)), md)
    return 0


if __name__ == "__main__":
    sys.exit(main())  # `import recflow` installed the exit guard against the post-Beam teardown crash
