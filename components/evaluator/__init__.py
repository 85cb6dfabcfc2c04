"""Evaluator: candidate vs baselines vs champion, significance tests, and the blessing that gates the push."""

from components.evaluator.component import build, evaluator

__all__ = ["build", "evaluator"]
