"""Every command of docs/runbooks runs, as written, against a real local setup.

Each runbook ends with a ``## Commands`` bash block (variables: docs/runbooks/README.md). The fast tests check
that every runbook has one and that every ``recflow`` command the prose mentions is in a block; the slow test
builds a local deployment -- a simulated shop as the event history, a feedback log after it, a config file, the
watcher's state directory -- and runs every block line by line through bash with the recflow CLI: RecflowDataDrift
first (its manual retraining, ``recflow data window`` then ``recflow pipeline run``, trains and pushes the
champion and records the MLflow run), then the others, in name order. A line that acts on a canary gets a
running canary first (the alert it answers implies one).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUNBOOKS = sorted((ROOT / "docs" / "runbooks").glob("Recflow*.md"))
_BLOCK = re.compile(r"^## Commands\n.*?^```bash\n(.*?)^```", re.S | re.M)
_ASSIGN = re.compile(r"^([A-Z_]+)=(.*)$")
#: Documented exit codes of `recflow monitor drift`: 0 no drift, 1 drift, 4 too little data.
DRIFT_EXIT_CODES = (0, 1, 4)


def commands(path: Path) -> list[str]:
    """The command lines of a runbook's Commands block (comments and blank lines dropped)."""
    match = _BLOCK.search(path.read_text(encoding="utf-8"))
    assert match, f"{path.name}: no '## Commands' bash block"
    return [line.strip() for line in match.group(1).splitlines() if line.strip() and not line.startswith("#")]


def test_every_runbook_has_a_commands_block_of_recflow_commands():
    assert len(RUNBOOKS) >= 11
    for path in RUNBOOKS:
        lines = commands(path)
        assert lines, path.name
        for line in lines:
            assert line.startswith("recflow ") or _ASSIGN.match(line), f"{path.name}: {line}"


def _command_words(line: str) -> str:
    """``recflow models canary promote --reason "x"`` -> ``recflow models canary promote``."""
    words = []
    for word in line.split():
        if word.startswith(("-", '"', "$", "<")) or not re.fullmatch(r"[a-z_]+", word):
            break
        words.append(word)
    return " ".join(words)


def test_every_recflow_command_in_the_prose_is_in_a_commands_block():
    """An on-call engineer copies from the blocks; the prose may only name commands the blocks hold."""
    in_blocks = {_command_words(line) for path in RUNBOOKS for line in commands(path)}
    for path in RUNBOOKS:
        for span in re.findall(r"`(recflow [^`]*)`", path.read_text(encoding="utf-8")):
            assert _command_words(span) in in_blocks, f"{path.name}: `{span}` is in no Commands block"


# ----------------------------------------------------------------------------------------------------------
# The slow test: a real local setup


def _shop(work: Path) -> tuple[Path, Path]:
    """The event history (the first days of a simulated shop) and a feedback log (its last day, as serving logs
    it: JSON lines segments beside the catalog)."""
    import pandas as pd

    from recflow.io import write_dataset
    from recflow.simulator import SimulatorConfig, simulate_log

    log = simulate_log(SimulatorConfig(users=150, items=60, days=6, seed=11))
    ts = pd.to_datetime(log.events["timestamp"], utc=True)
    cut = ts.max().normalize()
    history = work / "history"
    write_dataset(history, events=log.events[ts < cut], items=log.items(), users=log.users())
    feedback = work / "feedback"
    feedback.mkdir()
    last_day = log.events[ts >= cut].copy()
    last_day["timestamp"] = pd.to_datetime(last_day["timestamp"], utc=True).map(lambda t: t.isoformat())
    rows = [{k: v for k, v in r.items() if v is not None and v == v} for r in last_day.to_dict("records")]
    (feedback / "feedback-w1-000001.jsonl").write_text("\n".join(json.dumps(r, default=str) for r in rows) + "\n")
    shutil.copyfile(history / "items.parquet", feedback / "items.parquet")
    return history, feedback


