"""Benchmark: the Transform step with each prepare engine (``transform.prepare_engine``) on shop-scale worlds.

Generates each world (100,000 items, 500,000 users, 14 days; by default 0.00086 sessions per user-day: about
315k events, the world of ``benchmarks/evaluator_stages.py``), runs ExampleGen (pandas engine) once, then the
Transform step (``run_transform``, as the component calls it) in a fresh process per configuration: the pandas
prepare engine, and the beam prepare engine on the DirectRunner in memory and with 2 worker processes
(multi_processing); then the preparation half alone with each engine (``prepare_features`` or
``beam_prepare.prepare_features_beam``, no tf.Transform). Records each run's seconds and the peak RSS of its
whole process tree (the process and its children, summed, sampled with psutil every 0.1 s), and whether its
outputs equal the pandas engine's: the spec, user state and candidates exactly, the transformed rows exactly for
integer features and to float32 rounding (rtol 1e-5) for float ones. Prints JSON and writes
``benchmarks/results/transform_engines.json``.

    .venv/bin/python benchmarks/transform_engines.py --work /tmp/recflow-transform-engines --rates 0.00086 0.0031

``--scale RATE ...`` measures instead the two data steps on their Beam engines as the events grow (``--keep``
adds to the worlds already measured): per world, ExampleGen with ``example_gen.engine=beam`` (from the
simulator's files) then the Transform step with ``transform.prepare_engine=beam`` (from that ExampleGen output),
each in a fresh process, the DirectRunner in one process (``in_memory``, the local default); each run is killed
when its process tree passes ``--max-rss-gb``.
It records seconds, peak RSS of the tree, seconds per event and, per step, the ratios of the peak and of the
seconds per event to the first (smallest) world's, under the result's ``scale`` key (the other keys are kept):

    .venv/bin/python benchmarks/transform_engines.py --work /tmp/recflow-scale --scale 0.0027 0.0081 --max-rss-gb 7

``--modes in_memory multi_processing`` with ``--scale`` runs each world's two steps once per DirectRunner mode
(``--workers`` processes for multi_processing, default 2), one mode after the other, and records each mode's rows
and its peak and seconds against the first mode's under the result's ``modes`` key:

    .venv/bin/python benchmarks/transform_engines.py --work /tmp/recflow-modes --scale 0.0027 \
        --modes in_memory multi_processing --max-rss-gb 7
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import psutil  # type: ignore[import-untyped]

import recflow  # noqa: F401  (configures the process before anything else)

# isort: split
from recflow.config import load_config
from recflow.io import atomic_path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine_info  # noqa: E402

RESULT = Path(__file__).resolve().parent / "results" / "transform_engines.json"
WORLD = ["simulator.users=500000", "simulator.items=100000", "simulator.days=14"]
RATE = 0.00086
RUNS: dict[str, list[str]] = {
    "pandas": ["transform.prepare_engine=pandas"],
    "beam_in_memory": ["transform.prepare_engine=beam"],
    "beam_multi_processing_2": ["transform.prepare_engine=beam", "transform.direct_running_mode=multi_processing",
                                "transform.direct_num_workers=2"],
}
#: The preparation half alone (no tf.Transform), per engine: where the two engines differ.
PREPARE_RUNS: dict[str, list[str]] = {
    "prepare_only_pandas": ["transform.prepare_engine=pandas"],
    "prepare_only_beam_in_memory": ["transform.prepare_engine=beam"],
}
#: One Transform run in its own process (so its peak memory is its own); argv: examples, out, overrides.
CHILD = """
import sys
import recflow
from recflow.config import load_config
from recflow.features.transform import run_transform
cfg = load_config(None, sys.argv[3:])
run_transform(sys.argv[1], sys.argv[2], cfg.transform)
"""
#: The preparation half alone, written where run_transform would stage it.
CHILD_PREPARE = """
import sys
from pathlib import Path
import recflow
from recflow.config import load_config
from recflow.features import beam_prepare
from recflow.features.transform import prepare_features
cfg = load_config(None, sys.argv[3:])
out = Path(sys.argv[2])
out.mkdir(parents=True, exist_ok=True)
if cfg.transform.prepare_engine == "beam":
    beam_prepare.prepare_features_beam(Path(sys.argv[1]), cfg.transform, out, out / "prepare")
else:
    prepare_features(Path(sys.argv[1]), cfg.transform)
