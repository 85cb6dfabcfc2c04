"""Benchmark: time and memory of each trainer stage on a shop-scale world (issue 17).

Generates the world (100,000 items, 500,000 users, 14 days at ``--sessions-rate`` sessions per user-day, default
0.0031: about 1.14M events, the shape of ``benchmarks/pipeline.py``'s larger shop-scale row), runs ExampleGen and
Transform through the library as the components do (kept in ``WORK`` between runs), then the TFRS trainer's stages
one by one as :func:`recflow.training.tfrs_trainer.train_tfrs` runs them (the inputs, the user contexts, retrieval,
the index, the hybrid blend, ranking, the history ranker, the report) and the TF-Agents trainer's stages as
:func:`recflow.policy.trainer.train_policy` runs them (the logged bandit data, training, export). Records each
stage's seconds, the process RSS after it and its peak (a psutil sampler every 0.1 s); a stage past
``--max-rss-gb`` stops the run and is recorded. Prints JSON and writes the run under ``--label`` (``before``:
main's code before the memory fix; ``after``) into ``benchmarks/results/trainer_stages.json``, keeping the other
labels' runs. ``--caps`` trains with the TFRS trainer's recommended training budgets (:data:`SHOP_CAPS`, recorded
in the run's ``overrides``); ``--sessions-rate 0.0082`` makes the same world with about 3 million events.

    .venv/bin/python benchmarks/trainer_stages.py --work /tmp/recflow-trainer-stages --label after
    .venv/bin/python benchmarks/trainer_stages.py --work /tmp/w3m --sessions-rate 0.0082 --caps --label capped_3m
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
from pathlib import Path
from typing import Any

import recflow  # noqa: F401  (configures the process before anything else)

# isort: split
from recflow.config import load_config
from recflow.io import atomic_path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine_info  # noqa: E402
from stage_sampler import StageSampler, shop_world  # noqa: E402

RESULT = Path(__file__).resolve().parent / "results" / "trainer_stages.json"
#: The TFRS trainer's training budgets recommended for a shop-scale config (``--caps``; docs/pipeline.md): each
#: model trains (and the sequence model early-stops) on a seeded sample of at most this many examples.
SHOP_CAPS = ("trainer.sequence_max_train_examples=150000", "trainer.sequence_max_eval_examples=20000",
             "trainer.ranking_max_train_impressions=200000", "trainer.history_ranking_max_train_impressions=100000",
             "trainer.history_ranking_max_eval_impressions=100000", "trainer.ranking_max_eval_impressions=100000")


class Stages(StageSampler):
    """The trainers' stages; the result keeps runs by label."""

    def __init__(self, max_rss_gb: float, out: Path, label: str, header: dict[str, Any]) -> None:
        self.out, self.label, self.header = out, label, header
        self.lock = threading.Lock()
        super().__init__(max_rss_gb)

    def write(self, finished: bool) -> None:
        with self.lock:
            previous = json.loads(self.out.read_text(encoding="utf-8")) if self.out.is_file() else {}
            runs = previous.get("runs", {})
            runs[self.label] = {**self.header, "finished": finished, "stages": self.rows,
                                "peak_mb": max((r.get("peak_mb", r.get("killed_above_mb", 0)) for r in self.rows),
                                               default=0),
                                "machine": machine_info(("tensorflow", "tf-agents"))}
            result = {"benchmark": "TFRS and TF-Agents trainer stages at shop scale (one process)", "runs": runs}
            with atomic_path(self.out) as tmp:
                tmp.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
            print(json.dumps(runs[self.label], indent=2))


def prepare(work: Path, cfg: Any, stages: Stages) -> None:
    """The world, ExampleGen and Transform, each once (a ``DONE`` marker keeps it between runs)."""
    from recflow.examplegen import run_example_gen
    from recflow.features.transform import run_transform
    from recflow.simulator import generate_dataset

    shop, ex, tr = (work / n for n in ("shop", "ex", "tr"))
    steps = ((shop, lambda: generate_dataset(cfg.simulator, shop, progress=False)),
             (ex, lambda: run_example_gen(shop, ex, cfg.example_gen, cfg.validation)),
             (tr, lambda: run_transform(ex, tr, cfg.transform)))
    for path, fn in steps:
        if not (path / "DONE").exists():
            stages.run(f"prepare {path.name}", fn)
            (path / "DONE").write_text("", encoding="utf-8")


