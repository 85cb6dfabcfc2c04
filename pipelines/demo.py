"""``recflow demo``: the main job end to end on the embedded default (the simulator's data).

Generates a simulated shop's traffic, validates it, then runs the whole training DAG on the KFP local runner
and prints its summary: per-step times, key metrics vs baselines, blessed or not, where the pushed model is,
and how to open the MLflow UI.
"""

from __future__ import annotations

from pathlib import Path

import click

from recflow.cli import CliState, pass_state


@click.command("demo")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=None,
              help="Dataset directory (default: DATA_DIR/demo).")
@click.option("--no-pipeline", is_flag=True, help="Only generate and validate the data.")
@click.option("--no-tracking", is_flag=True, help="Run the pipeline without MLflow tracking.")
@pass_state
def demo(state: CliState, out_dir: Path | None, no_pipeline: bool, no_tracking: bool) -> None:
    """Generate a simulated shop's traffic, validate it, and run the training pipeline on it."""
    from recflow.simulator import generate_dataset
    from recflow.validation import validate_path

    config = state.config
    out = out_dir or config.paths.data_dir / "demo"
    total = 2 if no_pipeline else 3
    click.secho(f"[1/{total}] generating simulator data into {out}", bold=True)
    summary = generate_dataset(config.simulator, out, progress=True)
    click.echo(summary.format())
    click.secho(f"[2/{total}] validating {out}", bold=True)
    report = validate_path(out, config.validation)
    click.echo(report.format())
    if no_pipeline:
        return
    from pipelines.local_run import run_local

    click.secho(f"[3/{total}] running the training pipeline locally", bold=True)
    result = run_local(out, config, tracking=not no_tracking, echo=click.echo)
    click.echo("")
    click.echo(result.format())
