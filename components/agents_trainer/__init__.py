"""Agents trainer: the TF-Agents slate policy, trained off-policy on logged feedback (GPU step)."""

from components.agents_trainer.component import agents_trainer, build

__all__ = ["agents_trainer", "build"]
