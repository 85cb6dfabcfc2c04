"""``recflow pipeline ...``: compile, run locally, submit and schedule the training DAG (thin wrappers)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from recflow.cli import CliState, pass_state
from recflow.config import RecflowConfig


def _config(state: CliState, config_path: Path | None) -> RecflowConfig:
    # `recflow pipeline run --config FILE` works like `recflow --config FILE pipeline run`.
    if config_path is not None:
        state.config_path, state._config = config_path, None
    return state.config


config_option = click.option("--config", "config_path", type=click.Path(path_type=Path), default=None,
                             help="YAML config file (same as the top-level --config).")


@click.group()
def pipeline() -> None:
    """Compile the training DAG, run it locally, or send it to Kubeflow Pipelines."""


@pipeline.command("compile")
@click.option("--out", "out", type=click.Path(path_type=Path), required=True, help="IR YAML file to write.")
@config_option
@pass_state
def compile_command(state: CliState, out: Path, config_path: Path | None) -> None:
    """Compile the DAG (images and GPU placement from the `pipeline` config section) to KFP IR YAML."""
    from pipelines.package import compile_pipeline

    config = _config(state, config_path)
    _warn_images(config)
    path = compile_pipeline(config, out)
    click.echo(f"compiled pipeline written to {path} (every parameter has a default: it uploads and runs from "
               "the KFP UI; set data_uri there)")


@pipeline.command("run")
@click.option("--data", "data_dir", type=click.Path(path_type=Path), required=True, help="Dataset directory.")
@config_option
@click.option("--model-store", type=click.Path(path_type=Path), default=None,
              help="Where a blessed model is pushed (default: model_store.path, else DATA_DIR/models).")
@click.option("--tracking-uri", default=None, help="MLflow tracking URI (default: tracking section / local sqlite).")
@click.option("--no-tracking", is_flag=True, help="Run without MLflow tracking.")
@click.option("--verbose", is_flag=True, help="Show the steps' full logs, not only progress lines.")
@click.option("--run-name", default=None, help="MLflow run name (default: <pipeline>-<yyyymmdd-hhmmss>).")
@click.option("--cache", is_flag=True,
              help="Reuse the outputs of steps whose data, champion and config are unchanged since an earlier "
                   "local run (KFP's local cache, under the run root); off by default.")
@pass_state
def run_command(state: CliState, data_dir: Path, config_path: Path | None, model_store: Path | None,
                tracking_uri: str | None, no_tracking: bool, verbose: bool, run_name: str | None,
                cache: bool) -> None:
    """Run the whole DAG on this machine (KFP local runner) and print a summary."""
    from pipelines.local_run import run_local

    config = _config(state, config_path)
    result = run_local(data_dir, config, model_store=model_store,
                       tracking_uri=tracking_uri, tracking=not no_tracking, verbose=verbose, echo=click.echo,
                       run_name=run_name, config_path=state.config_path, cache=cache)
    click.echo("")
    click.echo(result.format())


def _warn_images(config: RecflowConfig) -> None:
    from pipelines.definition import image_warnings

    for message in image_warnings(config.pipeline):
        click.secho(f"warning: {message}", fg="yellow", err=True)


def _remote_arguments(config: RecflowConfig, data: str, model_store: str | None,
                      tracking_uri: str | None, run_name: str | None = None) -> dict[str, Any]:
    from pipelines.definition import section_defaults
    from pipelines.local_run import default_model_store

    _warn_images(config)
    store = model_store or str(default_model_store(config))
    for name, value in (("--data", data), ("--model-store", store)):
        if "://" not in value:
            click.secho(f"warning: {name} {value} is a local path; the cluster's pods cannot read it "
                        "(use gs://...)", fg="yellow", err=True)
    uri = tracking_uri or config.tracking.tracking_uri or ""
    if not uri:
        click.secho("warning: no --tracking-uri (nor tracking.tracking_uri): the run is not tracked in MLflow",
                    fg="yellow", err=True)
    # The run's MLflow parent run is opened by its first step and closed by its exit handler, on the cluster.
    return {"data_uri": data, "model_store": store, "tracking_uri": uri, "run_name": run_name or "",
            **{f"{k}_config": v for k, v in section_defaults(config).items()}}


remote_options = [
    click.option("--host", required=True, help="Kubeflow Pipelines API URL, e.g. http://localhost:8080."),
    click.option("--data", "data", required=True, help="Dataset URI the cluster can read (gs://...)."),
    click.option("--model-store", default=None, help="Model store URI the cluster can write (gs://...)."),
    click.option("--tracking-uri", default=None, help="MLflow tracking server URL reachable from the cluster."),
    config_option,
]


def _with_remote_options(func: Any) -> Any:
    for option in reversed(remote_options):
        func = option(func)
    return func


@pipeline.command("submit")
@_with_remote_options
@click.option("--run-name", default=None, help="Run name shown in the Kubeflow UI and in MLflow.")
@pass_state
def submit_command(state: CliState, host: str, data: str, model_store: str | None, tracking_uri: str | None,
                   config_path: Path | None, run_name: str | None) -> None:
    """Compile the DAG and start one run of it on a Kubeflow Pipelines endpoint."""
    from pipelines.remote import submit_run

    config = _config(state, config_path)
    run = submit_run(host, config, _remote_arguments(config, data, model_store, tracking_uri, run_name),
                     run_name=run_name)
    click.echo(f"submitted run {run.run_id}: {run.url}")


@pipeline.command("schedule")
@_with_remote_options
@click.option("--cron", required=True,
              help="When to run: 5-field cron ('0 3 * * *' = 03:00 daily) or 6 fields with seconds first.")
@click.option("--name", default=None, help="Name of the recurring run.")
@pass_state
def schedule_command(state: CliState, host: str, data: str, model_store: str | None, tracking_uri: str | None,
                     config_path: Path | None, cron: str, name: str | None) -> None:
    """Create a recurring run of the DAG on a Kubeflow Pipelines endpoint (one at a time, no catch-up)."""
    from pipelines.remote import schedule_run

    config = _config(state, config_path)
    job = schedule_run(host, config, _remote_arguments(config, data, model_store, tracking_uri), cron, name=name)
    click.echo(f"scheduled recurring run {job.recurring_run_id} (cron '{job.cron}', max_concurrency=1, "
               f"no_catchup): {job.url}")
