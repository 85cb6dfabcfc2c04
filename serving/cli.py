"""``recflow serve`` (the HTTP service) and ``recflow ab report`` (the A/B test's outcome)."""

from __future__ import annotations

import json
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
) -> None:
    """Serve recommendations over HTTP from the champion bundle of a model store (hot-swapped on push)."""
    import pandas as pd
    import uvicorn

    from serving.app import create_app
    from serving.recommender import Recommender, limit_threads

    cfg = serving_config(state)
    updates = {
        k: v
        for k, v in {
            "host": host,
            "port": port,
            "challenger": challenger,
            "challenger_share": challenger_share,
        }.items()
        if v is not None
    }
    cfg = cfg.model_copy(update=updates)
    fb_dir = feedback_dir or cfg.feedback_dir or state.config.paths.data_dir / "feedback"
    items = pd.read_parquet(catalog) if catalog else None
    root = _store_root(state, models)
    limit_threads(cfg)
    click.echo(f"loading the champion of {root} ...")
    rec = Recommender.load(root, cfg, feedback_dir=fb_dir, catalog=items, canary=state.config.release.canary)
    click.echo(
        f"serving model {rec.champion.version} on http://{cfg.host}:{cfg.port} (feedback log: {fb_dir})"
    )
    try:
        uvicorn.run(create_app(rec), host=cfg.host, port=cfg.port, log_level="warning", access_log=False)
    finally:
        rec.close()


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
