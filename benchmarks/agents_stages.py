"""Benchmark: time and memory of the TF-Agents trainer's stages on a shop-scale world (issue 17).

Generates the world (100,000 items, 500,000 users, 14 days at ``--sessions-rate`` sessions per user-day; 0.0031
gives about 1.14M events), runs ExampleGen, Transform and the TFRS trainer through the library as the components
do (kept in ``WORK`` between runs: a subfolder ``shop``, ``ex``, ``tr`` or ``model`` holding a ``DONE`` file is
reused, the same layout as ``evaluator_stages.py``; ``--set`` passes config overrides, e.g. a quick TFRS trainer),
then runs the agents trainer's stages one by one in this process: reading the logged bandit data
(``policy.max_decisions``: ``--max-decisions``), training the agent and exporting it. Records each stage's seconds,
the process RSS after it and its peak (``stage_sampler.StageSampler``); a stage past ``--max-rss-gb`` stops the run
and is recorded. Prints JSON and writes ``benchmarks/results/agents_stages.json``, keeping the runs already there
under their labels (``--label``).

    .venv/bin/python benchmarks/agents_stages.py --work /tmp/shop-1m --sessions-rate 0.0031 \\
        --max-decisions 200000 --label cap200k-1.14m --max-rss-gb 7
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

import recflow  # noqa: F401  (configures the process before anything else)

# isort: split
from recflow.config import load_config

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine_info  # noqa: E402
from stage_sampler import StageSampler, save_run, shop_world  # noqa: E402

RESULT = Path(__file__).resolve().parent / "results" / "agents_stages.json"


class Stages(StageSampler):
    """The agents trainer's stages; every row carries the world's event count."""

    def __init__(self, max_rss_gb: float, out: Path, label: str, world: list[str]) -> None:
        self.out, self.label, self.world = out, label, world
        self.events: int | None = None
        self.extra: dict[str, Any] = {}
        super().__init__(max_rss_gb)

    def row_fields(self) -> dict[str, Any]:
        return {"events": self.events}

    def write(self, finished: bool) -> None:
        run = {"world": self.world, "events": self.events, "finished": finished, **self.extra,
               "stages": self.rows, "machine": machine_info(("tensorflow", "tf-agents"))}
        save_run(self.out, "TF-Agents trainer stages at shop scale (one process)", self.label, run)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="Data and trained models (reused when there).")
    parser.add_argument("--max-rss-gb", type=float, default=8.0)
    parser.add_argument("--out", type=Path, default=RESULT)
    parser.add_argument("--sessions-rate", type=float, default=0.0031,
                        help="simulator.sessions_per_user_per_day of the world (0.0031: about 1.14M events).")
    parser.add_argument("--max-decisions", type=int, default=None, help="policy.max_decisions (default: none).")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="Extra config overrides (e.g. a quick TFRS trainer for the prepared model); recorded.")
    parser.add_argument("--label", default="run", help="Key of this run in the results file.")
    args = parser.parse_args(argv)
    from recflow.examplegen import run_example_gen
    from recflow.features.transform import run_transform
    from recflow.policy.logged_data import load_bandit_data, read_embeddings
    from recflow.policy.trainer import export_policy, train_agent
    from recflow.simulator import generate_dataset
    from recflow.training.tfrs_trainer import train_tfrs

    work = args.work
    overrides = [*shop_world(args.sessions_rate), *args.overrides]
    cfg = load_config(None, [f"paths.data_dir={work}", *overrides,
                             f"policy.max_decisions={'null' if args.max_decisions is None else args.max_decisions}"])
    shop, ex, tr, model = (work / n for n in ("shop", "ex", "tr", "model"))
    stages = Stages(args.max_rss_gb, args.out, args.label, overrides)
    steps = ((shop, lambda: generate_dataset(cfg.simulator, shop, progress=False)),
             (ex, lambda: run_example_gen(shop, ex, cfg.example_gen, cfg.validation)),
             (tr, lambda: run_transform(ex, tr, cfg.transform)),
             (model, lambda: train_tfrs(ex, tr, model, cfg.trainer)))
    for path, fn in steps:
        if not (path / "DONE").exists():
            stages.run(f"prepare {path.name}", fn)
            (path / "DONE").write_text("", encoding="utf-8")
    stages.events = pq.ParquetFile(shop / "events.parquet").metadata.num_rows
    config = cfg.policy
    data = stages.run("policy load_bandit_data", lambda: load_bandit_data(
        ex / "train.parquet", model, config, max_decisions=config.max_decisions))
    stages.extra = {"model": str(model.resolve()), "max_decisions": config.max_decisions, "decisions": len(data),
                    "notes": list(data.notes)}
    agent, epsilon, curve, steps_done = stages.run("policy train", lambda: train_agent(data, config))
    stages.extra.update({"steps": steps_done, "final_loss": round(curve[-1], 6) if curve else None})
    item_ids, item_emb = read_embeddings(model / "item_embeddings.parquet", "item_id")
    with tempfile.TemporaryDirectory() as tmp:
        stages.run("policy export", lambda: export_policy(
            agent, Path(tmp), {"agent": config.agent, "item_ids": [str(i) for i in item_ids]}, item_emb))
    stages.write(True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
