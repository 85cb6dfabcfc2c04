"""Benchmark: ExampleGen's pandas engine against its beam engine on the simulator's default world (~1M events).

Generates the default world once (``--users`` 7,000 over ``--days`` 14: about a million events) into a temporary
directory, then runs ExampleGen on it once per engine, each in its own Python process:

* ``pandas``: the whole log in the process;
* ``beam``: the Beam pipeline on the DirectRunner in one process (``in_memory``);
* ``beam-mp2``: the DirectRunner with ``multi_processing`` and 2 worker processes;
* ``beam-dask2``: Beam's Dask runner on a ``dask.distributed`` LocalCluster of 2 worker processes started for the
  run (the cluster's start is in the seconds).

For each run it records the wall seconds and the peak memory: ``peak_rss_tree_mb`` is the largest sum of the
resident memory of the run's process and all its descendants (the Beam worker processes are children of the
run's process), sampled with psutil every 0.1 s; ``ru_maxrss_mb`` is the kernel's peak RSS of the largest single
process of the run's tree (``os.wait4``'s rusage of the run's process: Linux keeps the maximum over it and its
reaped descendants). It checks that
both engines wrote the same ``stats.json`` (cut points, rows, distinct users and items per split). Prints JSON
and writes benchmarks/results/example_gen.json.

    .venv/bin/python benchmarks/example_gen.py            # ~1M events, about 10 minutes on 2 cores
    .venv/bin/python benchmarks/example_gen.py --users 700 --no-save   # a quick look
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import recflow  # noqa: F401  (configures the process before anything else)

# isort: split
from recflow.io import atomic_path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine_info  # noqa: E402

RESULT = Path(__file__).resolve().parent / "results" / "example_gen.json"
ENGINES: dict[str, dict[str, Any]] = {
    "pandas": {"engine": "pandas"},
    "beam": {"engine": "beam", "direct_running_mode": "in_memory", "direct_num_workers": 1},
    "beam-mp2": {"engine": "beam", "direct_running_mode": "multi_processing", "direct_num_workers": 2},
    "beam-dask2": {"engine": "beam", "runner": "DaskRunner", "dask_workers": 2},
}


def child(engine: str, src: Path, out: Path) -> None:
    """One ExampleGen run (in its own process); prints its seconds as JSON."""
    from recflow.config import ValidationConfig
    from recflow.examplegen import ExampleGenConfig, run_example_gen
    from recflow.examplegen_beam import BeamSettings

    spec = ENGINES[engine]
    settings = BeamSettings(runner=spec.get("runner", "DirectRunner"),
                            direct_running_mode=spec.get("direct_running_mode", "in_memory"),
                            direct_num_workers=int(spec.get("direct_num_workers", 1)),
                            dask_workers=int(spec.get("dask_workers", 2)))
    started = time.perf_counter()
    run_example_gen(src, out, ExampleGenConfig(engine=spec["engine"]), ValidationConfig(), settings)
    print(json.dumps({"seconds": round(time.perf_counter() - started, 2)}))


def _tree_rss(proc: object) -> int:
    import psutil  # type: ignore[import-untyped]

    assert isinstance(proc, psutil.Process)
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            total += p.memory_info().rss
    return total


def measure(engine: str, src: Path, out: Path, log_dir: Path) -> dict[str, object]:
    """Run :func:`child` in a subprocess; its seconds, the sampled peak of its process tree's RSS, ru_maxrss."""
    import psutil

    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    started = time.perf_counter()
    with open(log_dir / f"{engine}.out", "w") as stdout, open(log_dir / f"{engine}.err", "w") as stderr:
        popen = subprocess.Popen([sys.executable, __file__, "--child", engine, "--src", str(src), "--out",
                                  str(out)], stdout=stdout, stderr=stderr, env=env)
        proc = psutil.Process(popen.pid)
        peak, status, usage = 0, 0, None
        while usage is None:
            pid, status, rusage = os.wait4(popen.pid, os.WNOHANG)
            if pid:
                usage = rusage
                break
            with contextlib.suppress(psutil.NoSuchProcess):
                peak = max(peak, _tree_rss(proc))
            time.sleep(0.1)
        popen.returncode = os.waitstatus_to_exitcode(status)  # reaped here; keep Popen from waiting again
    wall = time.perf_counter() - started
    if popen.returncode != 0:
        raise SystemExit(f"{engine} failed (exit {popen.returncode}):\n"
                         f"{(log_dir / f'{engine}.err').read_text()[-4000:]}")
    seconds = json.loads((log_dir / f"{engine}.out").read_text().strip().splitlines()[-1])["seconds"]
    # wait4's rusage of the run's process: ru_maxrss is the peak of the largest single process of its tree
    # (Linux keeps max(own, reaped descendants')), so a Beam worker bigger than its parent shows here too.
    return {"engine": engine, **ENGINES[engine], "seconds": seconds, "process_seconds": round(wall, 2),
            "peak_rss_tree_mb": round(peak / 2**20), "ru_maxrss_mb": round(usage.ru_maxrss / 1024)}


def run(users: int, days: int, seed: int, engines: list[str]) -> dict[str, object]:
    from recflow.simulator import SimulatorConfig, generate_dataset

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "world"
        started = time.perf_counter()
        summary = generate_dataset(SimulatorConfig(users=users, days=days, seed=seed), src, progress=False)
        generated_s = time.perf_counter() - started
        runs = [measure(engine, src, Path(tmp) / engine, Path(tmp)) for engine in engines]
        stats = {engine: json.loads((Path(tmp) / engine / "stats.json").read_text()) for engine in engines}
        shards = {engine: sorted(str(p.relative_to(Path(tmp) / engine))
                                 for p in (Path(tmp) / engine).glob("*.parquet/part-*.parquet")) for engine in engines}
    first = stats[engines[0]]
    return {
        "benchmark": "ExampleGen pandas engine vs beam engine (validate, split, items, stats)",
        "events": summary.events,
        "world": {"users": users, "days": days, "seed": seed, "generation_seconds": round(generated_s, 1)},
        "runs": runs,
        "same_stats_as_pandas": {engine: stats[engine] == first for engine in engines},
        "cut_points": first["cut_points"],
        "split_rows": {name: first["splits"][name]["rows"] for name in ("train", "eval", "test")},
        "beam_shards": {engine: len(files) for engine, files in shards.items() if files},
        "memory": "peak_rss_tree_mb: the largest sum of RSS over the run's process and its descendants (Beam's "
                  "worker processes), sampled every 0.1 s; ru_maxrss_mb: the kernel's peak RSS of the largest "
                  "single process of the run's tree (os.wait4 rusage)",
        "machine": machine_info(("numpy", "pandas", "pyarrow", "apache-beam", "psutil")),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=7000)
    parser.add_argument("--days", type=int, default=14)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--engines", nargs="+", default=list(ENGINES), choices=list(ENGINES))
    parser.add_argument("--no-save", action="store_true", help="print only; do not write the result file")
    parser.add_argument("--child", choices=list(ENGINES), help=argparse.SUPPRESS)
    parser.add_argument("--src", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.src, args.out)
        return
    result = run(args.users, args.days, args.seed, args.engines)
    text = json.dumps(result, indent=2)
    print(text)
    if not args.no_save:
        RESULT.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(RESULT) as tmp:
            Path(tmp).write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":  # the guard matters: the Dask LocalCluster's worker processes import this file
    main()