def tfrs_stages(work: Path, cfg: Any, stages: Stages, model: Path) -> dict[str, Any]:
    """:func:`train_tfrs`'s stages one by one into ``model``; returns the trainer's report."""
    import tensorflow as tf

    from recflow.io import staged_dir
    from recflow.training import tfrs_trainer as tt
    from recflow.training.distribution import make_strategy

    config = cfg.trainer
    strategy, _ = make_strategy(config.distribution)
    tf.keras.utils.set_random_seed(config.seed)
    if config.deterministic_ops:
        tf.config.experimental.enable_op_determinism()
    inputs = stages.run("tfrs load_inputs", lambda: tt.load_inputs(work / "ex", work / "tr", config))
    with staged_dir(model) as tmp:
        run = tt.TrainerRun(tmp, config, strategy, report={"config": config.model_dump()})
        tt.run_stages(inputs, run, stages.run)  # the trainer's own stages, each timed and sampled
    return {"metrics": run.metrics, "notes": run.notes}


def policy_stages(work: Path, cfg: Any, stages: Stages, model: Path, out: Path) -> dict[str, Any]:
    """:func:`train_policy`'s stages one by one (the logged data, training, export: the same functions, so the
    exported policy and its ``policy_meta.json`` are the step's); returns its metrics."""
    import time

    from recflow import bundle_layout
    from recflow.policy.logged_data import read_embeddings
    from recflow.policy.trainer import export_policy, policy_meta, sampled_bandit_data, train_agent

    config = cfg.policy
    started = time.perf_counter()
    data, notes = stages.run("policy load_bandit_data", lambda: sampled_bandit_data(work / "ex", model, config))
    agent, epsilon, curve, steps = stages.run("policy train", lambda: train_agent(data, config))

    def export() -> None:
        item_ids, item_emb = read_embeddings(model / bundle_layout.ITEM_EMBEDDINGS_FILE, "item_id")
        meta = policy_meta(config, data, float(epsilon.numpy()), item_ids, curve, steps,
                           time.perf_counter() - started, notes)
        export_policy(agent, out, meta, item_emb)

    stages.run("policy export", export)
    return {"decisions": len(data), "steps": steps, "final_loss": curve[-1] if curve else None, "notes": notes}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="Data (reused when there) and trained models.")
    parser.add_argument("--label", default="after", help="The run's key in the result (before, after).")
    parser.add_argument("--sessions-rate", type=float, default=0.0031)
    parser.add_argument("--max-rss-gb", type=float, default=10.0)
    parser.add_argument("--prepare-only", action="store_true", help="Only generate the data, ExampleGen, Transform.")
    parser.add_argument("--out", type=Path, default=RESULT)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="Extra config overrides for the trainers (recorded in the result).")
    parser.add_argument("--caps", action="store_true",
                        help=f"Train with the recommended training budgets ({', '.join(SHOP_CAPS)}).")
    args = parser.parse_args(argv)
    work, overrides = args.work, shop_world(args.sessions_rate)
    extra = [*(SHOP_CAPS if args.caps else ()), *args.set]
    cfg = load_config(None, [f"paths.data_dir={work}", *overrides, *extra])
    header: dict[str, Any] = {"world": overrides, "overrides": extra,
                              "load_average_1m_at_start": os.getloadavg()[0]}
    stages = Stages(args.max_rss_gb, args.out, args.label, header)
    prepare(work, cfg, stages)
    if args.prepare_only:
        return 0
    import pandas as pd

    header["events"] = {s: int(pd.read_parquet(work / "ex" / f"{s}.parquet", columns=["user_id"]).shape[0])
                        for s in ("train", "eval", "test")}
    model, policy = work / f"model-{args.label}", work / f"policy-{args.label}"
    header["tfrs"] = tfrs_stages(work, cfg, stages, model)
    header["policy"] = policy_stages(work, cfg, stages, model, policy)
    stages.write(True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
