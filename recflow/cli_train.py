"""``recflow train``: the TFRS trainer on ExampleGen and Transform outputs, outside the pipeline.

The command each replica of a multi-worker training job runs (a Kubeflow TFJob or a Vertex AI custom job sets
``TF_CONFIG``; docs/pipeline.md, "Training on several GPUs / workers"): with
``--set trainer.distribution.strategy=multi_worker_mirrored`` every worker trains in step and only the chief
writes ``--out``. A thin wrapper over :func:`recflow.training.tfrs_trainer.train_tfrs`.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from recflow.cli import CliState, cli, pass_state


@cli.command("train")
@click.option("--examples", "examples_dir", type=click.Path(path_type=Path), required=True,
              help="ExampleGen's output directory (train/eval/test parquet files).")
@click.option("--transform", "transform_dir", type=click.Path(path_type=Path), required=True,
              help="Transform's output directory.")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), required=True,
              help="The model directory to write (replaced atomically; on a multi-worker run only by the chief).")
@pass_state
def train(state: CliState, examples_dir: Path, transform_dir: Path, out_dir: Path) -> None:
    """Train the retrieval and ranking models (the `trainer` config section) and export them."""
    from recflow.training.tfrs_trainer import train_tfrs

    config = state.config.trainer
    result = train_tfrs(examples_dir, transform_dir, out_dir, config)
    role = "chief: wrote" if result.chief else "worker: trained in step with the chief, which wrote"
    click.echo(f"{role} {out_dir}")
    click.echo(json.dumps({k: result.metrics[k] for k in sorted(result.metrics)}, default=float))
