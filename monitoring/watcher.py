"""The retraining trigger behind ``recflow monitor watch``: confirmed drift or an alert starts one retraining.

Signals come from drift verdicts (the watcher polls the drift job; ``confirmations`` consecutive drift verdicts
make a confirmed drift) or from Alertmanager (its webhook posts to :class:`AlertReceiver`). Every signal passes
the same guards, in this order, and every decision is appended to ``decisions.jsonl`` with its reason:

1. the alert is firing and its name is one that retrains (others are ignored);
2. deduplication: an alert fingerprint seen within ``dedup_window_s`` is dropped;
3. single flight: a retraining whose lock holds a live pid is in progress (a dead pid's lock is cleared);
4. cooldown: no retraining starts within ``cooldown_s`` of the previous start;
5. daily budget: at most ``daily_budget`` starts per UTC day.

State (last start, starts per day, fingerprints, consecutive drift count) lives in ``state.json`` under a file
lock, so concurrent webhook requests and a CronJob's ``--once`` runs see one consistent history. The retraining
itself runs in a separate process (:mod:`monitoring.retraining`); the pipeline's evaluator decides whether its
model is blessed and pushed, the watcher never promotes anything.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from filelock import FileLock

from monitoring.config import WatchConfig
from monitoring.retraining import LOCK_NAME, pid_alive, read_lock, write_lock
from recflow.errors import RecflowError
from recflow.io import atomic_path

log = logging.getLogger(__name__)

STATE = "state.json"
DECISIONS = "decisions.jsonl"

#: Builds the retraining command for a trigger: (reason) -> argv of the command run under the lock.
CommandFactory = Callable[[str], list[str]]


@dataclass
class Decision:
    """What the watcher did with one signal, and why."""

    action: str  # retrain | skip | ignore | observe | outcome (of a retraining this watcher started)
    reason: str
    source: str  # drift | alert
    fingerprint: str = ""
    time: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="milliseconds"))
    pid: int | None = None
    details: dict[str, Any] = field(default_factory=dict)


def _day(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d")


class RetrainingWatcher:
    """Applies the guards to drift verdicts and alerts and starts at most one retraining at a time."""

    def __init__(self, config: WatchConfig, state_dir: str | os.PathLike[str], command: CommandFactory, *,
                 pushgateway: str | None = None, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.command = command
        self.pushgateway = pushgateway
        self.clock = clock
        self._lock = FileLock(str(self.state_dir / ".state.lock"))
        self._children: list[subprocess.Popen[bytes]] = []

    # ------------------------------------------------------------------ state and log
    def _load(self) -> dict[str, Any]:
        try:
            return json.loads((self.state_dir / STATE).read_text(encoding="utf-8"))  # type: ignore[no-any-return]
        except (FileNotFoundError, ValueError):
            return {"last_start": None, "starts": {}, "fingerprints": {}, "consecutive_drift": 0}

    def _save(self, state: dict[str, Any]) -> None:
        with atomic_path(self.state_dir / STATE) as tmp:
            tmp.write_text(json.dumps(state, indent=2), encoding="utf-8")

    def _log(self, decision: Decision) -> Decision:
        with open(self.state_dir / DECISIONS, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(asdict(decision)) + "\n")
        return decision

    def decisions(self) -> list[dict[str, Any]]:
        """Every decision logged so far, oldest first."""
        path = self.state_dir / DECISIONS
        if not path.is_file():
            return []
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]

    # ------------------------------------------------------------------ guards
    def in_flight(self) -> dict[str, Any] | None:
        """The running retraining's lock, or None; a lock whose process is gone is removed (logged)."""
        lock = read_lock(self.state_dir)
        if lock is None:
            return None
        if pid_alive(int(lock.get("pid", -1))):  # type: ignore[arg-type]
            return lock
        (self.state_dir / LOCK_NAME).unlink(missing_ok=True)
        self._log(Decision("observe", f"cleared a stale retraining lock (pid {lock.get('pid')} is gone)",
                           "watcher"))
        return None

    def _guarded_start(self, state: dict[str, Any], source: str, reason: str, fingerprint: str) -> Decision:
        now = self.clock()
        running = self.in_flight()
        if running is not None:
            return Decision("skip", f"a retraining is already in flight (pid {running.get('pid')}); {reason}",
                            source, fingerprint)
        last = state.get("last_start")
        if last is not None and now - last < self.config.cooldown_s:
            until = datetime.fromtimestamp(last + self.config.cooldown_s, UTC).isoformat(timespec="seconds")
            return Decision("skip", f"cooldown: the last retraining started {now - last:.0f}s ago "
                            f"(< {self.config.cooldown_s:.0f}s, until {until}); {reason}", source, fingerprint)
        today = _day(now)
        used = int(state.get("starts", {}).get(today, 0))
        if used >= self.config.daily_budget:
            return Decision("skip", f"daily budget spent: {used} of {self.config.daily_budget} retrainings "
                            f"started on {today}; {reason}", source, fingerprint)
        try:
            pid = self._launch(reason)
        except RecflowError as exc:
            return Decision("skip", f"could not start the retraining: {exc}; {reason}", source, fingerprint)
        state["last_start"] = now
        state["starts"] = {today: used + 1}  # only today's count matters
        state["consecutive_drift"] = 0
        return Decision("retrain", f"started retraining (pid {pid}, {used + 1} of {self.config.daily_budget} "
                        f"today): {reason}", source, fingerprint, pid=pid)

    def _launch(self, reason: str) -> int:
        write_lock(self.state_dir, os.getpid(), "starting: " + reason)  # held until the child takes it over
        argv = [sys.executable, "-m", "monitoring.retraining", "--state-dir", str(self.state_dir)]
        if self.pushgateway:
            argv += ["--pushgateway", self.pushgateway]
        try:
            env = dict(os.environ)
            root = str(Path(__file__).resolve().parents[1])  # so the child imports this very package
            env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
            child = subprocess.Popen([*argv, "--", *self.command(reason)], start_new_session=True, env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        except BaseException:
            (self.state_dir / LOCK_NAME).unlink(missing_ok=True)
            raise
        write_lock(self.state_dir, child.pid, reason)
        self._children.append(child)
        return child.pid

    def reap(self) -> None:
        """Collect finished children (a long-running watcher must not keep zombies)."""
        self._children = [c for c in self._children if c.poll() is None]

    def wait(self, timeout: float | None = None) -> None:
        """Wait for the retraining processes this watcher started (tests, ``--once``)."""
        for child in self._children:
            child.wait(timeout)
        self.reap()

    def wait_and_record(self, timeout: float | None = None) -> list[Decision]:
        """Wait for the retraining processes this watcher started and log each one's outcome in decisions.jsonl
        (action ``outcome``; details: ``last_run.json``). ``recflow monitor watch --once`` calls it, so a CronJob
        run ends only when its retraining has (a Kubernetes Job would kill a detached child with its pod) -- or,
        with ``--kfp-host``, when the run is handed to Kubeflow (``pipeline submit`` returns once submitted)."""
        from monitoring.retraining import LAST_RUN

        outcomes = []
        for child in self._children:
            code = child.wait(timeout)
            try:
                record = json.loads((self.state_dir / LAST_RUN).read_text(encoding="utf-8"))
            except (FileNotFoundError, ValueError):
                record = {"exit_code": code, "status": "unknown (no last_run.json)"}
            command = [str(c) for c in record.get("command", [])]
            handed = "submit" in command and "pipeline" in command
            status = record.get("status", "unknown")
            what = ("handed to Kubeflow Pipelines (its final status goes to MLflow)" if handed and code == 0
                    else f"{status} (exit code {code})")
            outcomes.append(self._log(Decision("outcome", f"retraining pid {child.pid} {what}; log "
                                               f"{record.get('log', self.state_dir / 'retraining.log')}",
                                               "retraining", pid=child.pid, details=record)))
        self.reap()
        return outcomes

    # ------------------------------------------------------------------ signals
    def on_verdict(self, summary: dict[str, Any]) -> Decision:
        """Handle one drift job summary (summary.json as a dict)."""
        verdict = str(summary.get("verdict"))
        with self._lock:
            state = self._load()
            if verdict != "drift":
                state["consecutive_drift"] = 0
                self._save(state)
                return self._log(Decision("observe", f"verdict {verdict}: nothing to do", "drift"))
            count = int(state.get("consecutive_drift", 0)) + 1
            state["consecutive_drift"] = count
            reasons = "; ".join(summary.get("reasons", []))
            if count < self.config.confirmations:
                self._save(state)
                return self._log(Decision("observe", f"drift verdict {count} of {self.config.confirmations} "
                                          f"needed to confirm: {reasons}", "drift"))
            decision = self._guarded_start(state, "drift", f"confirmed drift ({count} verdicts): {reasons}", "")
            self._save(state)
            return self._log(decision)

    def on_alert(self, alert: dict[str, Any]) -> Decision:
        """Handle one Alertmanager alert (an element of the webhook payload's ``alerts``)."""
        labels = alert.get("labels", {})
        name = str(labels.get("alertname", ""))
        fingerprint = str(alert.get("fingerprint") or json.dumps(labels, sort_keys=True))
        status = str(alert.get("status", "firing"))
        if status != "firing" or name not in self.config.alert_names:
            why = "resolved" if status != "firing" else f"{name!r} does not trigger retraining"
            return self._log(Decision("ignore", f"alert {name} ({why})", "alert", fingerprint))
        with self._lock:
            state = self._load()
            now = self.clock()
            seen = state.setdefault("fingerprints", {})
            state["fingerprints"] = seen = {k: v for k, v in seen.items() if now - v < self.config.dedup_window_s}
            if fingerprint in seen:
                self._save(state)
                return self._log(Decision("skip", f"duplicate alert {name}: fingerprint seen "
                                          f"{now - seen[fingerprint]:.0f}s ago (< {self.config.dedup_window_s:.0f}s)",
                                          "alert", fingerprint))
            seen[fingerprint] = now
            summary = (alert.get("annotations") or {}).get("summary", "")
            decision = self._guarded_start(state, "alert", f"alert {name} firing: {summary}".rstrip(": "),
                                           fingerprint)
            self._save(state)
            return self._log(decision)

    def on_webhook(self, payload: dict[str, Any]) -> list[Decision]:
        """Handle an Alertmanager webhook payload (version 4: ``{"alerts": [...], ...}``)."""
        return [self.on_alert(a) for a in payload.get("alerts", [])]


class AlertReceiver:
    """An Alertmanager webhook receiver: ``POST /alerts`` feeds the watcher; ``GET /healthz`` answers ok."""

    def __init__(self, watcher: RetrainingWatcher, host: str = "127.0.0.1", port: int = 0) -> None:
        outer = watcher

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                if self.path.rstrip("/") != "/alerts":
                    self.send_error(404, "POST Alertmanager webhooks to /alerts")
                    return
                try:
                    payload = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                except ValueError:
                    self.send_error(400, "body is not JSON")
                    return
                decisions = outer.on_webhook(payload)
                body = json.dumps([asdict(d) for d in decisions]).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:  # noqa: N802
                body = b"ok\n"
                self.send_response(200 if self.path.rstrip("/") == "/healthz" else 404)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - decisions are logged instead
                return

        class Server(ThreadingHTTPServer):
            # Alertmanager sends bursts; the socketserver default backlog of 5 drops connections under load.
            request_queue_size = 256

        self.server = Server((host, port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}/alerts"

    def start(self) -> AlertReceiver:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def export_pipeline_metrics(state_dir: Path, record: dict[str, Any], pushgateway: str | None) -> str:
    """Publish the last retraining's outcome (``recflow_pipeline_last_run_*``) to the Pushgateway or a textfile."""
    from prometheus_client import CollectorRegistry, Gauge, push_to_gateway, write_to_textfile

    registry = CollectorRegistry()
    Gauge("recflow_pipeline_last_run_failed", "1 when the last retraining pipeline run failed.",
          registry=registry).set(1.0 if record["status"] == "failed" else 0.0)
    Gauge("recflow_pipeline_last_run_timestamp_seconds", "Unix time the last retraining run finished.",
          registry=registry).set(float(record["finished"]))
    Gauge("recflow_pipeline_last_run_duration_seconds", "Wall time of the last retraining run.",
          registry=registry).set(float(record["finished"]) - float(record["started"]))
    if pushgateway:
        try:
            push_to_gateway(pushgateway, job="recflow_pipeline", registry=registry, timeout=10)
            return pushgateway
        except OSError:
            pass  # the textfile below still records it; the run's own status is in last_run.json
    path = state_dir / "pipeline.prom"
    write_to_textfile(str(path), registry)
    return str(path)


def champion_model_dir(model_store: str | None) -> str | None:
    """The serving champion's ``model`` directory in a local model store (None: no store, no champion yet,
    a remote store, or a bundle without weights to warm-start from)."""
    if not model_store:
        return None
    from recflow.model_store import ModelStore
    from recflow.training.warm_start import can_warm_start_from

    store = ModelStore(model_store)
    info = store.champion() if store.is_local else None
    if info is None:
        return None
    model = Path(info.path) / "model"
    return str(model) if can_warm_start_from(model) else None


#: Config prefixes of the release gate: an override under one of them changes what may reach production.
GATE_PREFIXES: tuple[str, ...] = ("evaluator.thresholds.", "release.")


def gate_overrides(overrides: tuple[str, ...] | list[str]) -> list[str]:
    """The ``key=value`` overrides that change a release-gate setting (see :data:`GATE_PREFIXES`)."""
    return [o for o in overrides if o.split("=", 1)[0].strip().startswith(GATE_PREFIXES)]


def pipeline_command(data_dir: Path, *, config_path: Path | None = None, kfp_host: str | None = None,
                     model_store: str | None = None, tracking_uri: str | None = None,
                     overrides: tuple[str, ...] | list[str] = (),
                     warm_start_from: str | None = None) -> list[str]:
    """The ``recflow pipeline run`` (local runner) or ``recflow pipeline submit`` (KFP host) command line.

    ``overrides`` (``key=value``, e.g. ``monitoring.watch.retraining_overrides``) become ``--set`` options;
    ``warm_start_from`` (e.g. :func:`champion_model_dir`) sets ``trainer.warm_start_from`` unless an override
    does.
    """
    argv = [sys.executable, "-m", "recflow"]
    if config_path is not None:
        argv += ["--config", str(config_path)]
    gates = gate_overrides(overrides)
    if gates:  # never silent: the pipeline's summary, blessing.json and MLflow repeat them
        log.warning("the retraining changes release-gate settings: %s", "; ".join(gates))
    for override in overrides:
        argv += ["--set", override]
    if warm_start_from and not any(o.startswith("trainer.warm_start_from=") for o in overrides):
        argv += ["--set", f"trainer.warm_start_from={warm_start_from}"]
    if kfp_host:
        argv += ["pipeline", "submit", "--host", kfp_host, "--data", str(data_dir)]
    else:
        argv += ["pipeline", "run", "--data", str(data_dir)]
    if model_store:
        argv += ["--model-store", model_store]
    if tracking_uri:
        argv += ["--tracking-uri", tracking_uri]
    return argv
