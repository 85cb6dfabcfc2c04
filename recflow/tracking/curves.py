"""Per-epoch training curves: read from what the trainers write, logged as MLflow metric histories and plotted.

The trainers already keep their curves (the TFRS trainer's ``training.json``: a Keras ``history`` per model;
the TF-Agents trainer's ``policy_meta.json``: ``loss_curve``), so the pipeline steps turn those files into
metrics with one value per epoch (MLflow ``step`` = epoch index) and a PNG plot; the trainers need no tracking
code.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from recflow.tracking.names import log_batch, metric_name
from recflow.tracking.store import tracking_client


def _numbers(values: Any) -> list[float] | None:
    if not isinstance(values, list) or not values:
        return None
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return None
    return [float(v) for v in values]


def epoch_curves(report: Mapping[str, Any], prefix: str = "") -> dict[str, list[float]]:
    """Every per-epoch curve in a trainer's report: ``{"<model>.<metric>": [epoch 0, epoch 1, ...]}``.

    A curve is a list of numbers under a ``history`` mapping (``{"retrieval": {"history": {"loss": [...]}}}``
    -> ``retrieval.loss``) or under a key ending in ``_curve`` (``{"loss_curve": [...]}`` -> ``loss``). Lists
    inside lists (e.g. per-trial histories of a grid search) are not curves of the run and are left out.
    """
    out: dict[str, list[float]] = {}
    for key, value in report.items():
        name = f"{prefix}{key}"
        if key == "history" and isinstance(value, Mapping):
            for metric, values in value.items():
                curve = _numbers(values)
                if curve is not None:
                    out[f"{prefix}{metric}"] = curve
        elif key.endswith("_curve") and _numbers(value) is not None:
            out[f"{prefix}{key[: -len('_curve')]}"] = _numbers(value) or []
        elif isinstance(value, Mapping):
            out.update(epoch_curves(value, f"{name}."))
    return out


def log_epoch_curves(tracking_uri: str, run_id: str, curves: Mapping[str, list[float]],
                     prefix: str = "epoch.") -> int:
    """Log each curve as the metric ``<prefix><name>`` with one value per epoch (step = epoch); returns how many
    values were logged. Non-finite values are skipped (MLflow stores them, but they break its charts)."""
    client = tracking_client(tracking_uri)
    count = 0
    for epoch in range(max((len(c) for c in curves.values()), default=0)):
        values = {metric_name(prefix + name): c[epoch] for name, c in curves.items()
                  if epoch < len(c) and math.isfinite(c[epoch])}
        if values:
            log_batch(client, run_id, metrics=values, step=epoch)
            count += len(values)
    return count


def plot_curves(curves: Mapping[str, list[float]], out: Path, title: str) -> Path | None:
    """One panel per model (the name before the last dot), every curve of it against the epoch; None if empty."""
    if not curves:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups: dict[str, dict[str, list[float]]] = {}
    for name, curve in sorted(curves.items()):
        model, _, metric = name.rpartition(".")
        groups.setdefault(model or "model", {})[metric] = curve
    fig, axes = plt.subplots(len(groups), 1, figsize=(7, 3 * len(groups)), squeeze=False)
    for ax, (model, metrics) in zip(axes[:, 0], groups.items(), strict=True):
        for metric, curve in metrics.items():
            ax.plot(range(len(curve)), curve, marker="o", label=metric)
        ax.set_title(model)
        ax.set_xlabel("epoch")
        ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out