"""


#: ExampleGen on the beam engine, in its own process; argv: source, out, overrides.
CHILD_EXAMPLE_GEN = """
import sys
import recflow
from recflow.config import load_config
from recflow.examplegen import run_example_gen
from recflow.examplegen_beam import BeamSettings
cfg = load_config(None, sys.argv[3:])
run_example_gen(sys.argv[1], sys.argv[2], cfg.example_gen, cfg.validation, BeamSettings.from_transform(cfg.transform))
"""
#: The scale measurement's steps: (name, child code, overrides).
SCALE_STEPS: list[tuple[str, str, list[str]]] = [
    ("example_gen_beam", CHILD_EXAMPLE_GEN, ["example_gen.engine=beam"]),
    ("transform_beam", CHILD, ["transform.prepare_engine=beam"]),
]


def tree_rss(proc: psutil.Process) -> int:
    """RSS of ``proc`` and all its descendants, summed (0 once it has exited)."""
    total = 0
    try:
        for p in [proc, *proc.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                total += p.memory_info().rss
    except psutil.Error:
        return 0
    return total


def measure(examples: Path, out: Path, overrides: list[str], code: str = CHILD,
            max_rss_gb: float | None = None) -> dict[str, Any]:
    """Run one Transform (``code``) in a child process; its seconds and the peak RSS of its process tree.

    With ``max_rss_gb`` the tree is killed once its RSS passes that limit (a SystemExit saying so)."""
    started = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-c", code, str(examples), str(out), *overrides])
    proc, peak = psutil.Process(child.pid), 0
    while child.poll() is None:
        rss = tree_rss(proc)
        peak = max(peak, rss)
        if max_rss_gb is not None and rss > max_rss_gb * 2**30:
            with contextlib.suppress(psutil.Error):
                for p in [*proc.children(recursive=True), proc]:
                    p.kill()
            child.wait()
            raise SystemExit(f"{overrides}: killed at {rss / 2**20:.0f} MB (limit {max_rss_gb} GB) "
                             f"after {time.perf_counter() - started:.0f} s")
        time.sleep(0.1)
    seconds = time.perf_counter() - started
    if child.returncode != 0:
        raise SystemExit(f"Transform with {overrides} failed (exit {child.returncode})")
    return {"overrides": overrides, "seconds": round(seconds, 1), "peak_tree_rss_mb": round(peak / 2**20)}


def same_outputs(a: Path, b: Path) -> dict[str, Any]:
    """Whether Transform output ``b`` equals ``a`` (floats to float32 rounding), with the largest float gap."""
    from recflow.features.transform import SPLITS, load_transformed

    checks: dict[str, Any] = {"spec": (a / "feature_spec.json").read_text() == (b / "feature_spec.json").read_text()}
    for name in ("user_state.parquet", "candidates.parquet"):
        checks[name] = pd.read_parquet(a / name).equals(pd.read_parquet(b / name))
    gap, rows_equal = 0.0, True
    for split in SPLITS:
        want = load_transformed(a / "transformed" / split, a / "transform_graph")
        have = load_transformed(b / "transformed" / split, b / "transform_graph")
        if set(want) != set(have) or len(want["row_id"]) != len(have["row_id"]):
            rows_equal = False
            continue
        for key, values in want.items():
            if values.dtype.kind == "f":
                gap = max(gap, float(np.max(np.abs(have[key] - values), initial=0.0)))
                rows_equal &= bool(np.allclose(have[key], values, rtol=1e-5, atol=1e-6))
            else:
                rows_equal &= bool(np.array_equal(have[key], values))
    checks["transformed"] = rows_equal
    checks["max_float_difference"] = gap
    checks["equal"] = all(v for k, v in checks.items() if k != "max_float_difference")
    return checks


def run_world(work: Path, rate: float, names: list[str]) -> dict[str, Any]:
    """Generate (or reuse) the world at ``rate`` under ``work``, run ExampleGen, then each configuration."""
    from recflow.examplegen import run_example_gen
    from recflow.simulator import generate_dataset

    world = [*WORLD, f"simulator.sessions_per_user_per_day={rate}"]
    cfg = load_config(None, [f"paths.data_dir={work}", *world])
    shop, ex = work / "shop", work / "ex"
    if not (shop / "DONE").exists():
        generate_dataset(cfg.simulator, shop, progress=False)
        (shop / "DONE").write_text("", encoding="utf-8")
    if not (ex / "DONE").exists():
        run_example_gen(shop, ex, cfg.example_gen, cfg.validation)
        (ex / "DONE").write_text("", encoding="utf-8")
    stats = json.loads((ex / "stats.json").read_text(encoding="utf-8"))
    runs: dict[str, Any] = {}
    for name in names:
        if name in RUNS:
            runs[name] = measure(ex, work / f"tf-{name}", [*world, *RUNS[name]])
        else:
            runs[name] = measure(ex, work / f"tf-{name}", [*world, *PREPARE_RUNS[name]], CHILD_PREPARE)
        print(json.dumps({name: runs[name]}), file=sys.stderr, flush=True)
    for name in runs:
        if name != "pandas" and name in RUNS and "pandas" in runs:
            runs[name]["equals_pandas"] = same_outputs(work / "tf-pandas", work / f"tf-{name}")
    return {"world": world, "events": stats["rows"], "items": stats["items"],
            "users_with_events": stats["users"], "runs": runs}


def _commit() -> str:
    """The repository's HEAD commit (the code a scale row measured), with ``+dirty`` for uncommitted changes."""
    root = Path(__file__).resolve().parents[1]
    head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    return head.stdout.strip() + ("+dirty" if dirty else "")


