"""``recflow monitor ...``: the drift job and the retraining watcher (thin wrappers over monitoring.*)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

from recflow.cli import CliState, pass_state


@click.group()
def monitor() -> None:
    """Detect drift on live traffic and retrain when it is confirmed."""


@monitor.command("drift")
@click.option("--reference", "reference", type=click.Path(path_type=Path), required=True,
              help="Reference events: the champion's training data (dataset dir, .parquet, .jsonl or a dir of them).")
@click.option("--current", "current", type=click.Path(path_type=Path), required=True,
              help="Recent traffic: the serving feedback log (same formats).")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), required=True,
              help="Report directory: report.html, summary.json, PNG charts, metrics.prom.")
@click.option("--items", "items_path", type=click.Path(path_type=Path), default=None,
              help="Item catalog (default: items.parquet beside the current or reference events).")
@click.option("--users", "users_path", type=click.Path(path_type=Path), default=None,
              help="Users table (default: users.parquet beside the reference events).")
@click.option("--reference-last", type=int, default=None, help="Use only the last N reference events.")
@click.option("--current-last", type=int, default=None, help="Use only the last N current events (the window).")
@click.option("--min-events", type=int, default=None,
              help="Fewest events per window for a verdict (default: monitoring.drift.min_events).")
@click.option("--pushgateway", default=None, help="Push the metrics to this Pushgateway URL instead of a textfile.")
@click.option("--expected-ctr", type=click.FloatRange(0.0, 1.0), default=None,
              help="The champion's evaluated click rate (OPE or held-out), exported for the CTR-drop alert.")
@pass_state
def drift_command(state: CliState, reference: Path, current: Path, out_dir: Path, items_path: Path | None,
                  users_path: Path | None, reference_last: int | None, current_last: int | None,
                  min_events: int | None, pushgateway: str | None, expected_ctr: float | None) -> int:
    """Compare CURRENT traffic with the REFERENCE window: feature, prediction and target drift.

    Exit code: 0 no drift, 1 drift, 4 insufficient data (fewer than the minimum events in a window),
    2 unreadable input, 3 Pushgateway unreachable.
    """
    from monitoring.config import monitoring_config
    from monitoring.drift import run_drift_job

    config = monitoring_config(state.config).drift
    if min_events is not None:
        config = config.model_copy(update={"min_events": min_events})
    summary = run_drift_job(reference, current, out_dir, config, items_path=items_path, users_path=users_path,
                            reference_last=reference_last, current_last=current_last, pushgateway=pushgateway,
                            expected_ctr=expected_ctr)
    click.echo(summary.format())
    return summary.exit_code


@monitor.command("watch")
@click.option("--feedback", type=click.Path(path_type=Path), default=None,
              help="Feedback log to poll with the drift job and to cut the retraining data from.")
@click.option("--reference", type=click.Path(path_type=Path), default=None,
              help="Reference events for the drift job (the champion's training data); a retraining trains "
                   "on its most recent events followed by the feedback log.")
@click.option("--items", "items_path", type=click.Path(path_type=Path), default=None,
              help="Item catalog for the drift job and the retraining dataset.")
@click.option("--window", type=int, default=20_000, show_default=True,
              help="Events of the feedback log each drift run looks at (the most recent).")
@click.option("--listen", default=None, metavar="HOST:PORT",
              help="Also receive Alertmanager webhooks on http://HOST:PORT/alerts.")
@click.option("--state-dir", type=click.Path(path_type=Path), default=None,
              help="Lock, state and decisions.jsonl (default: monitoring.watch.state_dir or DATA_DIR/monitoring).")
@click.option("--kfp-host", default=None, help="Submit to this Kubeflow Pipelines host instead of running locally.")
@click.option("--model-store", default=None, help="Model store the retraining pushes to.")
@click.option("--tracking-uri", default=None, help="MLflow tracking URI of the retraining.")
@click.option("--pushgateway", default=None, help="Pushgateway for the drift and pipeline metrics.")
@click.option("--once", is_flag=True, help="Run one drift check, act on it, wait for the retraining it starts "
              "(with --kfp-host: until it is submitted) and record the outcome, then exit (for a CronJob).")
@click.option("--interval", type=float, default=None, help="Seconds between polls (default: monitoring.watch).")
@pass_state
def watch_command(state: CliState, feedback: Path | None, reference: Path | None, items_path: Path | None,
                  window: int, listen: str | None, state_dir: Path | None, kfp_host: str | None,
                  model_store: str | None, tracking_uri: str | None, pushgateway: str | None, once: bool,
                  interval: float | None) -> None:
    """Start a retraining on confirmed drift or a firing alert, within cooldown, single-flight and budget."""
    from monitoring.config import monitoring_config
    from monitoring.drift import run_drift_job
    from monitoring.retraining import recent_dataset
    from monitoring.watcher import AlertReceiver, RetrainingWatcher, champion_model_dir, pipeline_command
    from recflow.errors import ConfigError
    from recflow.model_store import resolve_store_root

    section = monitoring_config(state.config)
    watch = section.watch
    if (feedback is None) != (reference is None):
        raise ConfigError("monitor watch: --feedback and --reference go together (the drift job needs both)")
    if feedback is None and listen is None:
        raise ConfigError("monitor watch: nothing to watch; give --feedback/--reference, --listen, or both")
    root = state_dir or Path(watch.state_dir or state.config.paths.data_dir / "monitoring")
    host = kfp_host or watch.kfp_host

    def command(reason: str) -> list[str]:
        if feedback is None:
            raise ConfigError("a retraining needs recent data: start the watcher with --feedback")
        data = recent_dataset(feedback, root / "retraining-data" / time.strftime("%Y%m%d-%H%M%S"),
                              watch.recent_events, items_path, history=reference)
        return pipeline_command(data.resolve(), config_path=state.config_path, kfp_host=host,
                                model_store=model_store, tracking_uri=tracking_uri,
                                overrides=watch.retraining_overrides,
                                warm_start_from=champion_model_dir(resolve_store_root(
                                    state.config.model_store, state.config.paths.data_dir, model_store))
                                if watch.warm_start_from_champion and not host else None)

    watcher = RetrainingWatcher(watch, root, command, pushgateway=pushgateway)
    receiver = None
    if listen:
        address, _, port = listen.rpartition(":")
        receiver = AlertReceiver(watcher, address or "127.0.0.1", int(port)).start()
        click.echo(f"receiving Alertmanager webhooks on {receiver.url}")
    try:
        while True:
            if feedback is not None and reference is not None:
                summary = run_drift_job(reference, feedback, root / "drift" / "latest", section.drift,
                                        items_path=items_path, current_last=window, pushgateway=pushgateway)
                decision = watcher.on_verdict(summary.to_dict())
                click.echo(json.dumps({"action": decision.action, "reason": decision.reason}))
            watcher.reap()
            if once:
                # --once waits for the retraining it started (a CronJob pod would kill a detached child) and
                # records its outcome in decisions.jsonl; with --listen it serves webhooks meanwhile
                for outcome in watcher.wait_and_record():
                    click.echo(json.dumps({"action": outcome.action, "reason": outcome.reason}))
                return
            time.sleep(interval or watch.interval_s)
    finally:
        if receiver is not None:
            receiver.stop()
