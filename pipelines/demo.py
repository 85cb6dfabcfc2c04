"""``recflow demo``: the main job end to end on the embedded default (the simulator's data)."""

from __future__ import annotations

from pathlib import Path

import click

from recflow.cli import CliState, pass_state


@click.command("demo")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=None,
              help="Dataset directory (default: DATA_DIR/demo).")
@pass_state
def demo(state: CliState, out_dir: Path | None) -> None:
    """Generate a simulated shop's traffic, validate it, and print a summary."""
    from recflow.simulator import generate_dataset
    from recflow.validation import validate_path

    config = state.config
    out = out_dir or config.paths.data_dir / "demo"
    click.secho(f"[1/2] generating simulator data into {out}", bold=True)
    summary = generate_dataset(config.simulator, out, progress=True)
    click.echo(summary.format())
    click.secho(f"[2/2] validating {out}", bold=True)
    report = validate_path(out, config.validation)
    click.echo(report.format())