def scale_world(work: Path, rate: float, max_rss_gb: float, extra: list[str],
                names: Sequence[str] = ("example_gen_beam", "transform_beam"), tag: str = "") -> dict[str, Any]:
    """ExampleGen (beam) then Transform (beam prepare) on the world at ``rate``, each step in its own process
    (only the steps in ``names``; Transform reads the ExampleGen output already there). Outputs go to
    ``scale-<step><tag>``: runs of the same world with other settings (``--modes``) keep their own."""
    from recflow.simulator import generate_dataset

    world = [*WORLD, f"simulator.sessions_per_user_per_day={rate}"]
    cfg = load_config(None, [f"paths.data_dir={work}", *world])
    shop = work / "shop"
    if not (shop / "DONE").exists():
        generate_dataset(cfg.simulator, shop, progress=False)
        (shop / "DONE").write_text("", encoding="utf-8")
    steps: dict[str, Any] = {}
    source = shop
    for name, code, overrides in SCALE_STEPS:
        out = work / f"scale-{name}{tag}"
        if name in names:
            steps[name] = {**measure(source, out, [*world, *overrides, *extra], code, max_rss_gb),
                           "commit": _commit()}
            print(json.dumps({name: steps[name]}), file=sys.stderr, flush=True)
        source = out
    stats = json.loads((work / f"scale-example_gen_beam{tag}" / "stats.json").read_text(encoding="utf-8"))
    for step in steps.values():
        step["seconds_per_million_events"] = round(step["seconds"] / stats["rows"] * 1e6, 2)
    return {"world": world, "events": stats["rows"], "train_events": stats["splits"]["train"]["rows"],
            "users_with_events": stats["users"], "steps": steps}


def scale_summary(worlds: list[dict[str, Any]]) -> dict[str, Any]:
    """Per step, the peak and the seconds per event of each world against the first world's."""
    first = worlds[0]
    out: dict[str, Any] = {}
    for name in first["steps"]:
        base = first["steps"][name]
        out[name] = [{"events": w["events"],
                      "peak_ratio": round(w["steps"][name]["peak_tree_rss_mb"] / base["peak_tree_rss_mb"], 3),
                      "seconds_per_event_ratio": round(w["steps"][name]["seconds_per_million_events"]
                                                       / base["seconds_per_million_events"], 3)}
                     for w in worlds]
    return out


def mode_overrides(mode: str, workers: int) -> list[str]:
    """The data steps' DirectRunner settings for ``mode`` (both steps read the transform section's)."""
    return [f"transform.direct_running_mode={mode}",
            f"transform.direct_num_workers={workers if mode == 'multi_processing' else 1}"]


