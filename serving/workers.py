"""Several worker processes behind one port (``recflow serve --workers N``), and model swaps between them.

The parent process binds the port, then starts ``N`` workers with uvicorn's multiprocess supervisor (each a
fresh interpreter with its own event loop and its own copy of the TensorFlow models; the bundle's large arrays
are memory-mapped from one file per array, so the workers share one copy in the page cache -- see
:func:`serving.bundle.shared_arrays`). The kernel hands each new connection to one of the workers.

What the workers share: the listening socket, the bundle's arrays (page cache), the served slates
(:class:`serving.decisions.SharedDecisions`, so a click posted to any worker is attributed to its slate) and the
Prometheus counters (``PROMETHEUS_MULTIPROC_DIR``) and, while a canary runs, each worker's counts per arm and the
lease of the one worker that decides (:mod:`serving.canary`). What each has of its own: its feedback log segments (named
after it: durable and ordered per worker), its in-memory user histories and its online learner.

**Model swaps** happen off the serving path, in new processes: the parent polls the store's champion alias
(``serving.watch_interval_s``); for a new version it starts a replacement worker, which loads and warms up the new
bundle while the old workers keep serving -- on a loader thread at a lower CPU priority
(:func:`load_at_low_priority`, ``serving.loader_nice``), so the serving workers keep their cores; once it answers
it is in service and one old worker is retired, then the next (uvicorn's rolling restart). Retiring takes two
steps: :data:`DRAIN_SIGNAL` (it stops accepting connections, and for ``serving.drain_s`` seconds every response
says ``Connection: close``, so clients leave its connections between requests: :func:`draining`), then SIGTERM
(it finishes the requests it holds and closes the connections left). A bundle that fails to load or warm up
never serves: its worker exits before it is ready, the restart is abandoned and the version is marked rejected.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from serving.logs import flush_logs, log_event

SPEC_ENV = "RECFLOW_SERVE_SPEC"
DRAIN_SIGNAL = signal.SIGUSR1
T = TypeVar("T")


def app_factory() -> Any:
    """The app of one worker process (uvicorn calls it in each worker; the spec comes from the parent). Everything
    heavy -- importing TensorFlow, loading, checking and warming up the bundle and the explainer -- runs on the
    low-priority loader thread (:func:`load_at_low_priority`)."""
    from serving.logs import configure_logging, silence_library_warnings

    spec = json.loads(os.environ[SPEC_ENV])
    silence_library_warnings()
    configure_logging(spec["log_level"])
    from serving.config import ServingConfig

    cfg = ServingConfig(**spec["config"])
    name = f"w{os.getpid()}"

    def load() -> Any:
        from serving.logs import quiet_imports

        quiet_imports()
        import pandas as pd

        from recflow.release import CanaryConfig
        from serving.recommender import Recommender, limit_threads

        limit_threads(cfg)
        catalog = pd.read_parquet(spec["catalog"]) if spec.get("catalog") else None
        rec = Recommender.load(
            spec["store"], cfg, feedback_dir=spec["feedback_dir"], catalog=catalog, worker=name,
            shared_decisions=spec["decisions"],
            canary=CanaryConfig(**spec["canary"]) if spec.get("canary") else None,
        )
        if cfg.warm_explanations:  # before the worker takes traffic: a replacement warms up off the serving path
            try:
                rec.warm_explanations()
            except Exception as exc:  # noqa: BLE001 - explanations stay available, only slower the first time
                log_event("explainer_warm_failed", logging.WARNING, reason=f"{type(exc).__name__}: {exc}")
        import serving.app  # noqa: F401  (FastAPI and friends, imported here too)

        freeze_heap()
        return rec

    try:
        rec = load_at_low_priority(load, cfg.loader_nice)
    except Exception as exc:  # noqa: BLE001 - a worker that cannot load must not be restarted in a loop
        from uvicorn.config import STARTUP_FAILURE

        log_event("worker_failed", logging.ERROR, worker=name, reason=f"{type(exc).__name__}: {exc}")
        sys.exit(STARTUP_FAILURE)
    log_event("worker_ready", worker=name, version=rec.champion.version, pid=os.getpid())
    from serving.app import create_app

    def stop() -> None:
        rec.close()
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(os.getpid())
        flush_logs()

    # the parent watches the champion alias and rolls the workers; explanations are warm already
    app = create_app(rec, watch=False, warm_explanations=False, on_shutdown=stop)
    signal.signal(DRAIN_SIGNAL, draining(app.state.drain, _running_uvicorn_server()))
    if rec.canary is not None:  # each worker follows the canary; one of them decides (serving.canary)
        rec.start_watcher(swap=False)
    return app


def freeze_heap() -> None:
    """Collect, then move every object alive now (TensorFlow's, the bundle's, SHAP's: 660,000 for the benchmark
    bundle) out of the garbage collector's reach (:func:`gc.freeze`). A full collection over them takes 0.4 s or
    more with the interpreter lock held -- a stall of every request in the worker, whenever the collector decides
    to; after the freeze it looks at what serving allocates only. (Frozen objects are still freed when their
    last reference goes; a swap in this process calls :func:`gc.unfreeze` first.)"""
    import gc

    gc.collect()
    gc.freeze()


def _running_uvicorn_server() -> Any:
    """The ``uvicorn.Server`` whose start-up is calling the app factory (found on the call stack), or None."""
    import inspect

    import uvicorn

    frame = inspect.currentframe()
    while frame is not None:
        candidate = frame.f_locals.get("self")
        if isinstance(candidate, uvicorn.Server):
            return candidate
        frame = frame.f_back
    return None


def draining(drain: Any, server: Any) -> Callable[..., None]:
    """The worker's :data:`DRAIN_SIGNAL` handler: the parent is about to retire it. From now on every response
    asks for its connection to be closed (:class:`serving.middleware.Drain`), and the worker stops accepting
    connections (its copy of the listening socket is closed; the other workers keep theirs), so that when it
    stops, no connection it accepted is still waiting for its request to be read."""

    def stop_accepting() -> None:
        listeners = getattr(server, "servers", None) or []
        for listener in listeners:
            listener.close()
        log_event("draining", pid=os.getpid(), listeners_closed=len(listeners))

    def handler(*_: Any) -> None:
        import asyncio

        drain.on = True
        loop = asyncio._get_running_loop()  # the handler runs on the main thread, inside the worker's loop
        if loop is not None and server is not None:
            loop.call_soon(stop_accepting)

    return handler


def load_at_low_priority(load: Callable[[], T], nice: int) -> T:
    """``load()`` computed on a thread of its own at ``nice`` more CPU niceness than the caller's (at most 19; Linux
    gives each thread its own nice value), while the calling thread waits: a new worker loads and warms up its bundle --
    TensorFlow models, checks, explainer -- on the cores the serving workers use, and lower priority keeps their
    requests first.

    The loader is the only thread of the process that runs meanwhile (the caller waits on it; no request is
    served yet), so no serving thread waits for an interpreter lock held by a low-priority thread. Raising the
    niceness needs no privilege, and the thread ends with the load. Threads it starts inherit its niceness: in a
    worker that is TensorFlow's thread pools, so TensorFlow's work at load (restoring the models, checking the
    numpy engines against them, the explainer's warm-up) stays at low priority, and so do the TensorFlow calls a
    worker makes later (explanations, a new user in a context the bundle does not know, the SavedModel fallbacks);
    the request path itself is NumPy on the serving threads. So is the online learner's thread
    (``serving.online_learning``, off by default), which shares the interpreter lock with the serving threads:
    with online learning on, set ``serving.loader_nice`` to 0."""
    import threading

    out: dict[str, Any] = {}

    def run() -> None:
        if nice:
            try:  # ``nice`` more than the thread has now (a worker started at nice 19 stays at 19, never higher)
                me = threading.get_native_id()
                current = os.getpriority(os.PRIO_PROCESS, me)
                if min(current + nice, 19) != current:
                    os.setpriority(os.PRIO_PROCESS, me, min(current + nice, 19))
            except (OSError, AttributeError) as exc:  # not Linux: load at normal priority
                log_event("loader_nice_failed", logging.WARNING, reason=f"{type(exc).__name__}: {exc}")
        try:
            out["value"] = load()
        except BaseException as exc:  # noqa: BLE001 - raised again in the caller's thread
            out["error"] = exc

    thread = threading.Thread(target=run, name="bundle-loader")
    thread.start()
    thread.join()
    if "error" in out:
        raise out["error"]
    return out["value"]


def serve_workers(
    sock: socket.socket,
    workers: int,
    store_root: str,
    config: Any,
    feedback_dir: Path,
    catalog: Path | None,
    canary: Any = None,
) -> None:
    """Run ``workers`` worker processes on ``sock`` until SIGINT/SIGTERM, rolling them onto new champions;
    ``canary`` (``release.canary``): the workers follow the store's canary, one of them deciding."""
    import uvicorn

    run_dir = Path(tempfile.mkdtemp(prefix="recflow-serve-"))
    metrics_dir = run_dir / "prometheus"
    metrics_dir.mkdir()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    os.environ[SPEC_ENV] = json.dumps(
        {
            "store": store_root,
            "config": config.model_dump(mode="json"),
            "feedback_dir": str(feedback_dir),
            "catalog": str(catalog) if catalog else None,
            "decisions": str(run_dir / "decisions.sqlite"),
            "canary": canary.model_dump(mode="json") if canary is not None else None,
            "log_level": config.log_level,
        }
    )
    uv_config = uvicorn.Config(
        "serving.workers:app_factory",
        factory=True,
        workers=workers,
        log_level="warning",
        access_log=False,
        log_config=None,
        lifespan="on",
        timeout_worker_healthcheck=30,  # liveness pings; a worker's start may take longer (below)
    )
    supervisor = ModelSupervisor(
        uv_config, [sock], store_root, config.watch_interval_s, config.worker_start_timeout_s, config.drain_s
    )
    try:
        supervisor.run()
    finally:
        log_event("shutdown", workers=workers, version=supervisor.version)
        flush_logs()
        shutil.rmtree(run_dir, ignore_errors=True)


class ModelSupervisor:
    """uvicorn's multiprocess supervisor plus a watch of the store's champion alias (see the module docstring)."""

    def __init__(
        self, config: Any, sockets: list[socket.socket], store_root: str, interval_s: float, start_timeout_s: float,
        drain_s: float = 0.0,
    ) -> None:
        from uvicorn.supervisors import Multiprocess

        from recflow.model_store import ModelStore

        self.store = ModelStore(store_root)
        self.interval_s = interval_s
        self.start_timeout_s = start_timeout_s
        self.drain_s = drain_s
        self.sockets = sockets
        champion = self.store.champion()
        self.version = champion.version if champion else None
        self.rejected: set[str] = set()
        self.multi = Multiprocess(config, sockets)
        self._polled = 0.0

    def run(self) -> None:
        import time

        multi = self.multi
        multi.init_processes()
        while not multi.should_exit.wait(0.5):
            multi.handle_signals()
            multi.keep_subprocess_alive()
            if time.monotonic() - self._polled >= self.interval_s:
                self._polled = time.monotonic()
                try:
                    self.poll()
                except Exception as exc:  # noqa: BLE001 - a flaky store must not stop the service
                    log_event("watch_failed", logging.WARNING, reason=f"{type(exc).__name__}: {exc}")
        multi.terminate_all()
        multi.join_all()

    def poll(self) -> str:
        """One look at the alias: ``unchanged``, ``swapped`` (every worker rolled) or ``rejected``."""
        state = self.store.alias()
        if state is None or state.version == self.version or state.version in self.rejected:
            return "unchanged"
        before = [p.pid for p in self.multi.processes]
        self.roll()
        after = [p.pid for p in self.multi.processes]
        if after == before:  # the first replacement never became ready: it could not load the bundle
            self.rejected.add(state.version)
            log_event("swap_rejected", logging.ERROR, version=state.version, serving=self.version,
                      reason="a worker with the new version did not start (see its log lines above)")
            return "rejected"
        log_event("swap", version=state.version, previous=self.version, workers=len(after),
                  rolled=sum(a != b for a, b in zip(after, before, strict=True)))
        self.version = state.version
        return "swapped"

    def roll(self) -> None:
        """Replace each worker by a new one, which is in service before the old one is retired (uvicorn's
        ``restart_all`` with the start-up timeout of a worker that loads a bundle). A worker is retired in two
        steps: ``drain_s`` seconds of answering with ``Connection: close`` (:class:`serving.middleware.Drain`:
        clients leave its connections between two requests), then SIGTERM (it stops accepting, finishes the
        requests it holds and closes the connections left)."""
        from uvicorn.supervisors.multiprocess import Process

        multi = self.multi
        for idx, old in enumerate(multi.processes):
            if multi.should_exit.is_set():
                return
            new = Process(multi.config, self.sockets)
            new.start()
            if not new.wait_until_ready(self.start_timeout_s, multi.should_exit):
                new.kill()
                new.join()
                return
            if self.drain_s > 0 and old.process.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(old.process.pid, DRAIN_SIGNAL)
                multi.should_exit.wait(self.drain_s)
            old.terminate()  # SIGTERM: stops accepting, finishes its requests, exits
            old.join()
            multi.processes[idx] = new
