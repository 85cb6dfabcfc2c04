"""Time and memory of a benchmark's stages run one by one in this process (trainer_stages.py, evaluator_stages.py).

A thread samples the process's RSS every 0.1 s; :meth:`StageSampler.run` records each stage's seconds, the RSS
after it and the peak during it. Past ``max_rss_gb`` the stage is recorded as killed, :meth:`write` saves what
was measured and the process exits (3).
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]

from recflow.io import atomic_path


def shop_world(sessions_rate: float) -> list[str]:
    """The shop-scale world's simulator overrides at ``sessions_rate`` sessions per user-day."""
    return ["simulator.users=500000", "simulator.items=100000", "simulator.days=14",
            f"simulator.sessions_per_user_per_day={sessions_rate}"]


class StageSampler:
    """Each stage's seconds, RSS after it and peak RSS during it; subclasses say how the result is written."""

    def __init__(self, max_rss_gb: float) -> None:
        self.proc, self.peak, self.current = psutil.Process(), 0, "start"
        self.rows: list[dict[str, Any]] = []
        self.limit = max_rss_gb * 2**30
        threading.Thread(target=self._sample, daemon=True).start()

    def row_fields(self) -> dict[str, Any]:
        """Fields every stage row carries after its name (none here)."""
        return {}

    def write(self, finished: bool) -> None:
        raise NotImplementedError

    def _sample(self) -> None:
        while True:
            rss = self.proc.memory_info().rss
            self.peak = max(self.peak, rss)
            if rss > self.limit:
                self.rows.append({"stage": self.current, **self.row_fields(),
                                  "killed_above_mb": round(self.limit / 2**20)})
                self.write(False)
                os._exit(3)
            time.sleep(0.1)

    def run(self, name: str, fn: Any) -> Any:
        self.current, self.peak, started = name, self.proc.memory_info().rss, time.perf_counter()
        value = fn()
        self.rows.append({"stage": name, **self.row_fields(), "seconds": round(time.perf_counter() - started, 1),
                          "rss_mb": round(self.proc.memory_info().rss / 2**20),
                          "peak_mb": round(self.peak / 2**20)})
        print(json.dumps(self.rows[-1]), file=sys.stderr, flush=True)
        return value


def save_run(out: Path, benchmark: str, label: str, run: dict[str, Any]) -> None:
    """Write ``run`` as ``runs[label]`` of the results file ``out`` (its other runs kept; atomic) and print it."""
    old = json.loads(out.read_text(encoding="utf-8")) if out.is_file() else {}
    result = {"benchmark": benchmark, "runs": {**old.get("runs", {}), label: run}}
    with atomic_path(out) as tmp:
        tmp.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(run, indent=2))
