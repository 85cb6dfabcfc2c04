"""Per-slice metrics of a ranking model's click predictions with TensorFlow Model Analysis.

The ranking model predicts a click probability for each (user, shown item) pair. :func:`ranking_examples`
turns held-out events into those pairs with the label (clicked or better) and the slice columns (item
category, new vs returning user); the caller adds the model's ``prediction`` column; :func:`slice_metrics`
runs
``tfma.analyze_raw_data`` on the DataFrame and returns one row per slice with AUC, calibration (mean
prediction / mean label), example count, mean label and mean prediction.

TFMA 0.52 no longer exports ``EvalConfig``/``SlicingSpec``/``MetricsSpec`` at the top level; they come from
``tensorflow_model_analysis.proto.config_pb2``. TFMA (and TensorFlow) are imported only inside
:func:`slice_metrics`: importing this module is cheap.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from recflow.schema import POSITIVE_EVENT_TYPES

#: TFMA metric classes computed per slice, and the column each becomes.
SLICE_METRICS: dict[str, str] = {
    "ExampleCount": "example_count",
    "AUC": "auc",
    "Calibration": "calibration",
    "MeanLabel": "mean_label",
    "MeanPrediction": "mean_prediction",
}
OVERALL = "overall"
UNKNOWN = "unknown"


def ranking_examples(
    events: pd.DataFrame,
    items: pd.DataFrame | None = None,
    train_events: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """One row per (user, item) shown or viewed in ``events``: ``label`` 1.0 when the user clicked, carted or
    bought it, else 0.0; ``category`` from ``items`` (``unknown`` when absent); ``user_type`` ``returning``
    when the user has any event in ``train_events``, else ``new``."""
    ev = events[["user_id", "item_id", "event_type"]].astype({"user_id": str, "item_id": str})
    shown = ev[ev["event_type"].isin(("impression", "view", *POSITIVE_EVENT_TYPES))]
    positive = ev.loc[ev["event_type"].isin(POSITIVE_EVENT_TYPES), ["user_id", "item_id"]].drop_duplicates()
    pairs = shown[["user_id", "item_id"]].drop_duplicates().reset_index(drop=True)
    key = pd.MultiIndex.from_frame(pairs)
    pairs["label"] = key.isin(pd.MultiIndex.from_frame(positive)).astype(np.float64)
    if items is not None and "category" in items.columns:
        categories = (
            items.astype({"item_id": str}).drop_duplicates("item_id").set_index("item_id")["category"]
        )
        pairs["category"] = pairs["item_id"].map(categories).fillna(UNKNOWN).astype(str)
    else:
        pairs["category"] = UNKNOWN
    known = set(train_events["user_id"].astype(str)) if train_events is not None else set()
    pairs["user_type"] = np.where(pairs["user_id"].isin(known), "returning", "new")
    return pairs


def _eval_config(label: str, prediction: str, slice_columns: Sequence[str]):  # noqa: ANN202 (TFMA proto)
    from tensorflow_model_analysis.proto import config_pb2

    return config_pb2.EvalConfig(
        model_specs=[config_pb2.ModelSpec(label_key=label, prediction_key=prediction)],
        slicing_specs=[config_pb2.SlicingSpec()]
        + [config_pb2.SlicingSpec(feature_keys=[column]) for column in slice_columns],
        metrics_specs=[
            config_pb2.MetricsSpec(
                metrics=[config_pb2.MetricConfig(class_name=name) for name in SLICE_METRICS]
            )
        ],
    )


def _metric_value(value: object) -> float:
    # TFMA returns {'doubleValue': x} (or boundedValue / arrayValue for some metrics).
    if isinstance(value, dict):
        for key in ("doubleValue", "value"):
            if key in value:
                return float(value[key])
        if "boundedValue" in value:
            return float(value["boundedValue"].get("value", np.nan))
        return float("nan")
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return float("nan")


def slice_metrics(
    frame: pd.DataFrame,
    slice_columns: Sequence[str] = ("category", "user_type"),
    label: str = "label",
    prediction: str = "prediction",
    output_path: str | Path | None = None,
) -> pd.DataFrame:
    """TFMA metrics overall and per value of each of ``slice_columns``.

    ``frame`` holds a binary ``label`` (0/1), a ``prediction`` in [0, 1] and the slice columns. Returns one
    row per slice: ``slice`` (column name, or ``overall``), ``value``, then the columns of
    :data:`SLICE_METRICS`, sorted by slice then value. TFMA's own output goes to ``output_path`` (a temporary
    directory when None).
    """
    missing = [c for c in (label, prediction, *slice_columns) if c not in frame.columns]
    if missing:
        raise KeyError(f"prediction frame lacks column(s) {missing}")
    if frame.empty:
        raise ValueError("prediction frame is empty: nothing to slice")
    data = pd.DataFrame(
        {
            label: frame[label].astype(np.float64).to_numpy(),
            prediction: frame[prediction].astype(np.float64).to_numpy(),
        }
    )
    for column in slice_columns:
        data[column] = frame[column].fillna(UNKNOWN).astype(str).to_numpy()

    import tensorflow_model_analysis as tfma

    config = _eval_config(label, prediction, slice_columns)
    with tempfile.TemporaryDirectory(prefix="recflow-tfma-") as tmp:
        result = tfma.analyze_raw_data(data, config, output_path=str(output_path or tmp))
    rows = []
    for slice_key, by_output in result.slicing_metrics:
        metrics = by_output.get("", {}).get("", {})
        if slice_key:
            column, value = slice_key[0]
        else:
            column, value = OVERALL, ""
        row: dict[str, object] = {"slice": str(column), "value": str(value)}
        for name in SLICE_METRICS.values():
            row[name] = _metric_value(metrics.get(name, np.nan))
        rows.append(row)
    table = pd.DataFrame(rows, columns=["slice", "value", *SLICE_METRICS.values()])
    table["example_count"] = table["example_count"].astype("int64")
    order = {OVERALL: 0, **{c: i + 1 for i, c in enumerate(slice_columns)}}
    table = table.sort_values(["slice", "value"], key=lambda s: s.map(order) if s.name == "slice" else s)
    return table.reset_index(drop=True)
