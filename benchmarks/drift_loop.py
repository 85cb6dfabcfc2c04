"""Benchmark of the monitoring loop: drift onset -> detection -> retraining -> recovery, and false alarms.

For each seed a simulated shop is built; an ALS champion (``implicit``) is trained on three days of logged
traffic, then serves live traffic in :class:`recflow.simulator.ShopEnv` (one slate per request, its scores
logged). The first ``--burn-in-days`` (2) live days are discarded (a fresh env starts without satiation, so its
click rate settles over the first days), the next ``--reference-days`` (2) are the reference window, and the
drift starts right after: a seasonal demand drop of the reference's ``--drift-categories`` (2) most-clicked
categories (``drift.category_demand_shift``), whose size is found per seed by bisection so that the champion's
true expected CTR (the simulator's noise-free click probability of every served slate, on a probe of
``--probe-events``) falls by ``--ctr-drop`` (20%); ``expected_ctr_change`` reports what the run then saw. Every
``--step`` events from ``min_events`` after the onset the drift job (:func:`monitoring.drift.compare_windows`,
with its risk-adjusted click-model tests) compares the last ``--window`` events with the reference; two
consecutive drift verdicts (the watcher's default) count as detection. Each check records the verdict of every
test but the sequential CTR test, the tests that fired, and the CUSUM statistic, so the false-alarm count of any
CUSUM threshold follows from the records; ``--calibrate`` runs the ``--no-drift-runs`` streams first and picks
the smallest threshold with at most one false alarm among them (the whole curve is in ``threshold_sweep``). The
drift seeds then run with that threshold; on detection the champion is retrained (ALS on the most recent
``--recent`` events, standing in for the full pipeline, which takes minutes per run; the end-to-end test runs
the real one) and swapped in; recovery is the first window of the retrained model's traffic whose CTR is back
above 80% of the pre-drift CTR. Finally a burst of 50 alerts is sent to a real watcher's webhook.
``detectability`` gives, per seed, the z-score a 20% drop reaches within 5,000 events at that seed's click
rate (:func:`target_drop_z`): the statistical limit any test of the window's clicks works against.

    .venv/bin/python benchmarks/drift_loop.py --calibrate   # writes benchmarks/results/drift_loop.json
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import platform
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import recflow  # noqa: F401 - before anything that may import TensorFlow

# isort: split

import numpy as np
import pandas as pd

from monitoring.config import DriftConfig, WatchConfig
from monitoring.drift import DriftSummary, compare_windows
from monitoring.watcher import AlertReceiver, RetrainingWatcher
from recflow.baselines import ALSRecommender
from recflow.simulator import ShopEnv, SimulatorConfig, simulate_log
from recflow.simulator.world import World

RESULTS = Path(__file__).parent / "results" / "drift_loop.json"


class Stream:
    """Live traffic: a ShopEnv whose slates come from the current champion, logged with their scores."""

    def __init__(self, config: SimulatorConfig, seed: int, model: ALSRecommender) -> None:
        self.env = ShopEnv(config, seed=seed)
        self.model = model
        self.obs = self.env.reset()
        self.frames: list[pd.DataFrame] = []
        self.n = 0
        #: (events served so far, true expected CTR of the slate) per request: the noise-free click rate
        self.expected: list[tuple[int, float]] = []

    def serve(self, n_events: int) -> None:
        target = self.n + n_events
        while self.n < target:
            slate = self.model.recommend([self.obs.user_id], 10)[0]
            result = self.env.step_ids(slate)
            self.expected.append((self.n, float(result.info["expected_reward"]) / len(slate)))
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


def mean_expected_ctr(stream: Stream, lo: int, hi: int | None = None) -> float:
    """The true expected CTR of the slates served between event counts ``lo`` and ``hi`` (noise-free)."""
    vals = [e for n, e in stream.expected if n >= lo and (hi is None or n < hi)]
    return float(np.mean(vals)) if vals else float("nan")


def confirmed_at(checks: list[dict[str, object]], threshold: float, confirmations: int) -> int | None:
    """Events after onset at the first check that completes ``confirmations`` consecutive drift verdicts.

    A check's verdict is drift when any test but the CUSUM found drift, or the CUSUM statistic is above
    ``threshold`` (the drift job's rule with ``ctr_cusum_threshold = threshold``).
    """
    run = 0
    for check in checks:
        drifted = bool(check["other_drift"]) or float(check["cusum"]) > threshold  # type: ignore[arg-type]
        run = run + 1 if drifted else 0
        if run >= confirmations:
            return int(check["events"])  # type: ignore[call-overload]
    return None


def drifted(stream: Stream, config: SimulatorConfig, onset_day: int, shift: dict[str, float]) -> Stream:
    """A copy of ``stream`` (same state, same random streams) whose world gets ``shift`` from ``onset_day`` on."""
    world_config = config.model_copy(update={"drift": config.drift.model_copy(update={
        "day": onset_day, "preference_shift": 0.0, "new_items": 0, "price_change_share": 0.0,
        "category_demand_shift": shift})})
    twin = copy.deepcopy(stream)
    twin.env.world, twin.env.config = World(world_config), world_config
    return twin


def calibrate_drift(stream: Stream, config: SimulatorConfig, onset_day: int, categories: list[str],
                    pre_expected: float, target: float, probe_events: int) -> tuple[float, float]:
    """The logit shift of ``categories`` that moves the champion's true expected CTR by ``target`` (bisection).

    Each probe serves ``probe_events`` events from a copy of the stream at the onset (the same users arrive in
    every probe) and measures the simulator's noise-free expected CTR of the served slates. Returns the shift
    and the change it gives.
    """
    def change(delta: float) -> float:
        probe = drifted(stream, config, onset_day, dict.fromkeys(categories, delta))
        start = probe.n
        probe.serve(probe_events)
        return mean_expected_ctr(probe, start) / pre_expected - 1.0

    lo, hi = -6.0, 0.0  # change(lo) <= target <= change(hi) = ~0 for a drop
    if change(lo) > target:
        return lo, change(lo)
    for _ in range(10):
        mid = (lo + hi) / 2
        if change(mid) > target:
            hi = mid
        else:
            lo = mid
        if hi - lo < 0.02:
            break
    delta = (lo + hi) / 2
    return round(delta, 3), change(delta)


def verdict_parts(summary: DriftSummary) -> tuple[bool, float, list[str]]:
    """(drift from any test but the CUSUM, the CUSUM statistic, the names of the tests and columns that fired)."""
    fired = [f"feature:{c}" for c in summary.drifted_features]
    if summary.prediction_drift:
        fired += [f"prediction:{c.column}" for c in summary.columns if c.group == "prediction" and c.drifted]
    cusum = 0.0
    other_target = False
    for t in summary.target:
        if t.name == "ctr_cusum":
            cusum = float(t.statistic or 0.0)
        elif t.drifted and t.counted:
            other_target = True
            fired.append(f"target:{t.name}")
    other = bool(summary.feature_drift or summary.prediction_drift or other_target)
    return other, cusum, fired


def run_stream(seed: int, drift: bool, args: argparse.Namespace, config: DriftConfig,
               threshold: float | None = None) -> dict[str, object]:
    """One stream: burn-in, a pre-drift reference, drift checks every ``step`` events, retraining on detection.

    Every check records the drift job's verdict without the CUSUM (``other_drift``) and the CUSUM statistic,
    so the false-alarm rate of any CUSUM threshold follows from the records. With ``threshold`` (drift runs)
    monitoring stops at the first confirmed detection, the champion is retrained and recovery is measured.
    """
    shop = SimulatorConfig(users=args.users, items=args.items, days=3, seed=seed,
                           drift={"day": None, "new_items": 0, "price_change_share": 0.0})
    log = simulate_log(shop)
    items = log.items()
    champion = ALSRecommender(seed=seed).fit(log.events, items)
    burn_in, onset_day = args.burn_in_days, args.burn_in_days + args.reference_days
    stream = Stream(shop, seed + 1000, champion)
    while stream.obs.day < onset_day:  # burn-in (satiation reaches its steady state), then the reference
        stream.serve(500)
    everything = stream.events()
    day = everything["day"].to_numpy()
    reference = everything[(day >= burn_in) & (day < onset_day)].reset_index(drop=True)
    onset = stream.n
    ref_start = int(np.searchsorted(day, burn_in))
    pre_ctr, pre_expected = ctr(reference), mean_expected_ctr(stream, ref_start, onset)
    out: dict[str, object] = {"seed": seed, "drift": drift, "reference_events": len(reference),
                              "impression_share": round(float((reference["event_type"] == "impression").mean()), 4),
                              "burn_in_events": ref_start, "pre_drift_ctr": round(pre_ctr, 5),
                              "pre_drift_expected_ctr": round(pre_expected, 5)}
    if drift:
        clicks = reference[reference["event_type"] == "click"]["item_id"].map(items.set_index("item_id")["category"])
        categories = clicks.value_counts().index[: args.drift_categories].tolist()
        delta, achieved = calibrate_drift(stream, shop, onset_day, categories, pre_expected, -args.ctr_drop,
                                          args.probe_events)
        stream = drifted(stream, shop, onset_day, dict.fromkeys(categories, delta))
        out.update(drift_categories=categories, demand_shift=delta, probe_expected_ctr_change=round(achieved, 4))
    started = time.perf_counter()
    checks: list[dict[str, object]] = []
    detected_at = None
    users = log.users()
    while stream.n - onset < args.horizon:
        stream.serve(args.step)
        since = stream.n - onset
        if since < config.min_events:
            continue
        current = stream.events().iloc[onset:].iloc[-args.window:].reset_index(drop=True)
        summary = compare_windows(reference, current, config, items=items, users=users)
        other, cusum, fired = verdict_parts(summary)
        checks.append({"events": since, "other_drift": other, "cusum": round(cusum, 3), "fired": fired,
                       "window_ctr": round(ctr(current), 5),
                       "p_values": {t.name: round(t.p_value, 6) for t in summary.target if t.p_value is not None}})
        if threshold is not None:
            detected_at = confirmed_at(checks, threshold, args.confirmations)
            if detected_at is not None:
                break
    out["checks"] = checks
    if drift:
        post_expected = mean_expected_ctr(stream, onset)
        out.update(post_drift_expected_ctr=round(post_expected, 5),
                   expected_ctr_change=round(post_expected / pre_expected - 1, 4),
                   post_drift_ctr=round(ctr(stream.events().iloc[onset:]), 5))
    if threshold is None:
        return out
    if detected_at is None:
        out.update(detected=False, events_monitored=stream.n - onset)
        return out
    out.update(detected=True, detection_events=detected_at,
               detection_wall_s=round(time.perf_counter() - started, 2))
    recent = stream.events().iloc[-args.recent:]
    stream.model = ALSRecommender(seed=seed).fit(recent, items)  # the retraining on recent data
    swapped_at = stream.n
    recovered_at, recovered_ctr = None, None
    while stream.n < swapped_at + args.recovery_horizon:
        stream.serve(args.step)
        if stream.n - swapped_at < config.min_events:
            continue
        window = stream.events().iloc[swapped_at:].iloc[-args.window:]
        if ctr(window) >= args.recovery_ratio * pre_ctr:
            recovered_at, recovered_ctr = stream.n - onset, ctr(window)
            break
    out.update(retrained_at_events=swapped_at - onset, recovery_events=recovered_at,
               recovery_wall_s=round(time.perf_counter() - started, 2) if recovered_at else None,
               ctr_after_retraining=round(ctr(stream.events().iloc[swapped_at:]), 5),
               expected_ctr_after_retraining=round(mean_expected_ctr(stream, swapped_at), 5),
               recovered_window_ctr=recovered_ctr)
    return out


def target_drop_z(pre_ctr: float, impression_share: float, drop: float, events: int) -> float:
    """The z-score a relative CTR drop of ``drop`` reaches in ``events`` events at click rate ``pre_ctr``.

    Observed minus expected clicks over the binomial standard error, with a perfect reference and no
    clustering: ``drop * p n / sqrt(p n)`` for ``n`` impressions. A real test reaches less (its reference is a
    sample too), so where this is below the test's critical z, no test of the window's clicks detects the drop
    within ``events`` in most runs, whatever its design.
    """
    expected_clicks = pre_ctr * impression_share * events
    return float(drop * math.sqrt(expected_clicks))


def calibrate_threshold(no_drift: list[dict[str, object]], confirmations: int, allowed: int,
                        grid: list[float]) -> tuple[float, list[dict[str, float]]]:
    """The smallest CUSUM threshold of ``grid`` with at most ``allowed`` no-drift runs confirming drift."""
    sweep = []
    for h in grid:
        alarms = sum(confirmed_at(r["checks"], h, confirmations) is not None for r in no_drift)  # type: ignore[arg-type]
        sweep.append({"threshold": h, "false_alarms": alarms})
    ok = [row["threshold"] for row in sweep if row["false_alarms"] <= allowed]
    return (min(ok) if ok else max(grid)), sweep


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
    parser.add_argument("--ctr-drop", type=float, default=0.2,
                        help="relative drop of the champion's true expected CTR the drift is calibrated to")
    parser.add_argument("--drift-categories", type=int, default=2,
                        help="the reference's most-clicked categories whose demand the drift lowers")
    parser.add_argument("--probe-events", type=int, default=5000, help="events per drift calibration probe")
    parser.add_argument("--burn-in-days", type=int, default=2,
                        help="live days served and discarded before the reference (satiation warm-up)")
    parser.add_argument("--reference-days", type=int, default=2, help="days of pre-drift traffic as reference")
    parser.add_argument("--window", type=int, default=5000)
    parser.add_argument("--step", type=int, default=1000)
    parser.add_argument("--confirmations", type=int, default=2)
    parser.add_argument("--horizon", type=int, default=8000, help="events monitored after onset at most")
    parser.add_argument("--recent", type=int, default=20_000, help="events the retraining uses")
    parser.add_argument("--recovery-horizon", type=int, default=20_000)
    parser.add_argument("--recovery-ratio", type=float, default=0.8)
    parser.add_argument("--calibrate", action="store_true",
                        help="pick the CUSUM threshold from the no-drift runs (else the configured one)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    config = DriftConfig()
    started = time.perf_counter()
    no_drift = []
    for i in range(args.no_drift_runs):
        run = run_stream(100 + i, False, args, config)
        print(json.dumps({k: v for k, v in run.items() if k != "checks"} | {
            "max_cusum": max((c["cusum"] for c in run["checks"]), default=0)}), flush=True)  # type: ignore[union-attr]
        no_drift.append(run)
    grid = [round(x, 1) for x in np.arange(2.0, 20.01, 0.5)]
    threshold, sweep = calibrate_threshold(no_drift, args.confirmations, 1, grid)
    if not args.calibrate:
        threshold = config.ctr_cusum_threshold
    config = config.model_copy(update={"ctr_cusum_threshold": threshold})
    drift_runs = []
    for seed in args.seeds:
        run = run_stream(seed, True, args, config, threshold)
        print(json.dumps({k: v for k, v in run.items() if k != "checks"}), flush=True)
        drift_runs.append(run)
    burst = alert_burst(50)
    no_drift_alarms = [confirmed_at(r["checks"], threshold, args.confirmations) for r in no_drift]  # type: ignore[arg-type]
    detection = [r.get("detection_events") for r in drift_runs]
    from scipy.stats import norm

    drop_z = [round(target_drop_z(float(r["pre_drift_ctr"]), float(r["impression_share"]), args.ctr_drop, 5000), 2)
              for r in drift_runs]
    result = {
        "no_drift_runs": args.no_drift_runs,
        "false_alarms": sum(a is not None for a in no_drift_alarms),
        "detection_events": detection,
        "detection_wall_s": [r.get("detection_wall_s") for r in drift_runs],
        "recovery_events": [r.get("recovery_events") for r in drift_runs],
        "recovery_wall_s": [r.get("recovery_wall_s") for r in drift_runs],
        "retrainings_per_alert_burst": burst,
        "alert_burst_size": 50,
        "expected_ctr_change": [r.get("expected_ctr_change") for r in drift_runs],
        "drift_demand_shift": [r.get("demand_shift") for r in drift_runs],
        "pre_drift_ctr": [r["pre_drift_ctr"] for r in drift_runs],
        "post_drift_ctr": [r.get("post_drift_ctr") for r in drift_runs],
        "ctr_after_retraining": [r.get("ctr_after_retraining") for r in drift_runs],
        "ctr_cusum_threshold": threshold,
        "threshold_sweep": sweep,
        "detectability": {
            "target_drop_z_within_5000_events": drop_z,
            "critical_z": round(float(norm.isf(config.target_alpha / 2)), 2),
            "note": "z of the target CTR drop within 5000 events at each seed's pre-drift CTR (binomial, perfect "
                    "reference); below critical_z the window test detects it in under half the runs",
        },
        "targets": {"false_alarms_at_most": 1, "detection_within_events": 5000},
        "target_met": {
            "false_alarms": sum(a is not None for a in no_drift_alarms) <= 1,
            "detection": all(d is not None and d <= 5000 for d in detection),
            "detection_misses_by_events": [None if d is not None and d <= 5000 else
                                           (d - 5000 if d is not None else "not detected") for d in detection],
        },
        "setup": {"seeds": args.seeds, "users": args.users, "items": args.items,
                  "drift": f"category_demand_shift on the reference's {args.drift_categories} most-clicked "
                           f"categories, calibrated per seed to a {args.ctr_drop:.0%} drop of the champion's "
                           f"true expected CTR over {args.probe_events} events",
                  "burn_in_days": args.burn_in_days, "reference_days": args.reference_days,
                  "window_events": args.window, "step_events": args.step,
                  "confirmations": args.confirmations, "monitored_events_per_run": args.horizon,
                  "no_drift_seeds": [100 + i for i in range(args.no_drift_runs)],
                  "threshold_calibrated_on_no_drift_runs": args.calibrate,
                  "retraining": f"ALS on the last {args.recent} events",
                  "recovery": f"CTR of the retrained model's traffic (last <= {args.window} events) >= "
                              f"{args.recovery_ratio} x pre-drift CTR",
                  "expected_ctr": "mean over served slates of the simulator's true expected clicks / slate size",
                  "drift_config": config.model_dump(mode="json")},
        "runs": drift_runs,
        "no_drift": [{"seed": r["seed"], "reference_events": r["reference_events"],
                      "pre_drift_ctr": r["pre_drift_ctr"], "false_alarm_at_events": a, "checks": r["checks"]}
                     for r, a in zip(no_drift, no_drift_alarms, strict=True)],
        "machine": {"python": platform.python_version(), "cpu_count": __import__("os").cpu_count()},
        "total_seconds": round(time.perf_counter() - started, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=float) + "\n")
    print(json.dumps({k: result[k] for k in ("no_drift_runs", "false_alarms", "detection_events",
                                             "recovery_events", "retrainings_per_alert_burst",
                                             "ctr_cusum_threshold", "expected_ctr_change")}))
    return 0


if __name__ == "__main__":
    code = main()
    from recflow.runtime import freeze_gc_now

    freeze_gc_now()
    sys.exit(code)
