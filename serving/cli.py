"""``recflow serve`` (the HTTP service) and ``recflow ab report`` (the A/B test's outcome)."""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from pathlib import Path

import click

from recflow.cli import CliState, pass_state
from serving.config import ServingConfig


def serving_config(state: CliState) -> ServingConfig:
    """The ``serving`` section of the config."""
    return state.config.serving


def _store_root(state: CliState, models: str | None) -> str:
    from recflow.model_store import resolve_store_root

    return resolve_store_root(state.config.model_store, state.config.paths.data_dir, models)


@click.command("serve")
@click.option(
    "--models", default=None, help="Model store to serve the champion of (default: the configured one)."
)
@click.option("--host", default=None, help="Interface to bind (default: serving.host).")
@click.option("--port", type=int, default=None, help="Port (default: serving.port).")
@click.option(
    "--feedback-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Feedback log directory (default: serving.feedback_dir, else DATA_DIR/feedback).",
)
@click.option(
    "--catalog",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    default=None,
    help="items.parquet: catalog items not in the model become recommendable from their content.",
)
@click.option("--challenger", default=None, help="Model version to A/B test against the champion.")
@click.option("--challenger-share", type=float, default=None, help="Share of users served the challenger.")
@click.option(
    "--workers", type=click.IntRange(min=1), default=None,
    help="Worker processes sharing the port (default: serving.workers; see docs/serving.md for how many).",
)
@pass_state
def serve(
    state: CliState,
    models: str | None,
    host: str | None,
    port: int | None,
    feedback_dir: Path | None,
    catalog: Path | None,
    challenger: str | None,
    challenger_share: float | None,
    workers: int | None,
) -> None:
    """Serve recommendations over HTTP from the champion bundle of a model store (hot-swapped on push)."""
    from serving.logs import configure_logging, silence_library_warnings

    silence_library_warnings()
    cfg = serving_config(state)
    updates = {
        k: v
        for k, v in {
            "host": host,
            "port": port,
            "challenger": challenger,
            "challenger_share": challenger_share,
            "workers": workers,
        }.items()
        if v is not None
    }
    cfg = cfg.model_copy(update=updates)
    configure_logging(cfg.log_level)
    # The port first: a taken port is an error now, not after a minute of loading the model.
    sock = bind_socket(cfg.host, cfg.port)
    try:
        _serve(state, cfg, sock, models, feedback_dir, catalog)
    finally:
        sock.close()


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port``; a clear :class:`click.ClickException` when it is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise click.ClickException(
            f"cannot listen on {host}:{port}: {exc.strerror or exc} (another process holds the port? "
            "choose another with --port or serving.port)"
        ) from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _serve(
    state: CliState,
    cfg: ServingConfig,
    sock: socket.socket,
    models: str | None,
    feedback_dir: Path | None,
    catalog: Path | None,
) -> None:
    import logging

    from serving.logs import flush_logs, log_event, quiet_imports

    api_key_env = "RECFLOW_API_KEY"  # serving.app.API_KEY_ENV, without importing the app into the parent
    if not os.environ.get(api_key_env):
        click.echo(
            f"warning: {api_key_env} is not set, so POST /v1/feedback and the admin endpoints will refuse "
            f"every request (401); export {api_key_env}=<secret> to accept feedback",
            err=True,
        )
    fb_dir = feedback_dir or cfg.feedback_dir or state.config.paths.data_dir / "feedback"
    root = _store_root(state, models)
    if cfg.workers > 1:
        from serving.workers import serve_workers

        log_event("startup", url=f"http://{cfg.host}:{cfg.port}", workers=cfg.workers, feedback_dir=str(fb_dir),
                  pid=os.getpid())
        click.echo(f"serving {root} with {cfg.workers} workers on http://{cfg.host}:{cfg.port}", err=True)
        serve_workers(sock, cfg.workers, root, cfg, Path(fb_dir), catalog, canary=state.config.release.canary)
        return
    quiet_imports()  # TensorFlow's CUDA probe lines, tf_agents' SyntaxWarning, Gym's banner
    import pandas as pd
    import uvicorn

    from serving.app import create_app
    from serving.recommender import Recommender, limit_threads

    items = pd.read_parquet(catalog) if catalog else None
    limit_threads(cfg)
    click.echo(f"loading the champion of {root} ...", err=True)
    started = time.perf_counter()
    rec = Recommender.load(root, cfg, feedback_dir=fb_dir, catalog=items, canary=state.config.release.canary)
    from serving.workers import freeze_heap

    freeze_heap()  # no 0.4 s garbage collection over TensorFlow's objects in the middle of a request
    log_event(
        "model_loaded",
        version=rec.champion.version,
        kind=getattr(rec.champion, "kind", "model"),
        items=len(rec.champion.item_ids),
        seconds=round(time.perf_counter() - started, 2),
    )
    log_event("startup", url=f"http://{cfg.host}:{cfg.port}", version=rec.champion.version,
              feedback_dir=str(fb_dir), pid=os.getpid())
    what = (f"the run's best baseline {rec.champion.label} as model {rec.champion.version} (its candidate was not "
            "blessed)" if getattr(rec.champion, "kind", "model") == "baseline" else f"model {rec.champion.version}")
    click.echo(f"serving {what} on http://{cfg.host}:{cfg.port} (feedback log: {fb_dir})", err=True)
    config = uvicorn.Config(
        create_app(rec), log_level="warning", access_log=False, log_config=None, lifespan="on"
    )
    server = uvicorn.Server(config)
    # After its graceful shutdown uvicorn raises the SIGTERM it caught again, with the handler it found: without
    # this one, the default handler would end the process before the lines below log and close the service.
    signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        server.run(sockets=[sock])
    finally:
        log_event("stopping", logging.INFO, version=rec.champion.version)
        rec.close()
        flush_logs()


@click.group("ab")
def ab() -> None:
    """A/B tests on live traffic."""


@ab.command("report")
@click.option(
    "--feedback-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Feedback log directory (default: serving.feedback_dir, else DATA_DIR/feedback).",
)
@click.option("--control", default="champion", show_default=True, help="The reference variant.")
@click.option("--plot", type=click.Path(path_type=Path), default=None, help="Write a PNG chart here.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@pass_state
def ab_report_command(
    state: CliState, feedback_dir: Path | None, control: str, plot: Path | None, as_json: bool
) -> None:
    """Per variant: CTR, conversion rate and average order value with CIs, and significance tests."""
    from serving.ab_report import ab_report, plot_ab_report
    from serving.feedback_log import read_feedback

    cfg = serving_config(state)
    fb_dir = feedback_dir or cfg.feedback_dir or state.config.paths.data_dir / "feedback"
    report = ab_report(read_feedback(fb_dir), control=control)
    click.echo(json.dumps(report.to_dict(), indent=2, default=float) if as_json else report.format())
    if plot is not None:
        click.echo(f"plot: {plot_ab_report(report, plot)}")
