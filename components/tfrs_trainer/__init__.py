"""TFRS trainer: the two-tower retrieval and ranking models (GPU step)."""

from components.tfrs_trainer.component import build, tfrs_trainer

__all__ = ["build", "tfrs_trainer"]
