"""Benchmark: the whole training pipeline on the local KFP runner at several data sizes (issues 3 and 17).

Two shapes of world:

* the simulator's default world (1,000 items) with enough users for about each ``--events`` size (issue 3; rows in
  ``runs`` of benchmarks/results/pipeline.json):

      .venv/bin/python benchmarks/pipeline.py --events 100000 300000 1000000

* a shop-scale world (issue 17; rows in ``shop_scale_runs``): a fixed catalog (``--items``) and user count
  (``--users``); each ``--events`` size is then reached by choosing ``simulator.sessions_per_user_per_day`` from
  two small pilot runs of the same world (:func:`sessions_rate_for`):

      .venv/bin/python benchmarks/pipeline.py --items 100000 --users 500000 --events 1000000 --max-rss-gb 16

``--set key=value`` overrides any config setting of the generation and the run (``example_gen.engine=beam``);
``--config FILE`` runs both on a config file (``configs/shop_scale.yaml``), recorded in the row as ``config``.

Each size runs in two child processes: one generates the dataset (streamed, ``generate_dataset``; its own peak
RSS is recorded apart), then one runs the DAG exactly as ``recflow pipeline run`` does (MLflow tracking on, a fresh
local store). While the pipeline child runs, a sampler thread (:class:`TreeRssSampler`, every 0.2 s) sums the
resident set of the child and all its descendants (the KFP local runner's step and tracking subprocesses, Beam
workers) and keeps the peak, overall (``peak_rss_mb``) and per step (``steps_peak_rss_mb``: each sample belongs to
the step whose ``[i/6] <step>: started`` progress line came last, so a step's peak includes its exit and the
light tracking task after it; samples before the first step go to ``orchestration``). A summed RSS counts pages
shared between processes (libraries, copy-on-write) once per process, so it is an upper bound of the memory the
run needs. ``max_process_rss_mb`` is the largest single
process (``ru_maxrss`` of the tree, from ``wait4``) -- what ``peak_rss_mb`` meant in the issue-3 rows of ``runs``
measured before the sampler existed (those rows have no ``peak_rss_kind``; new rows say ``"tree"``).

The sampler kills the whole run when the summed RSS exceeds ``--max-rss-gb`` (default 16) or the run takes longer
than ``--max-minutes``. A failed or killed run is a result, not a crash: its row has ``succeeded: false`` and a
``failure`` record (:func:`failure_record`: the step, its error's last lines, the seconds and the memory up to
then). Prints JSON and merges the rows into benchmarks/results/pipeline.json (default-world sizes replace
``runs``; shop-scale sizes replace the ``shop_scale_runs`` rows of the same shape and keep the others). Target of
issue 3: 1M events in under 15 minutes on 2 cores, time growing no worse than linearly with events.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]  # (no stubs in the lock)

import recflow  # noqa: F401  (configures the process before anything else)

# isort: split
from recflow.config import load_config
from recflow.io import atomic_path
from recflow.simulator import SimulatorConfig, generate_dataset, simulate_log

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine_info  # noqa: E402

RESULT = Path(__file__).resolve().parent / "results" / "pipeline.json"
TARGET_SECONDS_1M = 15 * 60
SAMPLE_SECONDS = 0.2
ORCHESTRATION = "orchestration"
#: A step's progress lines (components/step_run.py): ``[3/6] tfrs_trainer: started`` ... ``done in 12.3s``.
_PROGRESS = re.compile(r"^\s*\[(?:\d+/\d+|\+)\] (?P<step>\w+): (?P<message>.*)$")
_DONE = re.compile(r"done in ([0-9.]+)s")
_RUN_DIR = re.compile(r"locally: run directory (?P<dir>\S+)")
ERROR_TAIL_LINES = 15


# ------------------------------------------------------------------ the world's shape
def users_for(events: int, seed: int, days: int) -> int:
    """Users of the default world that give about ``events`` events in ``days`` days (from a pilot run)."""
    pilot_users = 300
    pilot = simulate_log(SimulatorConfig(users=pilot_users, days=days, seed=seed))
    return max(50, math.ceil(events * pilot_users / len(pilot.events)))


def sessions_rate_for(events: int, users: int, pilot_rate: float, pilot_users: int, pilot_events: int) -> float:
    """The ``sessions_per_user_per_day`` that gives about ``events`` events with ``users`` users, from a pilot of
    ``pilot_users`` users (same days and catalog) that gave ``pilot_events`` events at ``pilot_rate``.

    Events are taken as proportional to users x rate (sessions are drawn per user and day with mean rate x the
    user's activity, so this holds while the rate is far below ``max_sessions_per_user_per_day``)."""
    if events <= 0 or users <= 0 or pilot_users <= 0 or pilot_rate <= 0:
        raise ValueError(f"events {events}, users {users}, pilot users {pilot_users} and pilot rate {pilot_rate} "
                         "must all be positive")
    if pilot_events <= 0:
        raise ValueError(f"the pilot run ({pilot_users} users at {pilot_rate} sessions per user per day) produced "
                         "no events; raise the pilot's users or rate")
    return pilot_rate * events * pilot_users / (pilot_events * users)


def _pilot_events(users: int, items: int, days: int, rate: float, seed: int, overrides: Sequence[str],
                  config_path: str | None = None) -> int:
    config = load_config(config_path, [*overrides, f"simulator.users={users}", f"simulator.items={items}",
                                       f"simulator.days={days}", f"simulator.sessions_per_user_per_day={rate}",
                                       f"simulator.seed={seed}"])
    return len(simulate_log(config.simulator).events)


def shop_rate_for(events: int, users: int, items: int, days: int, seed: int, overrides: Sequence[str] = (),
                  first_pilot_users: int = 300, second_pilot_users: int = 20_000,
                  config_path: str | None = None) -> dict[str, float]:
    """``sessions_per_user_per_day`` for about ``events`` events with ``users`` users and ``items`` items, from
    two pilots: a few users at the configured rate (a first guess), then more users at that guess (the rate at
    which the full run is made, so the estimate is not an extrapolation over orders of magnitude)."""
    base = load_config(config_path, list(overrides)).simulator.sessions_per_user_per_day
    first = min(users, first_pilot_users)
    guess = sessions_rate_for(events, users, base, first, _pilot_events(first, items, days, base, seed, overrides,
                                                                          config_path))
    second = min(users, second_pilot_users)
    second_events = _pilot_events(second, items, days, guess, seed, overrides, config_path)
    rate = sessions_rate_for(events, users, guess, second, second_events)
    return {"sessions_per_user_per_day": rate, "pilot_users": second, "pilot_rate": guess,
            "pilot_events": second_events}


# ------------------------------------------------------------------ memory of the whole process tree
def tree_rss(pid: int) -> tuple[int, int]:
    """Summed and largest resident set (bytes) of process ``pid`` and all its descendants (processes that vanish
    are skipped); (0, 0) when ``pid`` itself is gone."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0, 0
    total = largest = 0
    for proc in procs:
        try:
            rss = proc.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        total, largest = total + rss, max(largest, rss)
    return total, largest


def tree_rss_bytes(pid: int) -> int:
    """Summed resident set of process ``pid`` and all its descendants; 0 when ``pid`` is gone."""
    return tree_rss(pid)[0]


def kill_tree(pid: int) -> None:
    """SIGKILL process ``pid`` and all its descendants (children first found, then all killed at once)."""
    try:
        root = psutil.Process(pid)
        procs = [*root.children(recursive=True), root]
    except psutil.NoSuchProcess:
        return
    for proc in procs:
        try:
            proc.send_signal(signal.SIGKILL)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue


@dataclass
class TreeRssSampler:
    """Samples the summed RSS of ``pid``'s process tree every ``interval`` seconds in a thread, attributing each
    sample to ``phase`` (set from outside as steps start and end); kills the tree past ``max_rss_mb`` or
    ``max_seconds`` and says why in ``killed``."""

    pid: int
    interval: float = SAMPLE_SECONDS
    max_rss_mb: float | None = None
    max_seconds: float | None = None
    phase: str = ORCHESTRATION
    peak_mb: float = 0.0
    max_process_mb: float = 0.0
    peaks_mb: dict[str, float] = field(default_factory=dict)
    samples: int = 0
    killed: str | None = None
    killed_phase: str | None = None
    phase_started: float = field(default_factory=time.monotonic)
    phase_ended: float = 0.0
    done_seconds: dict[str, float] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def sample(self) -> float:
        """Take one sample now (MB), record it, and kill the tree when a limit is passed."""
        total, largest = tree_rss(self.pid)
        mb = total / 2**20
        self.max_process_mb = max(self.max_process_mb, largest / 2**20)
        phase = self.phase
        self.samples += 1
        self.peak_mb = max(self.peak_mb, mb)
        self.peaks_mb[phase] = max(self.peaks_mb.get(phase, 0.0), mb)
        if self.killed is None:
            elapsed = time.monotonic() - self.started
            if self.max_rss_mb is not None and mb > self.max_rss_mb:
                self.killed = (f"killed by the benchmark: the run's summed RSS {mb:,.0f} MB passed the limit of "
                               f"{self.max_rss_mb:,.0f} MB during {phase}")
            elif self.max_seconds is not None and elapsed > self.max_seconds:
                self.killed = (f"killed by the benchmark: the run passed the time limit of {self.max_seconds:.0f} s "
                               f"during {phase}")
            if self.killed is not None:
                self.killed_phase = phase
                kill_tree(self.pid)
        return mb

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def start(self) -> TreeRssSampler:
        self.started = time.monotonic()
        self._thread = threading.Thread(target=self._loop, name="tree-rss-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.phase_ended = time.monotonic()
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def on_line(self, line: str) -> None:
        """Follow the pipeline's progress lines: a step's ``started`` line makes it the phase until the next
        step starts (a step's ``done`` line comes before its process has written its record and exited, and its
        light tracking task runs next: both stay the step's). ``done in 12.3s`` lines give ``done_seconds`` (the
        finished steps' seconds even when the run is killed before it reports them)."""
        match = _PROGRESS.match(line)
        if match is None:
            return
        message = match.group("message")
        if message.startswith("started"):
            self.phase, self.phase_started = match.group("step"), time.monotonic()
        done = _DONE.match(message)
        if done is not None:
            self.done_seconds[match.group("step")] = float(done.group(1))


# ------------------------------------------------------------------ failures are results
def failure_record(step: str | None, error: str, seconds: float, peak_rss_mb: float,
                   steps_peak_rss_mb: dict[str, float], killed: bool = False,
                   step_seconds: float | None = None) -> dict[str, Any]:
    """What a failed run reports: the failed step (None when no step was running), the last lines of its
    error, the seconds and the summed peak RSS up to the failure (overall and of the failed step), and how long
    the failed step had run (for a step whose process died: until the run ended, its exit handler included)."""
    lines = [line.rstrip() for line in error.strip().splitlines() if line.strip()]
    return {
        "step": step,
        "error_tail": lines[-ERROR_TAIL_LINES:],
        "seconds_until_failure": round(seconds, 1),
        "step_seconds_until_failure": None if step_seconds is None else round(step_seconds, 1),
        "peak_rss_mb_until_failure": round(peak_rss_mb, 1),
        "step_peak_rss_mb": round(steps_peak_rss_mb.get(step, 0.0), 1) if step else None,
        "killed_by_benchmark": killed,
    }


def _tail(path: Path, lines: int = 60) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


_ERROR_WORDS = re.compile(r"\b(error|traceback|failure|failed|killed|memoryerror|exit code|signal)\b", re.IGNORECASE)


def step_error_lines(log: str, step: str | None) -> str:
    """The lines of a KFP local run's log that say why ``step`` failed: its own progress and error lines and
    any line with an error word (the exit handler's output after the failure is left out)."""
    label = f"] {step}:" if step else None
    keep = [line for line in log.splitlines()
            if (label and label in line) or _ERROR_WORDS.search(line)]
    return "\n".join(keep)


# ------------------------------------------------------------------ one size
def _wait4(proc: subprocess.Popen[str]) -> tuple[int, float]:
    """Exit code and ru_maxrss (MB, the largest process of the tree) of a child."""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage.ru_maxrss / 1024  # Linux: KiB


def _child_cmd(kind: str, overrides: list[str], work: Path, config_path: str | None) -> list[str]:
    cmd = [sys.executable, __file__, kind, json.dumps(overrides), "--work", str(work)]
    return cmd + (["--config", config_path] if config_path else [])


def generate(overrides: list[str], work: Path, config_path: str | None = None) -> dict[str, Any]:
    """Generate the dataset of ``overrides`` into ``work/shop`` in a child process; its events and memory."""
    cmd = _child_cmd("--generate-child", overrides, work, config_path)
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    out = proc.stdout.read()
    code, max_rss = _wait4(proc)
    if code != 0:
        raise RuntimeError(f"dataset generation failed (exit {code}) for {overrides}")
    child = json.loads(out.strip().splitlines()[-1])
    return {"events": child["events"], "seconds": round(time.perf_counter() - started, 1),
            "peak_rss_mb": round(max_rss, 1)}


def run_pipeline(overrides: list[str], work: Path, max_rss_mb: float | None, max_seconds: float | None,
                 echo: Callable[[str], None], config_path: str | None = None) -> dict[str, Any]:
    """Run the DAG on ``work/shop`` in a child process under a :class:`TreeRssSampler`; the timings, memory and
    outcome (a failure record when a step failed or the sampler killed the run)."""
    stderr_path = work / "pipeline-child.stderr"
    cmd = _child_cmd("--pipeline-child", overrides, work, config_path)
    started = time.perf_counter()
    with open(stderr_path, "w", encoding="utf-8") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, bufsize=1)
        sampler = TreeRssSampler(proc.pid, max_rss_mb=max_rss_mb, max_seconds=max_seconds).start()
        assert proc.stdout is not None
        last = ""
        for line in proc.stdout:
            sampler.on_line(line)
            if _PROGRESS.match(line):
                echo(line.rstrip())
            if line.strip():
                last = line
        code, max_rss = _wait4(proc)
        sampler.stop()
    seconds = time.perf_counter() - started
    row: dict[str, Any] = {}
    if code == 0:
        row = json.loads(last)
    stderr = stderr_path.read_text(encoding="utf-8", errors="replace")
    run_dir = _RUN_DIR.search(stderr)
    steps_peak = {k: round(v, 1) for k, v in sampler.peaks_mb.items()}
    failure = row.get("failure")
    if sampler.killed is not None:
        step = sampler.killed_phase if sampler.killed_phase != ORCHESTRATION else None
        log = _tail(Path(run_dir.group("dir")) / "pipeline.log", 400) if run_dir else ""
        failure = failure_record(step, step_error_lines(log, step) + "\n" + sampler.killed, seconds,
                                 sampler.peak_mb, sampler.peaks_mb, killed=True,
                                 step_seconds=time.monotonic() - sampler.phase_started if step else None)
    elif code != 0:  # the child itself died (not a step: run_pipeline_child reports those)
        failure = failure_record(None if sampler.phase == ORCHESTRATION else sampler.phase,
                                 stderr + f"\nthe pipeline process exited with {code}", seconds, sampler.peak_mb,
                                 sampler.peaks_mb)
    elif failure is not None:  # a step failed: the child's record plus the memory seen from here
        ran = row.get("steps", {}).get(failure["step"])
        failure = failure_record(failure["step"], "\n".join(failure["error_tail"]), failure["seconds_until_failure"],
                                 sampler.peak_mb, sampler.peaks_mb, step_seconds=ran if ran is not None else
                                 (sampler.phase_ended - sampler.phase_started if sampler.phase == failure["step"]
                                  else None))
    return {
        "total_seconds": round(row.get("total_seconds", seconds), 2),
        "peak_rss_mb": round(sampler.peak_mb, 1),
        "peak_rss_kind": "tree",
        # ru_maxrss misses the processes the sampler killed (never reaped by their parent): the samples see them
        "max_process_rss_mb": round(max(max_rss, sampler.max_process_mb), 1),
        "steps": row.get("steps") or sampler.done_seconds,
        "steps_peak_rss_mb": steps_peak,
        "rss_samples": sampler.samples,
        "succeeded": failure is None and bool(row.get("succeeded")),
        "blessed": row.get("blessed"),
        "pushed": bool(row.get("pushed")),
        "evaluation": row.get("evaluation"),
        "failure": failure,
    }


def run_pipeline_child(overrides: list[str], work: Path, config_path: str | None = None) -> dict[str, Any]:
    """In the pipeline child: run the DAG; a failed step becomes a failure record (step, error, seconds)."""
    from components.step_run import STATUS_FAILED, read_status
    from pipelines.local_run import PipelineStepFailed, run_local

    config = load_config(config_path, overrides)
    run_dirs: list[str] = []

    def echo(line: str) -> None:
        found = _RUN_DIR.search(line)
        if found:
            run_dirs.append(found.group("dir"))
        print(line, file=sys.stderr, flush=True)

    started = time.perf_counter()
    try:
        result = run_local(work / "shop", config, echo=echo)
    except PipelineStepFailed as exc:
        seconds = time.perf_counter() - started
        run_dir = Path(run_dirs[-1]) if run_dirs else None
        records = read_status(run_dir / "status") if run_dir else {}
        steps = {name: round(r["seconds"], 2) for name, r in records.items()
                 if r.get("seconds") is not None and r.get("status") in ("succeeded", "failed")}
        failed = next((name for name, r in records.items() if r.get("status") == STATUS_FAILED
                       or r.get("status") not in ("succeeded", "failed")), None)
        error = str(exc)
        if failed and records[failed].get("error"):
            error = str(records[failed]["error"])
        log = step_error_lines(_tail(run_dir / "pipeline.log", 2000), failed) if run_dir else ""
        return {"total_seconds": round(seconds, 2), "steps": steps, "succeeded": False, "blessed": None,
                "pushed": False, "failure": failure_record(failed, log + "\n" + error, seconds, 0.0, {})}
    total = time.perf_counter() - started
    return {
        "total_seconds": round(total, 2),
        "steps": {s.name: round(s.seconds, 2) for s in result.steps if s.seconds is not None},
        "succeeded": result.succeeded,
        "blessed": result.blessed,
        "pushed": result.pushed_to is not None,
        "failure": None,
        "evaluation": evaluation_record(result.step("evaluator"),
                                        evaluator_metrics(Path(run_dirs[-1]) if run_dirs else None)),
    }


def evaluation_record(step: Any, metrics_doc: dict[str, Any] | None = None) -> dict[str, Any]:
    """What the Evaluator decided and why: its reasons, its NDCG@10 rows (the candidate's and baselines') and,
    from its ``metrics.json`` (``metrics_doc``), each method's 95% interval of NDCG@10 and the users evaluated."""
    record: dict[str, Any] = {
        "reasons": [str(r) for r in step.notes.get("reasons") or []],
        "ndcg_at_10": {k: round(float(v), 5) for k, v in step.metrics.items() if k.endswith("ndcg@10")}}
    if metrics_doc:
        methods = (metrics_doc.get("confidence_intervals") or {}).get("methods") or {}
        record["ndcg_at_10_ci95"] = {f"{label}.ndcg@10": [round(float(x), 5) for x in m["ndcg@10"]]
                                     for label, m in methods.items() if "ndcg@10" in m}
        record["users_evaluated"] = metrics_doc.get("n_users")
    return record


def evaluator_metrics(run_dir: Path | None) -> dict[str, Any] | None:
    """The Evaluator's ``metrics.json`` among a local run's artifacts (None when there is none)."""
    if run_dir is None:
        return None
    for path in sorted((run_dir / "artifacts").rglob("metrics.json")):
        doc = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(doc, dict) and "confidence_intervals" in doc:
            return doc
    return None


def run_size(overrides: list[str], work: Path, max_rss_mb: float | None, max_seconds: float | None,
             echo: Callable[[str], None], config_path: str | None = None) -> dict[str, Any]:
    """Generate the dataset of ``overrides`` (on the config file ``config_path``, if any) and run the pipeline
    on it; one result row."""
    config = load_config(config_path, [f"paths.data_dir={work}", *overrides])
    generated = generate([f"paths.data_dir={work}", *overrides], work, config_path)
    echo(f"generated {generated['events']:,} events in {generated['seconds']} s")
    run = run_pipeline([f"paths.data_dir={work}", *overrides], work, max_rss_mb, max_seconds, echo, config_path)
    sim = config.simulator
    return {"events": generated["events"], "users": sim.users, "items": sim.items, "days": sim.days,
            "sessions_per_user_per_day": sim.sessions_per_user_per_day, **run, "generate": generated}


# ------------------------------------------------------------------ results
def merge_results(existing: dict[str, Any] | None, default_runs: list[dict[str, Any]] | None,
                  shop_runs: list[dict[str, Any]], machine: dict[str, Any]) -> dict[str, Any]:
    """The new pipeline.json: ``existing`` with ``runs`` replaced when default-world sizes were run, and each
    shop-scale row replacing the ``shop_scale_runs`` row of the same shape (target events, users, items, days,
    overrides) or appended."""
    result = dict(existing or {})
    result.setdefault("benchmark", "training pipeline on the KFP local runner (MLflow tracking on)")
    if default_runs:
        small, large = default_runs[0], default_runs[-1]
        ratio = (large["total_seconds"] / large["events"]) / (small["total_seconds"] / small["events"])
        million = [r for r in default_runs if r["events"] >= 900_000]
        result.update({
            "runs": default_runs,
            "seconds_per_event_ratio_largest_vs_smallest": round(ratio, 3),
            "target_1m_seconds": TARGET_SECONDS_1M,
            "meets_1m_target": bool(million) and all(r["total_seconds"] < TARGET_SECONDS_1M for r in million),
            "machine": machine,
        })
    if shop_runs:
        def key(r: dict[str, Any]) -> tuple[Any, ...]:
            return (r.get("target_events"), r.get("users"), r.get("items"), r.get("days"),
                    tuple(r.get("overrides", [])), r.get("config"))

        rows = {key(r): r for r in result.get("shop_scale_runs", [])}
        for r in shop_runs:
            rows[key(r)] = {**r, "machine": machine}
        result["shop_scale_runs"] = sorted(rows.values(), key=lambda r: (r.get("items", 0), r.get("users", 0),
                                                                         r.get("target_events", 0)))
    result["peak_rss_mb_meaning"] = (
        "rows with peak_rss_kind 'tree': the peak of the summed RSS of the pipeline process and all its "
        "descendants, sampled every 0.2 s (steps_peak_rss_mb: the same per step); rows without it (issue 3, "
        "measured earlier): the largest single step process's ru_maxrss (max_process_rss_mb in new rows)")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, nargs="+", default=[100_000, 300_000, 1_000_000])
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--days", type=int, default=14)
    parser.add_argument("--items", type=int, help="catalog size (a shop-scale run; needs --users)")
    parser.add_argument("--users", type=int, help="fixed user count: events are reached through the sessions rate")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override for generation and run (repeatable), e.g. example_gen.engine=beam")
    parser.add_argument("--config", type=Path, help="a config file for generation and run (e.g. "
                        "configs/shop_scale.yaml); recorded in each row")
    parser.add_argument("--max-rss-gb", type=float, default=16.0,
                        help="kill the run when the summed RSS of its processes passes this (0: no limit)")
    parser.add_argument("--max-minutes", type=float, default=0.0, help="kill a run that takes longer (0: no limit)")
    parser.add_argument("--out", type=Path, default=RESULT)
    args = parser.parse_args(argv)
    if (args.items is None) != (args.users is None):
        parser.error("--items and --users go together (a shop-scale world); leave both out for the default world")
    for item in args.overrides:
        if "=" not in item:
            parser.error(f"--set {item!r}: expected KEY=VALUE")
    shop = args.users is not None
    max_rss_mb = args.max_rss_gb * 1024 if args.max_rss_gb > 0 else None
    max_seconds = args.max_minutes * 60 if args.max_minutes > 0 else None
    config_path = None
    if args.config is not None:
        if not args.config.is_file():
            parser.error(f"--config {args.config}: no such file")
        config_path = str(args.config.resolve())
    machine = machine_info(("tensorflow", "tensorflow-transform", "apache-beam", "kfp", "mlflow", "psutil"))

    def echo(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    runs = []
    for n in sorted(args.events):
        world = [f"simulator.days={args.days}", f"simulator.seed={args.seed}"]
        extra: dict[str, Any] = {}
        if shop:
            pilot = shop_rate_for(n, args.users, args.items, args.days, args.seed, args.overrides,
                                  config_path=config_path)
            echo(f"{n:,} events: sessions_per_user_per_day {pilot['sessions_per_user_per_day']:.5f} "
                 f"(pilot {pilot['pilot_users']:,} users: {pilot['pilot_events']:,} events)")
            world += [f"simulator.users={args.users}", f"simulator.items={args.items}",
                      f"simulator.sessions_per_user_per_day={pilot['sessions_per_user_per_day']}"]
            extra = {"target_events": n, "overrides": list(args.overrides),
                     **({"config": _shown(args.config)} if args.config is not None else {}),
                     "pilot": {k: round(v, 6) if isinstance(v, float) else v for k, v in pilot.items()},
                     "max_rss_gb": args.max_rss_gb}
        else:
            world += [f"simulator.users={users_for(n, args.seed, args.days)}"]
        with tempfile.TemporaryDirectory(prefix=f"recflow-bench-{n}-") as tmp:
            row = {**run_size([*world, *args.overrides], Path(tmp), max_rss_mb, max_seconds, echo, config_path),
                   **extra}
        if not shop:  # the issue-3 rows keep their fields
            row.pop("sessions_per_user_per_day", None)
        runs.append(row)
        echo(json.dumps(row))
    existing = json.loads(args.out.read_text()) if args.out.exists() else None
    result = merge_results(existing, None if shop else runs, runs if shop else [], machine)
    text = json.dumps(result, indent=2)
    print(text)
    with atomic_path(args.out) as tmp_out:
        tmp_out.write_text(text + "\n")
    return 0


def _shown(path: Path) -> str:
    """``path`` as recorded in a row: relative to the repository when inside it."""
    resolved = path.resolve()
    root = Path(__file__).resolve().parent.parent
    return str(resolved.relative_to(root)) if resolved.is_relative_to(root) else str(resolved)


def _child(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--generate-child")
    parser.add_argument("--pipeline-child")
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--config")
    args = parser.parse_args(argv)
    if args.generate_child is not None:
        config = load_config(args.config, json.loads(args.generate_child))
        summary = generate_dataset(config.simulator, args.work / "shop", progress=False)
        print(json.dumps({"events": summary.events}))
    else:
        print(json.dumps(run_pipeline_child(json.loads(args.pipeline_child), args.work, args.config)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1:]) if {"--generate-child", "--pipeline-child"} & set(sys.argv) else main())
