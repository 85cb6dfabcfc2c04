"""The logic of benchmarks/pipeline.py (issue 17): the process-tree RSS sampler, the sessions-rate arithmetic of
a shop-scale world, failure records and the merge of result rows."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import ModuleType

import psutil  # type: ignore[import-untyped]  # (no stubs in the lock)
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_pipeline", ROOT / "benchmarks" / "pipeline.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_pipeline"] = module
    # The benchmark puts benchmarks/ first on sys.path (for ``from machine import ...``); left there, it would make
    # benchmarks/serving.py shadow the serving package for every later test of this worker.
    saved = list(sys.path)
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path[:] = saved
    return module


bench = _load()

#: A parent that starts a grandchild allocating (and touching) ALLOC_MB, prints "ready", then waits.
ALLOC_MB = 300
_TREE = textwrap.dedent(f"""
    import subprocess, sys
    child = subprocess.Popen([sys.executable, "-c",
        "import sys, time; b = b'\\\\x01' * ({ALLOC_MB} * 2**20); print('ready', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True)
    print(child.stdout.readline().strip(), flush=True)
    child.wait()
""")


def _start_tree() -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", _TREE], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    return proc


def _rss_mb(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / 2**20


# ------------------------------------------------------------------ the tree RSS sampler
def test_sampler_sums_the_rss_of_the_descendants_and_attributes_it_to_the_running_step():
    proc = _start_tree()
    try:
        sampler = bench.TreeRssSampler(proc.pid, interval=0.05)
        sampler.on_line("[3/6] tfrs_trainer: started\n")
        assert sampler.phase == "tfrs_trainer"
        mb = sampler.sample()
        grandchild = psutil.Process(proc.pid).children()[0]
        own = _rss_mb(proc.pid)
        # the grandchild's touched allocation counts, on top of the parent's own resident set
        assert mb >= ALLOC_MB
        assert mb == pytest.approx(own + _rss_mb(grandchild.pid), abs=20)
        assert sampler.peaks_mb == {"tfrs_trainer": mb}
        assert sampler.max_process_mb == pytest.approx(_rss_mb(grandchild.pid), abs=20)
        sampler.on_line("[3/6] tfrs_trainer: done in 1.0s\n")  # its process still exits, its tracking follows
        assert sampler.phase == "tfrs_trainer"
        sampler.on_line("[4/6] agents_trainer: started\n")
        sampler.on_line("some other output: [5/6] evaluator: started\n")  # not a progress line
        sampler.on_line("[4/6] agents_trainer: error: the log has no rewards\n")
        assert sampler.phase == "agents_trainer"
        sampler.on_line("[+] tuner: started\n")
        assert sampler.phase == "tuner"
        assert sampler.done_seconds == {"tfrs_trainer": 1.0}
        assert sampler.killed is None
    finally:
        bench.kill_tree(proc.pid)
        proc.wait(timeout=10)


def test_sampler_thread_keeps_the_peak_and_kills_the_whole_tree_past_the_memory_limit():
    proc = _start_tree()
    grandchild = psutil.Process(proc.pid).children()[0]
    sampler = bench.TreeRssSampler(proc.pid, interval=0.05, max_rss_mb=ALLOC_MB / 2)
    sampler.phase = "transform"
    sampler.start()
    try:
        assert proc.wait(timeout=10) == -9  # SIGKILL
        grandchild.wait(timeout=10)
    finally:
        sampler.stop()
        bench.kill_tree(proc.pid)
    assert not grandchild.is_running()
    assert sampler.killed is not None and "passed the limit of 150 MB during transform" in sampler.killed
    assert sampler.killed_phase == "transform"
    assert sampler.peak_mb >= ALLOC_MB
    assert sampler.peaks_mb["transform"] == sampler.peak_mb
    assert bench.tree_rss_bytes(proc.pid) == 0  # gone: no samples of a dead tree


def test_sampler_kills_past_the_time_limit():
    proc = _start_tree()
    sampler = bench.TreeRssSampler(proc.pid, interval=0.05, max_seconds=0.3).start()
    started = time.monotonic()
    try:
        assert proc.wait(timeout=10) == -9
    finally:
        sampler.stop()
        bench.kill_tree(proc.pid)
    assert time.monotonic() - started < 5
    assert sampler.killed is not None and "time limit of 0 s during orchestration" in sampler.killed


# ------------------------------------------------------------------ the world's shape
def test_sessions_rate_scales_the_pilot_rate_by_events_per_user():
    # a pilot of 20,000 users at 0.01 sessions/user/day gave 40,000 events; 500,000 users for 1M events need the
    # same events per user (2) -> the same rate; for 2M events twice the rate
    assert bench.sessions_rate_for(1_000_000, 500_000, 0.01, 20_000, 40_000) == pytest.approx(0.01)
    assert bench.sessions_rate_for(2_000_000, 500_000, 0.01, 20_000, 40_000) == pytest.approx(0.02)
    assert bench.sessions_rate_for(1_000_000, 500_000, 0.35, 300, 7_500) == pytest.approx(0.35 * 1_000_000 * 300
                                                                                           / (7_500 * 500_000))
    with pytest.raises(ValueError, match="produced no events"):
        bench.sessions_rate_for(1_000_000, 500_000, 0.01, 20_000, 0)
    with pytest.raises(ValueError, match="must all be positive"):
        bench.sessions_rate_for(1_000_000, 0, 0.01, 20_000, 10)


def test_shop_rate_from_two_pilots_gives_about_the_target_events():
    pilot = bench.shop_rate_for(30_000, 4_000, 2_000, 5, seed=3, first_pilot_users=300, second_pilot_users=1_000)
    assert pilot["pilot_users"] == 1_000
    events = bench._pilot_events(4_000, 2_000, 5, pilot["sessions_per_user_per_day"], 3, ())
    assert events == pytest.approx(30_000, rel=0.15)


# ------------------------------------------------------------------ failures and results
def test_failure_record_keeps_the_last_error_lines_and_the_memory_until_then():
    error = "\n".join(f"line {i}" for i in range(40)) + "\n\n  MemoryError: cannot allocate  \n"
    record = bench.failure_record("evaluator", error, 123.456, 9876.54, {"evaluator": 5432.11, "transform": 99.0})
    assert record == {
        "step": "evaluator",
        "error_tail": [*(f"line {i}" for i in range(26, 40)), "  MemoryError: cannot allocate"],
        "seconds_until_failure": 123.5,
        "step_seconds_until_failure": None,
        "peak_rss_mb_until_failure": 9876.5,
        "step_peak_rss_mb": 5432.1,
        "killed_by_benchmark": False,
    }
    assert len(record["error_tail"]) == bench.ERROR_TAIL_LINES
    assert bench.failure_record("evaluator", "x", 1.0, 2.0, {}, step_seconds=0.44)["step_seconds_until_failure"] == 0.4
    outside = bench.failure_record(None, "exit 1", 1.0, 2.0, {}, killed=True)
    assert outside["step"] is None and outside["step_peak_rss_mb"] is None and outside["killed_by_benchmark"]


def test_merge_keeps_the_default_world_rows_and_replaces_shop_rows_of_the_same_shape():
    existing = {"benchmark": "b", "runs": [{"events": 1, "total_seconds": 2.0}], "meets_1m_target": True,
                "shop_scale_runs": [{"target_events": 10, "users": 5, "items": 3, "days": 14, "overrides": [],
                                     "peak_rss_mb": 1.0},
                                    {"target_events": 20, "users": 5, "items": 3, "days": 14, "overrides": [],
                                     "peak_rss_mb": 2.0}]}
    new = {"target_events": 10, "users": 5, "items": 3, "days": 14, "overrides": [], "peak_rss_mb": 7.0}
    other = {**new, "overrides": ["example_gen.engine=beam"], "peak_rss_mb": 8.0}
    preset = {**new, "config": "configs/shop_scale.yaml", "peak_rss_mb": 9.0}
    merged = bench.merge_results(existing, None, [new, other, preset], {"cpu": "x"})
    assert merged["runs"] == existing["runs"] and merged["meets_1m_target"] is True
    assert [(r["target_events"], r["overrides"], r.get("config"), r["peak_rss_mb"])
            for r in merged["shop_scale_runs"]] == [
        (10, [], None, 7.0), (10, ["example_gen.engine=beam"], None, 8.0), (10, [], "configs/shop_scale.yaml", 9.0),
        (20, [], None, 2.0)]
    assert merged["shop_scale_runs"][0]["machine"] == {"cpu": "x"}
    assert "summed RSS" in merged["peak_rss_mb_meaning"]
    runs = [{"events": 100, "total_seconds": 10.0}, {"events": 1_000_000, "total_seconds": 500.0}]
    rerun = bench.merge_results(merged, runs, [], {"cpu": "y"})
    assert rerun["runs"] == runs and rerun["shop_scale_runs"] == merged["shop_scale_runs"]
    assert rerun["seconds_per_event_ratio_largest_vs_smallest"] == pytest.approx(0.005)
    assert rerun["meets_1m_target"] is True


def test_step_error_lines_keep_the_failed_steps_lines_and_error_words():
    log = "\n".join([
        "17:14:08 - INFO - Executing task 'evaluator'",
        "    [5/6] evaluator: started",
        "    {\"outputFile\": \"/tmp/x\"}",
        "                        \"error_margin\": 0.005,",
        "17:24:40 - ERROR - Task 'evaluator' finished with status FAILURE",
        "    [4/6] agents_trainer: done in 62.3s",
        "    [exit] close_run: MLflow run 9b closed as FAILED (pipeline FAILED)",
        "    Output: 'FAILED'",
    ])
    assert bench.step_error_lines(log, "evaluator").splitlines() == [
        "    [5/6] evaluator: started",
        "17:24:40 - ERROR - Task 'evaluator' finished with status FAILURE",
        "    [exit] close_run: MLflow run 9b closed as FAILED (pipeline FAILED)",
        "    Output: 'FAILED'",
    ]
    assert bench.step_error_lines(log, None).splitlines()[0].startswith("17:24:40 - ERROR")


def test_evaluation_record_keeps_the_reasons_and_the_ndcg_at_10_rows():
    from pipelines.local_run import StepReport

    step = StepReport("evaluator", "succeeded", 1.0,
                      metrics={"candidate.ndcg@10": 0.56739, "als.ndcg@10": 0.5699, "candidate.recall@10": 0.3,
                               "candidate.ndcg@5": 0.4},
                      notes={"reasons": ["ndcg@10 0.567 does not beat the best baseline als 0.570"]})
    record = bench.evaluation_record(step)
    assert record == {"reasons": ["ndcg@10 0.567 does not beat the best baseline als 0.570"],
                      "ndcg_at_10": {"candidate.ndcg@10": 0.56739, "als.ndcg@10": 0.5699}}
    assert bench.evaluation_record(StepReport("evaluator", "succeeded")) == {"reasons": [], "ndcg_at_10": {}}


def test_evaluation_record_takes_the_intervals_from_the_evaluators_metrics_json(tmp_path: Path):
    from pipelines.local_run import StepReport

    doc = {"n_users": 5000, "confidence_intervals": {"level": 0.95, "methods": {
        "candidate": {"ndcg@10": [0.551234567, 0.565], "recall@10": [0.1, 0.2]}, "als": {"ndcg@10": [0.555, 0.569]},
        "content": {"recall@10": [0.1, 0.2]}}}}
    out = tmp_path / "artifacts" / "evaluator" / "evaluation"
    out.mkdir(parents=True)
    (out / "metrics.json").write_text(json.dumps(doc), encoding="utf-8")
    (tmp_path / "artifacts" / "blessing").mkdir()
    (tmp_path / "artifacts" / "blessing" / "metrics.json").write_text("{}", encoding="utf-8")
    found = bench.evaluator_metrics(tmp_path)
    assert found == doc and bench.evaluator_metrics(tmp_path / "missing") is None
    record = bench.evaluation_record(StepReport("evaluator", "succeeded", metrics={"candidate.ndcg@10": 0.558}), found)
    assert record["ndcg_at_10_ci95"] == {"candidate.ndcg@10": [0.55123, 0.565], "als.ndcg@10": [0.555, 0.569]}
    assert record["users_evaluated"] == 5000 and record["ndcg_at_10"] == {"candidate.ndcg@10": 0.558}


def test_generation_child_reads_the_config_file_under_the_overrides(tmp_path: Path):
    from recflow.config import load_config
    from recflow.simulator import simulate_log

    config_file = tmp_path / "world.yaml"
    config_file.write_text("simulator:\n  users: 30\n  days: 2\n  items: 40\n", encoding="utf-8")
    overrides = [f"paths.data_dir={tmp_path}", "simulator.items=50"]
    generated = bench.generate(overrides, tmp_path, str(config_file))
    expected = simulate_log(load_config(config_file, overrides).simulator)
    assert load_config(config_file, overrides).simulator.items == 50  # the override wins over the file
    assert generated["events"] == len(expected.events) > 0
