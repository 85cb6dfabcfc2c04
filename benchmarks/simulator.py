"""Benchmark: how fast the world simulator generates events (target: 1,000,000 events under 60 s, 2 cores).

Sizes the default world's user count so one run yields at least ``--events`` events (from a small pilot run's
events per user), then times ``--repeats`` full runs of ``generate_dataset`` (simulation and Parquet writing)
and reports the median. Prints JSON and writes benchmarks/results/simulator.json.

    .venv/bin/python benchmarks/simulator.py --events 1000000 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import recflow  # noqa: F401  (configures the process before anything else)

# isort: split
from recflow.io import atomic_path
from recflow.simulator import SimulatorConfig, generate_dataset, simulate_log

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine_info  # noqa: E402

RESULT = Path(__file__).resolve().parent / "results" / "simulator.json"


def sized_config(events: int, seed: int, days: int) -> SimulatorConfig:
    """The default world with enough users for at least ``events`` events over ``days`` days."""
    pilot_users = 400
    pilot = simulate_log(SimulatorConfig(users=pilot_users, days=days, seed=seed))
    per_user = len(pilot.events) / pilot_users
    return SimulatorConfig(users=math.ceil(1.1 * events / per_user), days=days, seed=seed)


def run(events: int, repeats: int, seed: int, days: int) -> dict[str, object]:
    """Time ``repeats`` generations of at least ``events`` events; the median run is reported."""
    config = sized_config(events, seed, days)
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(repeats):
            started = time.perf_counter()
            summary = generate_dataset(config, Path(tmp) / f"run{i}", progress=False)
            runs.append({"events": summary.events, "seconds": round(time.perf_counter() - started, 3)})
    median_s = statistics.median(r["seconds"] for r in runs)
    n = runs[0]["events"]
    return {
        "benchmark": "simulator.generate_dataset (simulate + write Parquet)",
        "events": n,
        "seconds": median_s,
        "events_per_second": round(n / median_s),
        "target_seconds": 60,
        "passed": median_s < 60 and n >= events,
        "repeats": runs,
        "seed": seed,
        "config": config.model_dump(mode="json"),
        "funnel": {
            "click_through_rate": round(summary.click_through_rate, 4),
            "cart_rate": round(summary.cart_rate, 4),
            "purchase_rate": round(summary.purchase_rate, 4),
        },
        "machine": machine_info(),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000, help="Minimum events per run.")
    parser.add_argument("--repeats", type=int, default=3, help="Timed runs (the median is reported).")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--days", type=int, default=14)
    parser.add_argument("--out", type=Path, default=RESULT, help="Where to write the JSON result.")
    args = parser.parse_args(argv)
    result = run(args.events, args.repeats, args.seed, args.days)
    text = json.dumps(result, indent=2)
    print(text)
    with atomic_path(args.out) as tmp:
        tmp.write_text(text + "\n", encoding="utf-8")
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
