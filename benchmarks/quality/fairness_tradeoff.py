"""Benchmark: how much accuracy fair-exposure re-ranking costs, and how much long-tail exposure it buys.

Protocol (simulator data, the default world: 2,000 users, 1,000 items, 14 days; one world per seed):

1. ``generate_dataset(SimulatorConfig(seed=s))`` -> ``run_example_gen`` with the default config (80/10/10 split
   by time), so the held-out split and exclusions are the Evaluator's.
2. Base recommender: the ALS baseline with the Evaluator's defaults (``EvaluatorConfig().als``), fitted on
   train (``--base als``); or the TFRS two-tower model trained by ``train_tfrs`` on Transform's output
   (``--base tfrs``, minutes per seed on 2 cores).
3. For each re-ranking method (``xquad`` for long-tail exposure, ``mmr`` for category diversity) and each
   strength, ``evaluate_recommenders`` with ``reranking: {method, strength, candidates}`` and the popularity
   baseline beside it; k = 10 on the test split, the same users for every strength.

Reports NDCG@10, Recall@10, long-tail share (slots on items outside the head holding 80% of the training
interactions), novelty, category diversity, exposure Gini and catalog coverage per (method, strength): means
over seeds with ``_std`` siblings, plus the relative NDCG change against strength 0. Prints JSON and a markdown
table, writes ``benchmarks/results/fairness.json`` and ``benchmarks/results/fairness.png``.

    .venv/bin/python benchmarks/quality/fairness_tradeoff.py --seeds 1 2 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import recflow  # noqa: F401  (configures the process before anything else)

# isort: split
from recflow.config import ValidationConfig
from recflow.evaluation.config import EvaluatorConfig
from recflow.evaluation.evaluator import UNRERANKED, evaluate_recommenders
from recflow.examplegen import ExampleGenConfig, run_example_gen
from recflow.io import atomic_path
from recflow.recommender import Recommender
from recflow.reranking import RerankingConfig
from recflow.simulator import SimulatorConfig, generate_dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from machine import machine_info

RESULTS = Path(__file__).resolve().parents[1] / "results"
K = 10
METRICS = ("ndcg", "recall", "long_tail_share", "novelty", "diversity", "exposure_gini", "coverage")
DEFAULT_STRENGTHS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8)


def base_recommender(kind: str, examples: Path, work: Path, seed: int) -> Recommender:
    """The model whose lists are re-ranked: the ALS baseline, or a freshly trained TFRS two-tower model."""
    import pandas as pd

    if kind == "als":
        from recflow.baselines import ALSRecommender

        als = EvaluatorConfig().als
        model = ALSRecommender(factors=als.factors, iterations=als.iterations, regularization=als.regularization,
                               alpha=als.alpha, seed=seed)
        items = pd.read_parquet(examples / "items.parquet")
        return model.fit(pd.read_parquet(examples / "train.parquet"), items)
    from recflow.features.transform import TransformConfig, run_transform
    from recflow.models import load_recommender
    from recflow.training.tfrs_trainer import TrainerConfig, train_tfrs

    run_transform(examples, work / "tf", TransformConfig())
    train_tfrs(examples, work / "tf", work / "model", TrainerConfig(seed=seed))
    return load_recommender(work / "model")


def sweep_one_seed(seed: int, base_kind: str, methods: list[str], strengths: list[float],
                   candidates: int) -> list[dict[str, Any]]:
    """Rows (method, strength, metrics) of one simulated world."""
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="fairness-") as tmp:
        work = Path(tmp)
        generate_dataset(SimulatorConfig(seed=seed), work / "raw", progress=False)
        run_example_gen(work / "raw", work / "ex", ExampleGenConfig(), ValidationConfig())
        base = base_recommender(base_kind, work / "ex", work, seed)
        for method in methods:
            for strength in strengths:
                config = EvaluatorConfig(
                    k=K, baselines=("popularity",), seed=seed,
                    reranking=RerankingConfig(method=method, strength=strength, candidates=candidates))
                started = time.perf_counter()
                result = evaluate_recommenders(work / "ex", base, config)
                seconds = time.perf_counter() - started
                cand = result.candidate.metrics
                row = {"seed": seed, "method": method, "strength": strength, "seconds": seconds,
                       "users": int(cand["users"]), "head_items": int(result.long_tail["head_items"]),
                       **{m: cand.get(f"{m}@{K}", float("nan")) for m in METRICS}}
                pop = result.methods["popularity"].metrics
                row.update({f"popularity.{m}": pop.get(f"{m}@{K}", float("nan")) for m in METRICS})
                if UNRERANKED in result.methods:
                    row["p_worse_than_unreranked"] = result.significance["without_reranking"].t_p_worse
                rows.append(row)
                print(f"seed {seed} {method} {strength:.2f}: ndcg {row['ndcg']:.4f} long-tail "
                      f"{row['long_tail_share']:.3f} diversity {row['diversity']:.3f} ({seconds:.1f}s)",
                      file=sys.stderr, flush=True)
    return rows


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarise(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, float]]]:
    """Per method, one entry per strength: means over seeds with ``_std`` siblings and the NDCG change vs 0."""
    out: dict[str, list[dict[str, float]]] = {}
    for method in dict.fromkeys(r["method"] for r in rows):
        entries = []
        for strength in sorted({r["strength"] for r in rows if r["method"] == method}):
            group = [r for r in rows if r["method"] == method and r["strength"] == strength]
            entry: dict[str, float] = {"strength": strength, "seeds": len(group)}
            for m in METRICS:
                mean, std = _mean_std([r[m] for r in group])
                entry[f"{m}@{K}"], entry[f"{m}@{K}_std"] = mean, std
            entries.append(entry)
        base = entries[0]
        for e in entries:
            e[f"ndcg@{K}_change"] = e[f"ndcg@{K}"] / base[f"ndcg@{K}"] - 1.0 if base[f"ndcg@{K}"] else float("nan")
            e[f"long_tail_share@{K}_change"] = e[f"long_tail_share@{K}"] - base[f"long_tail_share@{K}"]
        out[method] = entries
    return out


def plot(summary: dict[str, list[dict[str, float]]], popularity: dict[str, float], path: Path) -> None:
    """NDCG@10 against long-tail share, one line per method, points labelled with the strength."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.8))
    ax = fig.subplots()
    for method, entries in summary.items():
        x = [e[f"long_tail_share@{K}"] for e in entries]
        y = [e[f"ndcg@{K}"] for e in entries]
        ax.errorbar(x, y, yerr=[e[f"ndcg@{K}_std"] for e in entries], marker="o", capsize=3, label=method)
        for e, xi, yi in zip(entries, x, y, strict=True):
            ax.annotate(f"{e['strength']:g}", (xi, yi), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.scatter([popularity[f"long_tail_share@{K}"]], [popularity[f"ndcg@{K}"]], marker="x", color="black",
               label="popularity")
    ax.set_xlabel(f"long-tail share of top-{K} slots")
    ax.set_ylabel(f"NDCG@{K}")
    ax.set_title("Re-ranking strength: accuracy vs long-tail exposure (simulator, mean over seeds)")
    ax.grid(alpha=0.3)
    ax.legend()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")


def markdown(summary: dict[str, list[dict[str, float]]]) -> str:
    """The sweep as a markdown table."""
    header = (f"| method | strength | NDCG@{K} | change | long-tail share | novelty | diversity | exposure Gini "
              "| coverage |")
    lines = [header, "|---|---|---|---|---|---|---|---|---|"]
    for method, entries in summary.items():
        for e in entries:
            lines.append(
                f"| {method} | {e['strength']:g} | {e[f'ndcg@{K}']:.4f} ± {e[f'ndcg@{K}_std']:.4f} "
                f"| {e[f'ndcg@{K}_change']:+.1%} | {e[f'long_tail_share@{K}']:.3f} "
                f"| {e[f'novelty@{K}']:.2f} | {e[f'diversity@{K}']:.3f} | {e[f'exposure_gini@{K}']:.3f} "
                f"| {e[f'coverage@{K}']:.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--base", choices=("als", "tfrs"), default="als")
    parser.add_argument("--methods", nargs="+", choices=("xquad", "mmr"), default=["xquad", "mmr"])
    parser.add_argument("--strengths", type=float, nargs="+", default=list(DEFAULT_STRENGTHS))
    parser.add_argument("--candidates", type=int, default=100, help="pool re-ranked per user")
    parser.add_argument("--out", type=Path, default=RESULTS / "fairness.json")
    args = parser.parse_args(argv)

    info = machine_info()
    started = time.perf_counter()
    rows = [r for seed in args.seeds
            for r in sweep_one_seed(seed, args.base, args.methods, sorted(set(args.strengths)), args.candidates)]
    summary = summarise(rows)
    popularity = {}
    for m in METRICS:
        popularity[f"{m}@{K}"], popularity[f"{m}@{K}_std"] = _mean_std(
            [r[f"popularity.{m}"] for r in rows if r["strength"] == min(args.strengths)
             and r["method"] == args.methods[0]])
    png = args.out.with_suffix(".png")
    plot(summary, popularity, png)
    result = {
        "benchmark": "fair-exposure re-ranking trade-off (accuracy vs long-tail exposure)",
        "protocol": {
            "data": "simulator default world (2,000 users, 1,000 items, 14 days), one world per seed",
            "split": "ExampleGen default: 80/10/10 by time; evaluated on test, train items excluded",
            "k": K,
            "base": args.base,
            "candidates": args.candidates,
            "long_tail": "items outside the head = fewest most-interacted items holding 80% of train interactions",
            "seeds": args.seeds,
        },
        "methods": summary,
        "popularity": popularity,
        "runs": rows,
        "plot": str(png.relative_to(Path(__file__).resolve().parents[2])) if png.is_relative_to(
            Path(__file__).resolve().parents[2]) else str(png),
        "seconds": round(time.perf_counter() - started, 1),
        "machine": info,
    }
    text = json.dumps(result, indent=2, allow_nan=False, default=float)
    with atomic_path(args.out) as tmp:
        tmp.write_text(text + "\n", encoding="utf-8")
    print(text)
    print(markdown(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
