"""The retraining watcher's guards: confirmation, dedup, single flight, cooldown, daily budget, stale locks."""

from __future__ import annotations

import json
import sys
import threading
import urllib.request
from pathlib import Path

from monitoring.config import WatchConfig
from monitoring.retraining import LOCK_NAME, read_lock, run_and_record, write_lock
from monitoring.watcher import AlertReceiver, RetrainingWatcher, pipeline_command


class Clock:
    def __init__(self, now: float = 1_767_600_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def sleeper(seconds: float, marker: Path) -> list[str]:
    """A real retraining stand-in: appends one line to ``marker`` per start, then runs for ``seconds``."""
    code = f"open({str(marker)!r}, 'a').write('started\\n'); import time; time.sleep({seconds})"
    return [sys.executable, "-c", code]


def alert(fingerprint: str, name: str = "RecflowDataDrift", status: str = "firing") -> dict[str, object]:
    return {"status": status, "labels": {"alertname": name, "severity": "warning"}, "fingerprint": fingerprint,
            "annotations": {"summary": "drift share 0.6"}}


def make(tmp_path: Path, seconds: float = 0.0, **overrides: object) -> tuple[RetrainingWatcher, Path, Clock]:
    marker = tmp_path / "starts.txt"
    clock = Clock()
    config = WatchConfig(**{"cooldown_s": 3600.0, "daily_budget": 3, "dedup_window_s": 600.0, **overrides})
    watcher = RetrainingWatcher(config, tmp_path / "state", lambda reason: sleeper(seconds, marker), clock=clock)
    return watcher, marker, clock


def starts(marker: Path) -> int:
    return len(marker.read_text().splitlines()) if marker.exists() else 0


def test_burst_of_50_alerts_starts_exactly_one_retraining(tmp_path: Path) -> None:
    watcher, marker, _ = make(tmp_path, seconds=3.0)
    receiver = AlertReceiver(watcher).start()
    try:
        failures: list[BaseException] = []

        def post(i: int) -> None:
            body = json.dumps({"version": "4", "status": "firing", "alerts": [alert(f"fp{i}")]}).encode()
            request = urllib.request.Request(receiver.url, body, {"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=120) as response:
                    assert response.status == 200
            except BaseException as exc:  # noqa: BLE001 - a thread's failure must fail the test, not vanish
                failures.append(exc)
        threads = [threading.Thread(target=post, args=(i,)) for i in range(50)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not failures, failures
    finally:
        receiver.stop()
    watcher.wait(timeout=30)
    assert starts(marker) == 1
    decisions = watcher.decisions()
    assert len(decisions) == 50
    assert [d["action"] for d in decisions].count("retrain") == 1
    skipped = [d["reason"] for d in decisions if d["action"] == "skip"]
    assert len(skipped) == 49 and all("in flight" in r or "cooldown" in r for r in skipped)
    assert not (tmp_path / "state" / LOCK_NAME).exists()  # the retraining released its lock
    last = json.loads((tmp_path / "state" / "last_run.json").read_text())
    assert last["status"] == "succeeded"
    assert "recflow_pipeline_last_run_failed 0.0" in (tmp_path / "state" / "pipeline.prom").read_text()


def test_duplicate_fingerprints_are_dropped(tmp_path: Path) -> None:
    watcher, _, clock = make(tmp_path, cooldown_s=0.0)
    first = watcher.on_alert(alert("same"))
    watcher.wait(timeout=30)
    clock.now += 60
    second = watcher.on_alert(alert("same"))
    assert first.action == "retrain"
    assert second.action == "skip" and "duplicate" in second.reason
    clock.now += 601  # out of the dedup window: the same alert counts again
    assert watcher.on_alert(alert("same")).action == "retrain"
    watcher.wait(timeout=30)


def test_cooldown_and_daily_budget(tmp_path: Path) -> None:
    watcher, marker, clock = make(tmp_path, cooldown_s=3600.0, daily_budget=2)
    clock.now = 1_767_571_200.0 + 3600  # 01:00 UTC
    assert watcher.on_alert(alert("a")).action == "retrain"
    watcher.wait(timeout=30)
    clock.now += 1800
    cooled = watcher.on_alert(alert("b"))
    assert cooled.action == "skip" and "cooldown" in cooled.reason
    clock.now += 1801
    assert watcher.on_alert(alert("c")).action == "retrain"
    watcher.wait(timeout=30)
    clock.now += 3601
    spent = watcher.on_alert(alert("d"))
    assert spent.action == "skip" and "daily budget spent: 2 of 2" in spent.reason
    clock.now += 86_400  # the next UTC day has a fresh budget
    assert watcher.on_alert(alert("e")).action == "retrain"
    watcher.wait(timeout=30)
    assert starts(marker) == 3


def test_drift_needs_confirmation_and_a_clean_verdict_resets_it(tmp_path: Path) -> None:
    watcher, marker, _ = make(tmp_path, confirmations=2)
    drift = {"verdict": "drift", "reasons": ["target drift: ctr 0.048 -> 0.036"]}
    assert watcher.on_verdict(drift).action == "observe"
    assert watcher.on_verdict({"verdict": "no_drift"}).action == "observe"
    assert watcher.on_verdict(drift).action == "observe"  # the count started over
    confirmed = watcher.on_verdict(drift)
    assert confirmed.action == "retrain" and "confirmed drift (2 verdicts)" in confirmed.reason
    watcher.wait(timeout=30)
    assert watcher.on_verdict({"verdict": "insufficient_data"}).action == "observe"
    assert starts(marker) == 1
    logged = [json.loads(line) for line in (tmp_path / "state" / "decisions.jsonl").read_text().splitlines()]
    assert all(entry["reason"] and entry["time"] for entry in logged)


def test_ignored_alerts_and_resolved_alerts(tmp_path: Path) -> None:
    watcher, marker, _ = make(tmp_path)
    assert watcher.on_alert(alert("x", name="RecflowServingLatencyHigh")).action == "ignore"
    assert watcher.on_alert(alert("y", status="resolved")).action == "ignore"
    assert starts(marker) == 0


def test_a_stale_lock_is_cleared_and_a_live_one_blocks(tmp_path: Path) -> None:
    watcher, _, _ = make(tmp_path)
    write_lock(tmp_path / "state", 2**22 + 12345, "killed run")  # no such pid
    assert watcher.in_flight() is None and read_lock(tmp_path / "state") is None
    assert any("stale" in d["reason"] for d in watcher.decisions())
    import os

    write_lock(tmp_path / "state", os.getpid(), "a live run")
    blocked = watcher.on_alert(alert("z"))
    assert blocked.action == "skip" and "in flight" in blocked.reason


def test_failed_pipeline_is_recorded(tmp_path: Path) -> None:
    code = run_and_record(tmp_path, [sys.executable, "-c", "raise SystemExit(3)"])
    assert code == 3
    assert json.loads((tmp_path / "last_run.json").read_text())["status"] == "failed"
    assert "recflow_pipeline_last_run_failed 1.0" in (tmp_path / "pipeline.prom").read_text()
    assert not (tmp_path / LOCK_NAME).exists()


def test_pipeline_command_local_and_kfp(tmp_path: Path) -> None:
    local = pipeline_command(tmp_path, model_store="/m")
    assert local[1:] == ["-m", "recflow", "pipeline", "run", "--data", str(tmp_path), "--model-store", "/m"]
    remote = pipeline_command(tmp_path, kfp_host="http://kfp:8080")
    assert remote[3:7] == ["pipeline", "submit", "--host", "http://kfp:8080"]
    overrides = WatchConfig().retraining_overrides
    assert overrides == (
        "evaluator.thresholds.min_lift_over_popularity=null",
        "evaluator.thresholds.min_lift_over_best_baseline=null",
    )
    argv = pipeline_command(tmp_path, overrides=overrides)
    assert argv[3:9] == ["--set", overrides[0], "--set", overrides[1], "pipeline", "run"]
    # the override parses as the rule being off (the champion comparison and the floors stay)
    from recflow.config import load_config

    thresholds = load_config(None, list(overrides)).evaluator.thresholds
    assert thresholds.min_lift_over_popularity is None and thresholds.require_not_worse_than_champion
    assert thresholds.min_lift_over_best_baseline is None


def test_unlaunchable_retraining_is_a_logged_skip(tmp_path: Path) -> None:
    from recflow.errors import DataError

    def broken(reason: str) -> list[str]:
        raise DataError("feedback.jsonl: no feedback events to retrain on")

    watcher = RetrainingWatcher(WatchConfig(), tmp_path / "s", broken)
    decision = watcher.on_alert(alert("q"))
    assert decision.action == "skip" and "no feedback events" in decision.reason
    assert read_lock(tmp_path / "s") is None


def test_recent_dataset_is_the_history_tail_then_the_feedback(tmp_path: Path) -> None:
    """The retraining data: the last N events of the champion's training data followed by the feedback log."""
    import pandas as pd
    import pytest

    from monitoring.retraining import recent_dataset
    from recflow.errors import DataError
    from recflow.io import write_dataset
    from recflow.simulator import SimulatorConfig, simulate_log

    log = simulate_log(SimulatorConfig(users=100, items=60, days=2, seed=4))
    history = tmp_path / "history"
    write_dataset(history, events=log.events, items=log.items(), users=log.users())
    feedback = tmp_path / "feedback"
    feedback.mkdir()
    later = pd.Timestamp.now(tz="UTC")
    rows = [{"event_id": f"f{i}", "event_type": "impression",
             "timestamp": (later + pd.Timedelta(seconds=i)).isoformat(), "user_id": "u000001",
             "item_id": "i000002", "request_id": f"r{i}", "score": 0.5} for i in range(300)]
    (feedback / "feedback-1-000001.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")

    out = recent_dataset(feedback, tmp_path / "recent", 1000, history=history)
    events = pd.read_parquet(out / "events.parquet")
    assert len(events) == 1000 and events["event_id"].tolist()[-300:] == [r["event_id"] for r in rows]
    assert events["event_id"].tolist()[:700] == log.events["event_id"].tolist()[-700:]
    assert events["timestamp"].is_monotonic_increasing
    assert (out / "items.parquet").is_file() and (out / "users.parquet").is_file()  # from the history
    only_feedback = recent_dataset(feedback, tmp_path / "recent2", 1000, items_path=history / "items.parquet")
    assert len(pd.read_parquet(only_feedback / "events.parquet")) == 300
    with pytest.raises(DataError, match="no items.parquet"):
        recent_dataset(feedback, tmp_path / "recent3", 1000)


def test_retraining_warm_starts_from_the_local_champion(tmp_path: Path) -> None:
    from monitoring.watcher import champion_model_dir
    from recflow.model_store import ModelStore

    store = tmp_path / "store"
    assert champion_model_dir(None) is None and champion_model_dir(str(store)) is None  # no champion yet
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "towers.npz").write_bytes(b"weights")
    (tmp_path / "evaluation").mkdir()
    (tmp_path / "evaluation" / "blessing.json").write_text(json.dumps({"blessed": True, "reasons": ["test"]}))
    assert ModelStore(store).push({"model": tmp_path / "model"}, tmp_path / "evaluation").pushed
    model = champion_model_dir(str(store))
    assert model is not None and (Path(model) / "towers.npz").is_file()
    argv = pipeline_command(tmp_path / "data", model_store=str(store), warm_start_from=model)
    assert argv[argv.index(f"trainer.warm_start_from={model}") - 1] == "--set"
    # an explicit override wins
    argv = pipeline_command(tmp_path / "data", overrides=["trainer.warm_start_from=/elsewhere"],
                            warm_start_from=model)
    assert f"trainer.warm_start_from={model}" not in argv and "trainer.warm_start_from=/elsewhere" in argv


def test_a_sequence_model_champion_can_be_warm_started_from(tmp_path: Path) -> None:
    """The default retrieval model (the sequence model) keeps its encoder and item table, not tower weights."""
    from monitoring.watcher import champion_model_dir
    from recflow.model_store import ModelStore
    from recflow.models.sequence import WEIGHTS_FILE
    from recflow.training.sequence_retrieval import ENCODER_FILE, ITEMS_FILE

    assert ENCODER_FILE == WEIGHTS_FILE  # the TensorFlow-free name of the encoder file

    store = tmp_path / "store"
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / WEIGHTS_FILE).write_bytes(b"weights")
    (tmp_path / "evaluation").mkdir()
    (tmp_path / "evaluation" / "blessing.json").write_text(json.dumps({"blessed": True, "reasons": ["test"]}))
    assert ModelStore(store).push({"model": tmp_path / "model"}, tmp_path / "evaluation").pushed
    assert champion_model_dir(str(store)) is None  # the item table is missing: nothing to match ids by
    (tmp_path / "model" / ITEMS_FILE).write_bytes(b"items")
    assert ModelStore(store).push({"model": tmp_path / "model"}, tmp_path / "evaluation").pushed
    model = champion_model_dir(str(store))
    assert model is not None and (Path(model) / WEIGHTS_FILE).is_file()


def test_the_retraining_overrides_that_touch_the_release_gate_are_named(caplog):
    from monitoring.watcher import gate_overrides

    overrides = ["evaluator.thresholds.min_lift_over_popularity=null", "trainer.epochs=3",
                 "release.canary.enabled=false"]
    assert gate_overrides(overrides) == [overrides[0], overrides[2]]
    with caplog.at_level("WARNING", logger="monitoring.watcher"):
        pipeline_command(Path("data"), overrides=overrides)
    assert "the retraining changes release-gate settings" in caplog.text
    assert "release.canary.enabled=false" in caplog.text and "trainer.epochs" not in caplog.text


def test_data_window_cuts_history_plus_feedback_by_time(tmp_path: Path, capsys) -> None:
    """`recflow data window --since/--until`: the history's and the feedback log's events in [since, until)."""
    import pandas as pd

    from recflow.cli import main
    from recflow.io import write_dataset
    from recflow.simulator import SimulatorConfig, simulate_log

    log = simulate_log(SimulatorConfig(users=80, items=40, days=3, seed=5))
    history = tmp_path / "history"
    write_dataset(history, events=log.events, items=log.items(), users=log.users())
    ts = pd.to_datetime(log.events["timestamp"], utc=True)
    start = ts.min().normalize() + pd.Timedelta(days=1)
    feedback = tmp_path / "feedback"
    feedback.mkdir()
    later = ts.max() + pd.Timedelta(hours=1)
    rows = [{"event_id": f"f{i}", "event_type": "click", "timestamp": (later + pd.Timedelta(minutes=i)).isoformat(),
             "user_id": "u000001", "item_id": "i000002", "request_id": f"r{i}"} for i in range(50)]
    (feedback / "feedback-1-000001.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    until = later + pd.Timedelta(minutes=30)

    out = tmp_path / "window"
    assert main(["data", "window", "--history", str(history), "--feedback", str(feedback),
                 "--since", start.isoformat(), "--until", until.isoformat(), "--out", str(out)]) == 0
    assert "30 from the feedback log" in capsys.readouterr().out
    events = pd.read_parquet(out / "events.parquet")
    got = pd.to_datetime(events["timestamp"], utc=True)
    assert got.min() >= start and got.max() < until and got.is_monotonic_increasing
    expected_history = int(((ts >= start) & (ts < until)).sum())
    assert len(events) == expected_history + 30
    assert events["event_id"].tolist()[-30:] == [r["event_id"] for r in rows[:30]]
    assert (out / "items.parquet").is_file() and (out / "users.parquet").is_file()

    assert main(["data", "window", "--history", str(history), "--since", "2001-01-01", "--until", "2001-01-02",
                 "--out", str(tmp_path / "empty")]) != 0
    err = capsys.readouterr().err
    assert "no events between" in err and "the data covers" in err and not (tmp_path / "empty").exists()
    assert main(["data", "window", "--history", str(history), "--since", "2026-13-45", "--out",
                 str(tmp_path / "bad")]) != 0
    assert "not a date/time" in capsys.readouterr().err
    assert main(["data", "window", "--history", str(history), "--out", str(out)]) != 0  # never overwritten
    assert "not empty" in capsys.readouterr().err
    assert main(["data", "window", "--help"]) == 0


def test_once_waits_for_the_retraining_and_records_its_outcome(tmp_path: Path) -> None:
    """What `monitor watch --once` does after starting a retraining: wait for it, then log the outcome."""
    watcher, marker, _ = make(tmp_path, seconds=1.5)
    started = watcher.on_alert(alert("fp-once"))
    assert started.action == "retrain" and watcher.in_flight() is not None
    outcomes = watcher.wait_and_record(timeout=120)
    assert [o.action for o in outcomes] == ["outcome"] and "succeeded (exit code 0)" in outcomes[0].reason
    assert watcher.in_flight() is None and starts(marker) == 1
    logged = watcher.decisions()
    assert [d["action"] for d in logged] == ["retrain", "outcome"]
    assert logged[-1]["details"]["status"] == "succeeded" and logged[-1]["pid"] == started.pid

    failing = RetrainingWatcher(WatchConfig(cooldown_s=0.0), tmp_path / "state2",
                                lambda reason: [sys.executable, "-c", "raise SystemExit(4)"])
    failing.on_alert(alert("fp-fail"))
    (outcome,) = failing.wait_and_record(timeout=120)
    assert "failed (exit code 4)" in outcome.reason and outcome.details["exit_code"] == 4
