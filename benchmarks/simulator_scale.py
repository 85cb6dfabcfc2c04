"""Benchmark: the simulator at shop scale (issue 17 item 4): peak memory of `data generate` vs the number of events.

A world of 10^6 users and 10^5 items (the per-segment logging-policy sampler) generated with
``generate_dataset`` (streamed: each day is written as row groups of events.parquet and dropped) for about
1 million and 10 million events. The events grow with the days simulated, the users and items stay the same,
so a generator whose memory is independent of the number of events has the same peak at both sizes. A pilot
(a few days of a 50,000-user world of the same rates) gives the events per user-day, from which the days of
each size are chosen.

Each size runs in its own child process (``--child``); its peak RSS is that child's ``ru_maxrss`` from
``os.wait4`` (so one size's peak never hides in another's). Reports events, seconds, events/s and peak RSS per
size and the ratio of the largest to the smallest peak (target <= 1.2). For comparison, ``--in-memory`` sizes
are also generated the pre-streaming way (``simulate_log``: all days in one frame, then ``write_dataset``),
and ``--day-rates`` runs one day at each rate of sessions per user per day: the memory that does grow is that of
one day's events (the generator holds one day at a time).
Prints JSON and writes benchmarks/results/simulator_scale.json.

    .venv/bin/python benchmarks/simulator_scale.py --events 1000000 3000000 10000000 --in-memory 1000000 3000000
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import recflow  # noqa: F401  (configures the process before anything else)

# isort: split
from recflow.io import atomic_path, write_dataset
from recflow.simulator import SimulatorConfig, generate_dataset, simulate_log
from recflow.simulator.generator import iter_event_frames, summarize
from recflow.simulator.logging_policy import LoggingPolicy
from recflow.simulator.world import World

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine_info  # noqa: E402

RESULT = Path(__file__).resolve().parent / "results" / "simulator_scale.json"
PEAK_RATIO_TARGET = 1.2


def world_config(users: int, items: int, days: int, rate: float, seed: int) -> SimulatorConfig:
    """The default world's behaviour at the given size; ``rate``: sessions per user per day."""
    return SimulatorConfig(users=users, items=items, days=days, sessions_per_user_per_day=rate, seed=seed)


def pilot_events_per_user_day(items: int, rate: float, seed: int, users: int = 50_000, days: int = 3) -> float:
    """Events per user and day, measured on a smaller world with the same catalog and rates."""
    config = world_config(users, items, days, rate, seed)
    world = World(config)
    events = sum(len(frame) for frame, _, _ in iter_event_frames(world, LoggingPolicy.from_config(world, config)))
    return events / (users * days)


def run_child(config: SimulatorConfig, mode: str = "stream") -> dict[str, object]:
    """Generate ``config`` in a fresh child process (``mode`` stream: generate_dataset; memory: simulate_log
    then write_dataset); its events, seconds and peak RSS."""
    with tempfile.TemporaryDirectory(prefix="simscale-") as tmp:
        cmd = [sys.executable, __file__, "--child", json.dumps(config.model_dump(mode="json")), "--out", tmp,
               "--mode", mode]
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        out = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - started
        if proc.returncode != 0:
            raise RuntimeError(f"child generation failed (exit {proc.returncode}) for {config.days} days")
        child = json.loads(out.strip().splitlines()[-1])
        size_mb = sum(f.stat().st_size for f in Path(tmp, "data").iterdir()) / 2**20
    return {
        "mode": mode,
        "days": config.days,
        "events": child["events"],
        "row_groups": child["row_groups"],
        "seconds": round(seconds, 1),
        "generate_seconds": child["seconds"],
        "events_per_second": round(child["events"] / seconds),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),  # Linux: kilobytes
        "dataset_mb": round(size_mb, 1),
        "click_through_rate": child["click_through_rate"],
    }


