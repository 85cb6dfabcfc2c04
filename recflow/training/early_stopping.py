"""Epoch-by-epoch training with early stopping on a validation score, shared by the sequence model's two
trainers (the pipeline's :mod:`recflow.training.sequence_retrieval` and the id-level
:mod:`recflow.training.id_sequence` of the benchmarks and tests)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass
class FitCurves:
    """Per-epoch training loss and validation scores, and the (1-based) epoch whose weights were kept."""

    loss: list[float] = field(default_factory=list)
    validation: dict[str, list[float]] = field(default_factory=dict)
    best_epoch: int = 0
    examples_seen: list[float] = field(default_factory=list)  #: per epoch, with an ``examples_seen`` callback


def fit_with_early_stopping(model: Any, weights_of: Any, ds: Any, epochs: int, patience: int,
                            validate: Callable[[], Mapping[str, float]] | None, monitor: str,
                            callbacks: Sequence[Any] = ()) -> FitCurves:
    """Fit ``model`` on ``ds`` one epoch at a time, for at most ``epochs``. With ``validate`` (scores after each
    epoch, higher is better), stop after ``patience`` epochs without a better ``validate()[monitor]`` and
    restore the best epoch's weights into ``weights_of`` (the Keras layer or model whose weights matter: the
    sequence encoder). ``callbacks`` go to every epoch's ``fit``; an ``examples_seen`` they log
    (:func:`recflow.training.distribution.counting_callback`) is kept per epoch."""
    curves = FitCurves()
    best, best_weights, since_best = float("-inf"), None, 0
    for epoch in range(epochs):
        h = model.fit(ds, epochs=1, verbose=0, callbacks=list(callbacks))
        curves.loss.append(float(h.history["loss"][-1]))
        if "examples_seen" in h.history:
            curves.examples_seen.append(float(h.history["examples_seen"][-1]))
        if validate is None:
            continue
        scores = validate()
        for name, value in scores.items():
            curves.validation.setdefault(name, []).append(float(value))
        if scores[monitor] > best:
            best, best_weights, since_best, curves.best_epoch = scores[monitor], weights_of.get_weights(), 0, epoch + 1
        else:
            since_best += 1
            if since_best >= patience:
                break
    if best_weights is not None:
        weights_of.set_weights(best_weights)
    return curves
