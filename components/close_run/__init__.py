"""Close run: the DAG's exit handler, which closes the pipeline's MLflow run with the run's final status."""

from components.close_run.component import build, close_run

__all__ = ["build", "close_run"]
