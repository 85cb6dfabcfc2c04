"""Benchmark: time and memory of each Evaluator stage on a shop-scale world (issue 17).

Generates the world (100,000 items, 500,000 users, 14 days at 0.00086 sessions per user-day: about 315k events,
the shape of ``benchmarks/pipeline.py``'s smaller shop-scale row), runs ExampleGen, Transform and both trainers
through the library as the components do (kept in ``WORK`` between runs), then runs the Evaluator's stages one by
one in :func:`recflow.evaluation.run.run_evaluator`'s order: the off-policy estimates (with
``evaluator.ope_max_scored_pairs``) and the TFMA slices before the examples are loaded (runs before session 14
ran them after the candidate's top-k, with the train split held), then the user sample, the catalog context, the
candidate's top-k, the baseline tuning, each baseline's fit and run, and the fallback baseline's
copy of the train split (what an unblessed run adds; ``--fallback-only`` runs only that). Records each stage's
seconds, the process RSS after it and its peak (a psutil sampler every 0.1 s), the ranking metrics of the candidate
and of each baseline and the tuning's choices (so two runs on the same data show whether a change kept them); a
stage past ``--max-rss-gb`` stops the run and is recorded. Prints JSON and writes
``benchmarks/results/evaluator_stages.json``, keeping the runs already there under their labels (``--label``; each
run records its world and number of events).

``--work`` may point at existing step outputs (subfolders ``shop``, ``ex``, ``tr``, ``model``, ``policy``): a
subfolder holding a ``DONE`` file is reused, any other is (re)built. ``--sessions-rate`` sets the world's
``simulator.sessions_per_user_per_day`` (0.0031 gives about 1.14M events).

    .venv/bin/python benchmarks/evaluator_stages.py --work /tmp/recflow-evaluator-stages --label after-315k
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

import recflow  # noqa: F401  (configures the process before anything else)

# isort: split
from recflow.config import load_config

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine_info  # noqa: E402
from stage_sampler import StageSampler, save_run, shop_world  # noqa: E402

RESULT = Path(__file__).resolve().parent / "results" / "evaluator_stages.json"
SESSIONS_RATE = 0.00086


class Stages(StageSampler):
    """The Evaluator's stages; every row carries the world's event count."""

    def __init__(self, max_rss_gb: float, out: Path, label: str, world: list[str], note: str = "") -> None:
        self.out, self.label, self.world, self.note = out, label, world, note
        self.events: int | None = None
        self.model: str | None = None  #: the resolved model directory (a world may reuse another's model)
        super().__init__(max_rss_gb)

    def row_fields(self) -> dict[str, Any]:
        return {"events": self.events}

    def annotate(self, ope: tuple[Any, str | None]) -> None:
        """Add the off-policy estimates (value, n) and their note to the last stage's row."""
        table, note = ope
        if table is not None:
            self.rows[-1]["estimates"] = {r["estimate"]: {"value": round(float(r["value"]), 6), "n": int(r["n"])}
                                          for r in table.to_dict("records")}
        self.rows[-1]["note"] = note

    def record_metrics(self, result: Any) -> None:
        """Add a method's ranking metrics (``ndcg@k``, ``recall@k``, ...) to the last stage's row, so runs on
        the same data show whether a change kept every metric."""
        self.rows[-1]["metrics"] = {k: round(float(v), 9) for k, v in sorted(result.metrics.items())
                                    if "@" in k and not k.startswith(("coverage", "novelty"))}

    def record_tuning(self, tuning: dict[str, Any]) -> None:
        """Add each tuned baseline's chosen parameters and validation score to the last stage's row."""
        self.rows[-1]["tuning"] = {n: {"best_params": t["best_params"], "best_score": round(t["best_score"], 9)}
                                   for n, t in tuning.items()}

    def write(self, finished: bool) -> None:
        run = {"world": self.world, "events": self.events, "finished": finished, "model": self.model,
               **({"note": self.note} if self.note else {}), "stages": self.rows,
               "machine": machine_info(("tensorflow", "apache-beam"))}
        save_run(self.out, "Evaluator stages at shop scale (one process)", self.label, run)