def _env(tmp_path: Path) -> dict[str, str]:
    work = tmp_path / "deployment"
    work.mkdir()
    history, feedback = _shop(work)
    config = work / "recflow.yaml"
    config.write_text(
        f"paths:\n  data_dir: {work / 'data'}\n"
        "trainer:\n  epochs: 2\n  ranking_epochs: 2\n  history_ranking_epochs: 3\n"
        # a fresh store has no champion; the tiny shop's candidate need not beat the baselines to be pushed
        "evaluator:\n  thresholds:\n    min_lift_over_popularity: null\n    min_lift_over_best_baseline: null\n"
        "monitoring:\n  drift:\n    min_events: 50\n", encoding="utf-8")
    return {**os.environ, "RECFLOW_CONFIG": str(config), "STATE_DIR": str(work / "state"),
            "HISTORY": str(history), "FEEDBACK": str(feedback), "SINCE": "2000-01-01",
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)}


def _run(line: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "-c", line], env=env, cwd=cwd, capture_output=True, text=True, timeout=3000)


def _store(env: dict[str, str]):  # noqa: ANN202
    from recflow.model_store import ModelStore

    return ModelStore(str(Path(env["RECFLOW_CONFIG"]).parent / "data" / "models"))


def _push_again(env: dict[str, str], *, canary: bool) -> str:
    """Push the champion's bundle again as a new version (a canary, or the new champion)."""
    store = _store(env)
    champion = store.champion()
    assert champion is not None, "the manual retraining of RecflowDataDrift pushed no champion"
    parts = {p: Path(champion.path) / p for p in ("transform", "model", "policy", "evaluation")}
    result = store.push(parts, parts["evaluation"], metadata={"mlflow_run_id": champion.mlflow_run_id or ""},
                        canary=canary)
    assert result.pushed, result.reason
    return str(result.version)


def _run_book(path: Path, env: dict[str, str], cwd: Path) -> None:
    for line in commands(path):
        assignment = _ASSIGN.match(line)
        if assignment:  # a variable the next lines use
            value = _run(f'{line}; printf %s "${assignment.group(1)}"', env, cwd)
            assert value.returncode == 0, (path.name, line, value.stderr)
            env[assignment.group(1)] = value.stdout
            continue
        if re.search(r"models canary (promote|abort)", line) and _store(env).canary() is None:
            _push_again(env, canary=True)
        done = _run(line, env, cwd)
        allowed = DRIFT_EXIT_CODES if line.startswith("recflow monitor drift") else (0,)
        assert done.returncode in allowed, f"{path.name}: `{line}` exited {done.returncode}:\n{done.stderr[-3000:]}"
        assert "Traceback" not in done.stderr, (path.name, line, done.stderr[-3000:])


@pytest.mark.slow
def test_every_runbook_command_runs_against_a_local_setup(tmp_path: Path):
    from recflow.config import load_config
    from recflow.tracking import list_runs, resolve_tracking_uri, tracking_data_dir

    env = _env(tmp_path)
    elsewhere = tmp_path / "on-call-shell"  # not the deployment's directory: the config file anchors the paths
    elsewhere.mkdir()
    first = next(p for p in RUNBOOKS if p.stem == "RecflowDataDrift")
    _run_book(first, env, elsewhere)
    assert (Path(env["STATE_DIR"]) / "drift" / "latest" / "summary.json").is_file()
    store = _store(env)
    champion = store.champion()
    assert champion is not None and champion.mlflow_run_id
    _push_again(env, canary=False)  # a newer champion, so that a rollback has somewhere to go

    config = load_config(Path(env["RECFLOW_CONFIG"]))
    uri = resolve_tracking_uri(config.tracking, tracking_data_dir(config.paths.data_dir, Path(env["RECFLOW_CONFIG"])))
    runs = list_runs(uri, config.tracking.experiment)
    assert any(r.name.startswith("manual-retrain-") and r.status == "FINISHED" for r in runs)
    env["RUN_ID"] = runs[0].run_id
    env["CHAMPION_RUN_ID"] = champion.mlflow_run_id[:12]  # as `recflow models list` shows it
    for path in RUNBOOKS:
        if path != first:
            _run_book(path, env, elsewhere)
    assert (Path(store.root) / "aliases" / "canary_decisions.jsonl").is_file() or store.canary() is None
