"""Benchmark: the whole training pipeline on the local KFP runner at several data sizes (issue 3).

For each size it generates the simulator's default world with enough users for about that many events, runs
the DAG exactly as `recflow pipeline run` does (MLflow tracking on, a fresh local store), and records the total
and per-step wall time and the peak resident memory of the steps (each step runs in its own subprocess, so the
peak is the largest step's). Prints JSON and writes benchmarks/results/pipeline.json. Target: 1M events in under
15 minutes on 2 cores, and time growing no worse than linearly with events.

    .venv/bin/python benchmarks/pipeline.py --events 100000 300000 1000000
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import sys
import tempfile
import time
from pathlib import Path

import recflow  # noqa: F401  (configures the process before anything else)

# isort: split
from recflow.config import load_config
from recflow.io import atomic_path
from recflow.simulator import SimulatorConfig, generate_dataset, simulate_log

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine_info  # noqa: E402

RESULT = Path(__file__).resolve().parent / "results" / "pipeline.json"
TARGET_SECONDS_1M = 15 * 60


def users_for(events: int, seed: int, days: int) -> int:
    """Users of the default world that give about ``events`` events in ``days`` days (from a pilot run)."""
    pilot_users = 300
    pilot = simulate_log(SimulatorConfig(users=pilot_users, days=days, seed=seed))
    return max(50, math.ceil(events * pilot_users / len(pilot.events)))


def peak_children_rss_mb() -> float:
    """Largest resident set of any finished child process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0


def run_size(events: int, seed: int, days: int, work: Path) -> dict[str, object]:
    """Generate about ``events`` events and run the whole pipeline on them."""
    from pipelines.local_run import run_local

    users = users_for(events, seed, days)
    config = load_config(None, [f"paths.data_dir={work}", f"simulator.users={users}", f"simulator.days={days}",
                                f"simulator.seed={seed}"])
    data = work / "shop"
    summary = generate_dataset(config.simulator, data, progress=False)
    started = time.perf_counter()
    result = run_local(data, config, echo=lambda line: print(line, file=sys.stderr, flush=True))
    total = time.perf_counter() - started
    steps = {s.name: round(s.seconds, 2) for s in result.steps if s.seconds is not None}
    return {
        "events": summary.events,
        "users": users,
        "items": config.simulator.items,
        "days": days,
        "total_seconds": round(total, 2),
        "peak_rss_mb": round(max(peak_children_rss_mb(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024), 1),
        "steps": steps,
        "succeeded": result.succeeded,
        "blessed": result.blessed,
        "pushed": result.pushed_to is not None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, nargs="+", default=[100_000, 300_000, 1_000_000])
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--days", type=int, default=14)
    parser.add_argument("--out", type=Path, default=RESULT)
    args = parser.parse_args(argv)
    machine = machine_info(("tensorflow", "tensorflow-transform", "apache-beam", "kfp", "mlflow"))
    runs = []
    for n in sorted(args.events):
        # Each size in its own process so one size's peak memory does not leak into the next.
        with tempfile.TemporaryDirectory(prefix=f"recflow-bench-{n}-") as tmp:
            import subprocess

            proc = subprocess.run(
                [sys.executable, __file__, "--one", str(n), "--seed", str(args.seed), "--days", str(args.days),
                 "--work", tmp],
                capture_output=True, text=True,
            )
            if proc.returncode != 0:
                print(proc.stderr[-4000:], file=sys.stderr)
                raise SystemExit(f"pipeline benchmark at {n} events failed (exit {proc.returncode})")
            runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            print(json.dumps(runs[-1]), file=sys.stderr, flush=True)
    # Growth: seconds per event at the largest size relative to the smallest (<= 1 means no worse than linear).
    small, large = runs[0], runs[-1]
    per_event_ratio = (large["total_seconds"] / large["events"]) / (small["total_seconds"] / small["events"])
    million = [r for r in runs if r["events"] >= 900_000]
    result = {
        "benchmark": "training pipeline on the KFP local runner (simulator default world, MLflow tracking on)",
        "runs": runs,
        "seconds_per_event_ratio_largest_vs_smallest": round(per_event_ratio, 3),
        "target_1m_seconds": TARGET_SECONDS_1M,
        "meets_1m_target": bool(million) and all(r["total_seconds"] < TARGET_SECONDS_1M for r in million),
        "machine": machine,
    }
    text = json.dumps(result, indent=2)
    print(text)
    with atomic_path(args.out) as tmp:
        tmp.write_text(text + "\n")
    return 0


def _one(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--one", type=int, required=True)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--days", type=int, default=14)
    parser.add_argument("--work", type=Path, required=True)
    args = parser.parse_args(argv)
    print(json.dumps(run_size(args.one, args.seed, args.days, args.work)))
    return 0


if __name__ == "__main__":
    sys.exit(_one(sys.argv[1:]) if "--one" in sys.argv else main())
