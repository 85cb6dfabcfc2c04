"""Tuner: Optuna hyperparameter search for the TFRS trainer (optional step, only when ``tuning.enabled``)."""

from components.tuner.component import build, tuner

__all__ = ["build", "tuner"]
