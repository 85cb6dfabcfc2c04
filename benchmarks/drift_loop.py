"""Benchmark of the monitoring loop: drift onset -> detection -> retraining -> recovery, and false alarms.

For each seed a simulated shop is built; an ALS champion (``implicit``) is trained on three days of logged
traffic, then serves live traffic in :class:`recflow.simulator.ShopEnv` (one slate per request, its scores
logged). A preference drift (no new items, no repricing, so only the users' tastes move) starts on day 1 of
the live stream and lowers the champion's click-through rate by about 20-30%. The drift job
(:func:`monitoring.drift.compare_windows`) compares sliding windows of ``--window`` events (every ``--step``
events) with the champion's pre-drift live traffic; two consecutive drift verdicts confirm the drift (the
watcher's default), which counts as detection. The champion is then retrained (ALS on the most recent
``--recent`` events, standing in for the full pipeline, which takes minutes per run) and swapped in; recovery
is the first window after the swap whose CTR is back above the CTR alert's threshold (80% of the pre-drift
CTR). False alarms: the same loop over ``--no-drift-runs`` streams without drift; a run with any confirmed
drift counts as one false alarm. Finally a burst of 50 alerts is sent to a real watcher's webhook.

    .venv/bin/python benchmarks/drift_loop.py            # writes benchmarks/results/drift_loop.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import recflow  # noqa: F401 - before anything that may import TensorFlow

import numpy as np
import pandas as pd

from monitoring.config import DriftConfig, WatchConfig
from monitoring.drift import compare_windows
from monitoring.watcher import AlertReceiver, RetrainingWatcher
from recflow.baselines import ALSRecommender
from recflow.simulator import ShopEnv, SimulatorConfig, simulate_log

RESULTS = Path(__file__).parent / "results" / "drift_loop.json"


class Stream:
    """Live traffic: a ShopEnv whose slates come from the current champion, logged with their scores."""

    def __init__(self, config: SimulatorConfig, seed: int, model: ALSRecommender) -> None:
        self.env = ShopEnv(config, seed=seed)
        self.model = model
        self.obs = self.env.reset()
        self.frames: list[pd.DataFrame] = []
        self.n = 0

    def serve(self, n_events: int) -> None:
        target = self.n + n_events
        while self.n < target:
            slate = self.model.recommend([self.obs.user_id], 10)[0]
            result = self.env.step_ids(slate)
            events = result.events
            assert events is not None
            scores = dict(zip(slate, self._scores(self.obs.user_id, slate), strict=True))
            imp = events["event_type"] == "impression"
            events["score"] = np.where(imp, events["item_id"].map(scores), np.nan)
            events["day"] = self.obs.day
            self.frames.append(events)
            self.n += len(events)
            self.obs = self.env.reset() if result.done else result.observation

    def _scores(self, user: str, slate: list[str]) -> list[float]:
        m = self.model
        row = m._user_pos.get(user)
        if row is None or m.user_factors is None or m.item_factors is None:
            return [0.0] * len(slate)
        cols = [m._item_pos.get(i) for i in slate]
        return [float(m.user_factors[row] @ m.item_factors[c]) if c is not None else 0.0 for c in cols]

    def events(self) -> pd.DataFrame:
        frame = pd.concat(self.frames, ignore_index=True)
        self.frames = [frame]
        return frame


def ctr(events: pd.DataFrame) -> float:
    imp = int((events["event_type"] == "impression").sum())
    return float((events["event_type"] == "click").sum() / imp) if imp else float("nan")


def run_stream(seed: int, drift: bool, args: argparse.Namespace, config: DriftConfig) -> dict[str, object]:
    """One stream: pre-drift reference, sliding drift checks, and (when drift is confirmed) retraining."""
    shop = SimulatorConfig(users=args.users, items=args.items, days=3, seed=seed,
                           drift={"day": None, "preference_shift": args.shift, "new_items": 0,
                                  "price_change_share": 0.0})
    log = simulate_log(shop)
    items = log.items()
    champion = ALSRecommender(seed=seed).fit(log.events, items)
    live = shop.model_copy(update={"drift": shop.drift.model_copy(update={"day": 1 if drift else None})})
    stream = Stream(live, seed + 1000, champion)
    while True:  # the reference: the champion's live traffic before the drift (all of day 0)
        stream.serve(1000)
        if stream.obs.day >= 1:
            break
    reference = stream.events()
    reference = reference[reference["day"] < 1].reset_index(drop=True)
    onset = len(reference)
    stream.frames = [stream.events().iloc[onset:]]
    stream.n = len(stream.frames[0])
    pre_ctr = ctr(reference)
    started = time.perf_counter()
    consecutive, detected_at, checks, verdicts = 0, None, 0, []
    while stream.n < args.horizon:
        stream.serve(args.step)
        if stream.n < args.window:
            continue
        current = stream.events().iloc[-args.window:].reset_index(drop=True)
        summary = compare_windows(reference, current, config, items=items, users=log.users())
        checks += 1
        verdicts.append(summary.verdict)
        consecutive = consecutive + 1 if summary.verdict == "drift" else 0
        if consecutive >= args.confirmations:
            detected_at = stream.n
            break
    out: dict[str, object] = {"seed": seed, "drift": drift, "reference_events": onset, "pre_drift_ctr": pre_ctr,
                              "checks": checks, "verdicts": verdicts}
    if detected_at is None:
        out.update(detected=False, events_monitored=stream.n)
        return out
    detection_wall = time.perf_counter() - started
    after = stream.events()
    out.update(detected=True, detection_events=detected_at, detection_wall_s=round(detection_wall, 2),
               post_drift_ctr_before_retraining=ctr(after.iloc[-args.window:]))
    if not drift:
        return out
    recent = pd.concat([reference, after], ignore_index=True).iloc[-args.recent:]
    stream.model = ALSRecommender(seed=seed).fit(recent, items)  # the retraining on recent data
    swapped_at = stream.n
    recovered_at, recovered_ctr = None, None
    while stream.n < swapped_at + args.recovery_horizon:
        stream.serve(args.step)
        if stream.n - swapped_at < args.window:
            continue
        window = stream.events().iloc[-args.window:]
        if ctr(window) >= args.recovery_ratio * pre_ctr:
            recovered_at, recovered_ctr = stream.n, ctr(window)
            break
    after_swap = stream.events().iloc[swapped_at:]
    out.update(retrained_at_events=swapped_at, recovery_events=recovered_at,
               recovery_wall_s=round(time.perf_counter() - started, 2) if recovered_at else None,
               ctr_after_retraining=ctr(after_swap), recovered_window_ctr=recovered_ctr)
    return out


def alert_burst(n: int = 50) -> int:
    """Send ``n`` distinct firing alerts at once to a real watcher; return how many retrainings started."""
    with tempfile.TemporaryDirectory() as tmp:
        marker = Path(tmp) / "starts"
        code = f"open({str(marker)!r}, 'a').write('x\\n'); import time; time.sleep(2)"
        watcher = RetrainingWatcher(WatchConfig(), Path(tmp) / "state", lambda reason: [sys.executable, "-c", code])
        receiver = AlertReceiver(watcher).start()

        def post(i: int) -> None:
            body = json.dumps({"alerts": [{"status": "firing", "fingerprint": f"f{i}",
                                           "labels": {"alertname": "RecflowDataDrift"}}]}).encode()
            urllib.request.urlopen(urllib.request.Request(receiver.url, body), timeout=30).read()

        threads = [threading.Thread(target=post, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        receiver.stop()
        watcher.wait(timeout=60)
        return len(marker.read_text().splitlines()) if marker.exists() else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    parser.add_argument("--no-drift-runs", type=int, default=20)
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--items", type=int, default=500)
    parser.add_argument("--shift", type=float, default=0.7, help="preference_shift of the drift")
    parser.add_argument("--window", type=int, default=5000)
    parser.add_argument("--step", type=int, default=1000)
    parser.add_argument("--confirmations", type=int, default=2)
    parser.add_argument("--horizon", type=int, default=20_000, help="events monitored after onset at most")
    parser.add_argument("--no-drift-horizon", type=int, default=12_000, help="events monitored per no-drift run")
    parser.add_argument("--no-drift-step", type=int, default=2_000, help="events between checks, no-drift runs")
    parser.add_argument("--recent", type=int, default=20_000, help="events the retraining uses")
    parser.add_argument("--recovery-horizon", type=int, default=30_000)
    parser.add_argument("--recovery-ratio", type=float, default=0.8)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    config = DriftConfig()
    started = time.perf_counter()
    drift_runs = []
    for seed in args.seeds:
        run = run_stream(seed, True, args, config)
        print(json.dumps({k: v for k, v in run.items() if k != "verdicts"}), flush=True)
        drift_runs.append(run)
    no_drift = []
    for i in range(args.no_drift_runs):
        quiet = argparse.Namespace(**{**vars(args), "horizon": args.no_drift_horizon, "step": args.no_drift_step})
        run = run_stream(100 + i, False, quiet, config)
        print(json.dumps({k: v for k, v in run.items() if k != "verdicts"}), flush=True)
        no_drift.append(run)
    burst = alert_burst(50)
    detection = [r.get("detection_events") for r in drift_runs]
    recovery = [r.get("recovery_events") for r in drift_runs]
    drops = [r["post_drift_ctr_before_retraining"] / r["pre_drift_ctr"] - 1 for r in drift_runs  # type: ignore[operator]
             if r.get("detected")]
    result = {
        "no_drift_runs": args.no_drift_runs,
        "false_alarms": sum(1 for r in no_drift if r.get("detected")),
        "detection_events": detection,
        "detection_wall_s": [r.get("detection_wall_s") for r in drift_runs],
        "recovery_events": recovery,
        "recovery_wall_s": [r.get("recovery_wall_s") for r in drift_runs],
        "retrainings_per_alert_burst": burst,
        "alert_burst_size": 50,
        "ctr_change_at_detection": [round(d, 4) for d in drops],
        "pre_drift_ctr": [round(float(r["pre_drift_ctr"]), 5) for r in drift_runs],  # type: ignore[arg-type]
        "ctr_after_retraining": [r.get("ctr_after_retraining") for r in drift_runs],
        "targets": {"false_alarms_at_most": 1, "detection_within_events": 5000},
        "setup": {"seeds": args.seeds, "users": args.users, "items": args.items, "preference_shift": args.shift,
                  "window_events": args.window, "step_events": args.step, "confirmations": args.confirmations,
                  "monitored_events_per_drift_run": args.horizon,
                  "monitored_events_per_no_drift_run": args.no_drift_horizon,
                  "no_drift_step_events": args.no_drift_step, "retraining": f"ALS on the last {args.recent} events",
                  "recovery": f"window CTR >= {args.recovery_ratio} x pre-drift CTR",
                  "drift_config": config.model_dump(mode="json")},
        "runs": drift_runs,
        "no_drift": [{k: v for k, v in r.items() if k in ("seed", "detected", "checks", "verdicts")}
                     for r in no_drift],
        "machine": {"python": platform.python_version(), "cpu_count": __import__("os").cpu_count()},
        "total_seconds": round(time.perf_counter() - started, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=float) + "\n")
    print(json.dumps({k: result[k] for k in ("no_drift_runs", "false_alarms", "detection_events",
                                             "recovery_events", "retrainings_per_alert_burst")}))
    return 0


if __name__ == "__main__":
    code = main()
    from recflow.runtime import freeze_gc_now

    freeze_gc_now()
    sys.exit(code)