def child_main(config_json: str, out: Path, mode: str) -> int:
    """The child: one generation, then its summary as one JSON line."""
    import pyarrow.parquet as pq

    config = SimulatorConfig.model_validate(json.loads(config_json))
    if mode == "stream":
        summary = generate_dataset(config, out / "data", progress=False)
    else:  # the pre-streaming path: every day in one frame, then one write
        started = time.perf_counter()
        log = simulate_log(config)
        write_dataset(out / "data", events=log.events, items=log.items(), users=log.users())
        summary = summarize(log, time.perf_counter() - started)
    row_groups = pq.ParquetFile(out / "data" / "events.parquet").metadata.num_row_groups
    print(json.dumps({
        "events": summary.events,
        "seconds": summary.seconds,
        "row_groups": row_groups,
        "click_through_rate": round(summary.click_through_rate, 4),
        "self_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }))
    return 0


def run(
    events: list[int],
    in_memory: list[int],
    day_rates: list[float],
    users: int,
    items: int,
    rate: float,
    seed: int,
) -> dict[str, object]:
    """Pilot, then one child run per target event count (streamed; and in memory for ``in_memory``)."""
    started = time.perf_counter()
    per_user_day = pilot_events_per_user_day(items, rate, seed)
    pilot_s = time.perf_counter() - started
    sizes = []
    for target in events:
        days = max(1, math.ceil(target / (per_user_day * users)))
        sizes.append({"target_events": target, **run_child(world_config(users, items, days, rate, seed))})
        print(json.dumps(sizes[-1]), file=sys.stderr, flush=True)
    baseline = []
    for target in in_memory:
        days = max(1, math.ceil(target / (per_user_day * users)))
        baseline.append({"target_events": target, **run_child(world_config(users, items, days, rate, seed), "memory")})
        print(json.dumps(baseline[-1]), file=sys.stderr, flush=True)
    one_day = []
    for day_rate in day_rates:
        one_day.append({"sessions_per_user_per_day": day_rate,
                        **run_child(world_config(users, items, 1, day_rate, seed))})
        print(json.dumps(one_day[-1]), file=sys.stderr, flush=True)
    peaks = [s["peak_rss_mb"] for s in sizes]
    ratio = max(peaks) / min(peaks)  # type: ignore[type-var, operator]
    return {
        "benchmark": "simulator.generate_dataset at shop scale (streamed; peak RSS per size in a child process)",
        "users": users,
        "items": items,
        "sessions_per_user_per_day": rate,
        "seed": seed,
        "pilot": {"events_per_user_day": round(per_user_day, 3), "seconds": round(pilot_s, 1)},
        "sizes": sizes,
        "in_memory_baseline": baseline,
        "one_day_by_rate": one_day,
        "peak_ratio_largest_to_smallest": round(ratio, 3),
        "peak_ratio_target": PEAK_RATIO_TARGET,
        "passed": ratio <= PEAK_RATIO_TARGET,
        "large_catalog_sampler": items >= (SimulatorConfig().large_catalog_items or math.inf),
        "machine": machine_info(),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, nargs="+", default=[1_000_000, 3_000_000, 10_000_000],
                        help="Target event counts (days are chosen from the pilot).")
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--in-memory", type=int, nargs="*", default=[1_000_000, 3_000_000],
                        help="Target event counts also generated the pre-streaming way (for comparison).")
    parser.add_argument("--day-rates", type=float, nargs="*", default=[0.01, 0.03, 0.1],
                        help="Rates (sessions per user per day) of one-day runs: memory vs events per day.")
    parser.add_argument("--rate", type=float, default=0.01, help="Sessions per user per day.")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--out", type=Path, default=RESULT, help="Where to write the JSON result.")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=["stream", "memory"], default="stream", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        return child_main(args.child, args.out, args.mode)
    result = run(args.events, args.in_memory, args.day_rates, args.users, args.items, args.rate, args.seed)
    text = json.dumps(result, indent=2)
    print(text)
    with atomic_path(args.out) as tmp:
        tmp.write_text(text + "\n", encoding="utf-8")
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