def fallback_copy(stages: Stages, ex: Path) -> None:
    """The stage an unblessed run adds: the fallback baseline's copy of the train split (into a temporary
    directory; ``write_split_events``, or on code without it the whole-frame write it replaced)."""
    import tempfile

    from recflow.evaluation import evaluator as ev

    with tempfile.TemporaryDirectory(prefix="recflow-fallback-") as tmp:
        dest = Path(tmp) / "train.parquet"
        if hasattr(ev, "write_split_events"):
            stages.run("fallback baseline: train copy", lambda: ev.write_split_events(ex, "train", dest))
        else:  # the code before: the split read whole into pandas, then written
            from recflow.examplegen import read_split
            from recflow.io import write_table

            stages.run("fallback baseline: train copy", lambda: write_table(read_split(ex, "train"), dest, "events"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="Data and trained models (reused when there).")
    parser.add_argument("--max-rss-gb", type=float, default=8.0)
    parser.add_argument("--out", type=Path, default=RESULT)
    parser.add_argument("--sessions-rate", type=float, default=SESSIONS_RATE,
                        help="simulator.sessions_per_user_per_day of the world (0.0031: about 1.14M events).")
    parser.add_argument("--label", default="run", help="Key of this run in the results file.")
    parser.add_argument("--note", default="", help="Recorded with the run (the code's branch and commit, where the "
                        "model and policy came from).")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="Extra config overrides (e.g. a quick trainer for the prepared model); recorded.")
    parser.add_argument("--compare-whole-split-ope", action="store_true",
                        help="Also run the off-policy estimates with the whole split loaded (last stage).")
    parser.add_argument("--fallback-only", action="store_true",
                        help="Run only the fallback baseline's copy of the train split (the last stage).")
    args = parser.parse_args(argv)
    from recflow.evaluation import evaluator as ev
    from recflow.evaluation import run as run_module
    from recflow.evaluation.beyond_accuracy import CatalogContext
    from recflow.evaluation.run import off_policy_estimates, ranking_slices
    from recflow.examplegen import run_example_gen
    from recflow.features.transform import run_transform
    from recflow.models import load_recommender
    from recflow.policy.trainer import train_policy
    from recflow.simulator import generate_dataset
    from recflow.training.tfrs_trainer import train_tfrs

    work = args.work
    overrides = [*shop_world(args.sessions_rate), *args.overrides]
    cfg = load_config(None, [f"paths.data_dir={work}", *overrides])
    shop, ex, tr, model, policy = (work / n for n in ("shop", "ex", "tr", "model", "policy"))
    stages = Stages(args.max_rss_gb, args.out, args.label, overrides, args.note)
    steps = ((shop, lambda: generate_dataset(cfg.simulator, shop, progress=False)),
             (ex, lambda: run_example_gen(shop, ex, cfg.example_gen, cfg.validation)),
             (tr, lambda: run_transform(ex, tr, cfg.transform)),
             (model, lambda: train_tfrs(ex, tr, model, cfg.trainer)),
             (policy, lambda: train_policy(ex, model, policy, cfg.policy)))
    for path, fn in steps:
        if not (path / "DONE").exists():
            stages.run(f"prepare {path.name}", fn)
            (path / "DONE").write_text("", encoding="utf-8")
    stages.events = pq.ParquetFile(shop / "events.parquet").metadata.num_rows
    stages.model = str(model.resolve())
    config = cfg.evaluator
    if args.fallback_only:
        fallback_copy(stages, ex)
        stages.write(True)
        return 0
    cand = stages.run("load candidate", lambda: load_recommender(model))
    # run_evaluator's order: the off-policy estimates and the slices before the examples are loaded
    ope = stages.run("off-policy estimates", lambda: off_policy_estimates(
        ex, model, policy, cfg.policy, config.split, config.seed, max_pairs=config.ope_max_scored_pairs))
    stages.annotate(ope)
    stages.run("ranking slices", lambda: ranking_slices(ex, model, config.split, config.seed, recommender=cand,
                                                             max_examples=config.max_slice_examples))
    pop = stages.run("user sample", lambda: ev._population(ex, config))
    context = stages.run("catalog context", lambda: CatalogContext.from_train(
        pop.train, pop.items, pop.catalog, config.beyond_accuracy.head_share, ev.candidate_item_embeddings(cand)))
    stages.record_metrics(stages.run("candidate top-k", lambda: ev._run("candidate", "candidate", cand, pop, config,
                                                                       context)))
    tuning, _ = stages.run("baseline tuning", lambda: ev.tune_configured_baselines(ex, pop.train, pop.items, config))
    stages.record_tuning(tuning)
    skipped = ev.skipped_baselines(config, pop.train)
    runnable = config.model_copy(update={"baselines": tuple(n for n in config.baselines if n not in skipped)})
    baselines = ev.build_baselines(runnable, {n: t["best_params"] for n, t in tuning.items()})
    for name in list(baselines):  # as the Evaluator does: each fitted baseline is freed before the next
        baseline = baselines.pop(name)
        stages.record_metrics(stages.run(f"baseline {name}", lambda b=baseline, n=name: ev._run(
            n, "baseline", b.fit(pop.train, pop.items), pop, config, context)))
        del baseline
        if hasattr(ev, "release_freed_memory"):  # as _run_baselines does after each baseline
            ev.release_freed_memory()
    fallback_copy(stages, ex)
    if args.compare_whole_split_ope and hasattr(run_module, "sample_request_users"):
        # Last, so its memory does not weigh on the stages above: the estimates when the whole split is loaded
        # and sampled after (the path before the request sample moved ahead of loading).
        run_module.sample_request_users = lambda *a, **k: (None, None, None)
        ope = stages.run("off-policy estimates, whole split loaded (comparison)", lambda: off_policy_estimates(
            ex, model, policy, cfg.policy, config.split, config.seed, max_pairs=config.ope_max_scored_pairs))
        stages.annotate(ope)
    stages.write(True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
