"""Shared by the benchmarks that serve a trained bundle online: generate a simulator world's log, run the
pipeline on it (KFP local runner, no tracking) into a fresh model store, and keep the run's verdict so that a
rerun with ``reuse`` serves the same bundle without training again."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from recflow.config import load_config
from recflow.simulator import SimulatorConfig, generate_dataset


def generate_and_train(world: SimulatorConfig, data: Path, store: Path, run_dir: Path, saved: Path,
                       overrides: Sequence[str], reuse: bool = False) -> dict[str, Any]:
    """The world's log in ``data``, the pushed bundle in ``store``; returns ``pipeline_seconds``, ``blessed``,
    ``run_dir`` and the run's ``blessing`` (blessing.json). ``reuse``: return what ``saved`` holds from an earlier
    run with the same arguments instead."""
    from pipelines.local_run import run_local

    if reuse and saved.is_file():
        return dict(json.loads(saved.read_text(encoding="utf-8")))
    for path in (data, store):
        shutil.rmtree(path, ignore_errors=True)
    generate_dataset(world, data, progress=False)
    config = load_config(None, [*overrides, f"paths.data_dir={run_dir}"])
    started = time.perf_counter()
    result = run_local(data, config, model_store=store, tracking=False, echo=lambda _m: None)
    blessing_path = next(iter(result.run_dir.rglob("blessing.json")), None)
    blessing = json.loads(blessing_path.read_text(encoding="utf-8")) if blessing_path else {}
    out = {"pipeline_seconds": time.perf_counter() - started, "blessed": bool(blessing.get("blessed")),
           "run_dir": str(result.run_dir), "blessing": blessing}
    saved.write_text(json.dumps(out, default=str), encoding="utf-8")
    return out