def compare_modes(work: Path, rates: Sequence[float], modes: Sequence[str], workers: int, max_rss_gb: float,
                  extra: list[str], names: Sequence[str]) -> dict[str, Any]:
    """Each world's data steps once per DirectRunner mode, one after the other in this run (so the machine's load
    is alike), and per step each mode's peak and seconds against the first mode's."""
    worlds = []
    for rate in rates:
        runs = {mode: scale_world(work / f"rate-{rate}", rate, max_rss_gb, [*extra, *mode_overrides(mode, workers)],
                                  names, tag=f"-{mode}")
                for mode in modes}
        first = runs[modes[0]]["steps"]
        against = {name: {mode: {"peak_ratio": round(runs[mode]["steps"][name]["peak_tree_rss_mb"]
                                                     / first[name]["peak_tree_rss_mb"], 3),
                                 "seconds_ratio": round(runs[mode]["steps"][name]["seconds"]
                                                        / first[name]["seconds"], 3)}
                          for mode in modes}
                   for name in first}
        base = runs[modes[0]]
        worlds.append({"world": base["world"], "events": base["events"], "train_events": base["train_events"],
                       "modes": {mode: runs[mode]["steps"] for mode in modes},
                       f"against_{modes[0]}": against})
    return {"benchmark": "ExampleGen (engine beam) and Transform (prepare_engine beam) per DirectRunner mode, each "
                         f"step in a fresh process; multi_processing with {workers} workers; peak RSS of the "
                         "process tree (the workers included)",
            "overrides": extra, "workers": workers, "worlds": worlds,
            "machine": machine_info(("tensorflow", "tensorflow-transform", "apache-beam"))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="Worlds and outputs (each world is reused).")
    parser.add_argument("--rates", type=float, nargs="+", default=[RATE],
                        help="simulator.sessions_per_user_per_day of each world")
    parser.add_argument("--runs", nargs="*", default=[*RUNS, *PREPARE_RUNS], choices=[*RUNS, *PREPARE_RUNS])
    parser.add_argument("--out", type=Path, default=RESULT)
    parser.add_argument("--scale", type=float, nargs="+", metavar="RATE",
                        help="measure ExampleGen and Transform on their beam engines at these sessions rates")
    parser.add_argument("--max-rss-gb", type=float, default=7.0, help="--scale: kill a run past this tree RSS")
    parser.add_argument("--set", dest="extra", nargs="*", default=[], help="--scale: extra config overrides")
    parser.add_argument("--steps", nargs="+", default=[n for n, _, _ in SCALE_STEPS],
                        choices=[n for n, _, _ in SCALE_STEPS], help="--scale: the steps to measure")
    parser.add_argument("--keep", action="store_true",
                        help="--scale: keep the worlds of other rates already in --out's scale (same overrides)")
    parser.add_argument("--modes", nargs="+", choices=["in_memory", "multi_processing"],
                        help="--scale: run each world's steps once per DirectRunner mode (result key 'modes')")
    parser.add_argument("--workers", type=int, default=2, help="--modes: multi_processing's worker processes")
    args = parser.parse_args(argv)
    if args.scale and args.modes:
        previous = json.loads(args.out.read_text(encoding="utf-8")) if args.out.exists() else {}
        previous["modes"] = compare_modes(args.work, args.scale, args.modes, args.workers, args.max_rss_gb,
                                          args.extra, args.steps)
        with atomic_path(args.out) as tmp:
            tmp.write_text(json.dumps(previous, indent=2) + "\n", encoding="utf-8")
        print(json.dumps(previous["modes"], indent=2))
        return 0
    if args.scale:
        scaled = [scale_world(args.work / f"rate-{rate}", rate, args.max_rss_gb, args.extra, args.steps)
                  for rate in args.scale]
        previous = json.loads(args.out.read_text(encoding="utf-8")) if args.out.exists() else {}
        kept = previous.get("scale", {})
        if args.keep and kept.get("overrides") == args.extra:
            old = {tuple(w["world"]): w for w in kept["worlds"]}
            for w in scaled:  # steps not measured now keep their earlier row
                w["steps"] = {**old.get(tuple(w["world"]), {}).get("steps", {}), **w["steps"]}
            measured = {tuple(w["world"]) for w in scaled}
            scaled += [w for w in kept["worlds"] if tuple(w["world"]) not in measured]
        scaled.sort(key=lambda w: w["events"])
        previous["scale"] = {
            "benchmark": "ExampleGen (engine beam) and Transform (prepare_engine beam) as the events grow, each "
                         "step in a fresh process, DirectRunner in_memory; peak RSS of the process tree",
            "overrides": args.extra, "worlds": scaled, "against_first": scale_summary(scaled),
            "machine": machine_info(("tensorflow", "tensorflow-transform", "apache-beam"))}
        with atomic_path(args.out) as tmp:
            tmp.write_text(json.dumps(previous, indent=2) + "\n", encoding="utf-8")
        print(json.dumps(previous["scale"], indent=2))
        return 0
    worlds = [run_world(args.work / f"rate-{rate}", rate, args.runs) for rate in args.rates]
    result = {"benchmark": "Transform step per prepare engine (one process tree per run)", "worlds": worlds,
              "machine": machine_info(("tensorflow", "tensorflow-transform", "apache-beam"))}
    with atomic_path(args.out) as tmp:
        tmp.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
