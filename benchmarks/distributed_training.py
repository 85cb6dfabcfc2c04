"""Benchmark: the TFRS trainer on one process vs MultiWorkerMirroredStrategy workers on this machine (issue 17).

Generates a small simulator world, runs ExampleGen and Transform once, then trains the same data with the same
settings three ways, each `recflow train` in fresh processes: the default strategy (one process), one
MultiWorkerMirroredStrategy worker, and two workers on 127.0.0.1 (ring all-reduce, one TF_CONFIG each). Records
per run the wall time of the whole command and, per trained model, training examples, epochs, fit seconds and
examples/s (examples x epochs / fit seconds; the same examples whatever the workers: the global batch is split),
``examples_seen`` and the eval metrics. Prints JSON and writes benchmarks/results/distributed_training.json.

This measures the mechanism, not a speed-up: workers sharing one machine's cores compete for them, every worker
repeats the replicated stages, and each step adds an all-reduce over gRPC. Speed-ups need workers on separate
machines or GPUs (not available here).

    .venv/bin/python benchmarks/distributed_training.py --users 500 --days 7
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import recflow  # noqa: F401  (configures the process before anything else)

# isort: split
from recflow.config import load_config
from recflow.io import atomic_path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine_info  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULT = ROOT / "benchmarks" / "results" / "distributed_training.json"
#: The sequence model, the DCN ranker and the history ranker with few epochs: training dominates, not startup.
SETTINGS = ["trainer.sequence={epochs: 3}", "trainer.ranking_epochs=2", "trainer.history_ranking_epochs=2",
            "trainer.history_ranking_l2=[0.01]"]
METRICS = ("retrieval_eval_top10_accuracy", "retrieval_train_loss", "ranking_eval_auc", "history_ranker_eval_auc")


def prepare(base: Path, users: int, days: int, seed: int) -> dict[str, int]:
    """Simulate the shop, run ExampleGen and Transform into ``base``; the event count."""
    from recflow.examplegen import run_example_gen
    from recflow.features.transform import run_transform
    from recflow.simulator import generate_dataset

    config = load_config(None, [f"simulator.users={users}", f"simulator.days={days}", f"simulator.seed={seed}",
                                "simulator.items=500"])
    summary = generate_dataset(config.simulator, base / "data", progress=False)
    run_example_gen(base / "data", base / "ex", config.example_gen, config.validation)
    run_transform(base / "ex", base / "tf", config.transform)
    return {"events": int(summary.events), "users": users, "items": 500, "days": days}


def _ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def train(base: Path, name: str, workers: int) -> dict[str, object]:
    """``recflow train`` with ``workers`` MultiWorkerMirroredStrategy workers (0: the default strategy)."""
    out = base / name
    sets = list(SETTINGS)
    if workers:
        sets += ["trainer.distribution.strategy=multi_worker_mirrored", "trainer.distribution.communication=ring"]
    cmd = [sys.executable, "-m", "recflow", *[a for s in sets for a in ("--set", s)], "train", "--examples",
           str(base / "ex"), "--transform", str(base / "tf"), "--out", str(out)]
    addresses = [f"127.0.0.1:{p}" for p in _ports(max(workers, 1))]
    procs = []
    started = time.perf_counter()
    for i in range(max(workers, 1)):
        env = dict(os.environ)
        if workers:
            env["TF_CONFIG"] = json.dumps({"cluster": {"worker": addresses}, "task": {"type": "worker", "index": i}})
        log = (base / f"{name}-{i}.log").open("w")
        procs.append(subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT))
    codes = [p.wait() for p in procs]
    seconds = time.perf_counter() - started
    if any(codes):
        raise SystemExit(f"{name}: exit codes {codes}; see {base}/{name}-*.log")
    report = json.loads((out / "training.json").read_text(encoding="utf-8"))
    models = {}
    for stage in ("retrieval", "ranking"):
        part = report[stage]
        models[stage] = {k: part[k] for k in ("train_examples", "epochs_run", "seconds", "examples_seen")}
        models[stage]["examples_per_second"] = part["train_examples"] * part["epochs_run"] / part["seconds"]
    return {"workers": workers, "strategy": report["distribution"]["strategy"],
            "replicas_in_sync": report["distribution"]["replicas_in_sync"], "wall_seconds": seconds,
            "models": models, "metrics": {k: report["metrics"].get(k) for k in METRICS}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, default=500)
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--no-write", action="store_true", help="print only; do not write the results file")
    args = parser.parse_args()
    machine = machine_info(("tensorflow", "tensorflow-recommenders", "tf-keras"))
    with tempfile.TemporaryDirectory(prefix="recflow-dist-bench-") as tmp:
        base = Path(tmp)
        data = prepare(base, args.users, args.days, args.seed)
        runs = [train(base, "default", 0), train(base, "one_worker", 1), train(base, "two_workers", 2)]
    result = {"benchmark": "distributed_training", "data": data, "settings": SETTINGS, "runs": runs,
              "machine": machine}
    text = json.dumps(result, indent=2, default=float)
    print(text)
    if not args.no_write:
        with atomic_path(RESULT) as tmp_path:
            Path(tmp_path).write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
