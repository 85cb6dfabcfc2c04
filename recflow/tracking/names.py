"""Names and values MLflow accepts, the tags recflow sets, and batched logging within MLflow's limits."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlflow import MlflowClient

#: Tag keys recflow sets (MLflow's own ``mlflow.*`` tags are used where they exist).
TAG_KIND = "recflow.kind"  # "pipeline" or "step"
TAG_PIPELINE = "recflow.pipeline"
TAG_STEP = "recflow.step"
TAG_CODE_DIRTY = "recflow.code_dirty"
TAG_ERROR = "recflow.error"
TAG_PARENT = "mlflow.parentRunId"
TAG_RUN_NAME = "mlflow.runName"
TAG_GIT_COMMIT = "mlflow.source.git.commit"
TAG_BLESSED = "recflow.blessed"  # "true" / "false", on the pipeline run and the evaluator's step run
TAG_GATE_OVERRIDES = "recflow.gate_overrides"  # "; "-joined gate settings that differ from the defaults
TAG_FAILED_CHECKS = "recflow.failed_checks"  # "; "-joined reasons a candidate was not blessed
TAG_PUSHED_KIND = "recflow.pushed_kind"  # "candidate" or "baseline:<name>" (what the Pusher pushed)
EVALUATION_ARTIFACTS = ("report.html", "blessing.json", "metrics.json")

STEP_SECONDS = "step_seconds"

#: How characters MLflow rejects in metric/param names are written instead. Applied in this order; any other
#: character outside ``[A-Za-z0-9_\-. /]`` becomes ``_``. So ``ndcg@10`` -> ``ndcg_at_10``,
#: ``hit_rate%`` -> ``hit_rate_pct``, ``slice:category=shoes`` -> ``slice_category_eq_shoes``.
NAME_REPLACEMENTS: tuple[tuple[str, str], ...] = (
    ("@", "_at_"),
    ("%", "_pct"),
    ("=", "_eq_"),
    ("+", "_plus_"),
)
_DISALLOWED = re.compile(r"[^A-Za-z0-9_\-. /]")


def metric_name(name: str) -> str:
    """The MLflow-safe form of a metric or param name (deterministic mapping: NAME_REPLACEMENTS)."""
    out = str(name)
    for old, new in NAME_REPLACEMENTS:
        out = out.replace(old, new)
    out = _DISALLOWED.sub("_", out)
    from mlflow.utils.validation import MAX_ENTITY_KEY_LENGTH

    return out[:MAX_ENTITY_KEY_LENGTH]


def sanitize_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """Map names with :func:`metric_name` and values to float; raise ValueError on clashes or non-numbers."""
    out: dict[str, float] = {}
    origin: dict[str, str] = {}
    for key, value in metrics.items():
        name = metric_name(key)
        if name in origin and origin[name] != key:
            raise ValueError(f"metric names {origin[name]!r} and {key!r} both map to {name!r}; rename one")
        if isinstance(value, bool):
            value = float(value)
        try:
            out[name] = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"metric {key!r}: value {value!r} is not a number") from None
        origin[name] = key
    return out


def flatten_config(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{'a': {'b': 1}}`` -> ``{'a.b': 1}``; lists stay values."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten_config(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def param_value(value: Any) -> str:
    """A param value as text (strings as-is, others as JSON), cut to MLflow's limit with a visible marker."""
    from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

    text = value if isinstance(value, str) else json.dumps(value, default=str, sort_keys=True)
    if len(text) > MAX_PARAM_VAL_LENGTH:
        marker = "...[truncated; full value in config/config.yaml]"
        text = text[: MAX_PARAM_VAL_LENGTH - len(marker)] + marker
    return text


def log_batch(
    client: MlflowClient,
    run_id: str,
    params: Mapping[str, str] | None = None,
    metrics: Mapping[str, float] | None = None,
    tags: Mapping[str, str] | None = None,
    step: int = 0,
) -> None:
    """Log in chunks within MLflow's per-request limits (100 params/tags, 1000 metrics)."""
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.utils.validation import MAX_METRICS_PER_BATCH, MAX_PARAMS_TAGS_PER_BATCH

    now = int(time.time() * 1000)
    p = [Param(metric_name(k), v) for k, v in (params or {}).items()]
    t = [RunTag(k, v) for k, v in (tags or {}).items()]
    m = [Metric(k, v, now, step) for k, v in (metrics or {}).items()]
    for i in range(0, len(p), MAX_PARAMS_TAGS_PER_BATCH):
        client.log_batch(run_id, params=p[i : i + MAX_PARAMS_TAGS_PER_BATCH])
    for i in range(0, len(t), MAX_PARAMS_TAGS_PER_BATCH):
        client.log_batch(run_id, tags=t[i : i + MAX_PARAMS_TAGS_PER_BATCH])
    for i in range(0, len(m), MAX_METRICS_PER_BATCH):
        client.log_batch(run_id, metrics=m[i : i + MAX_METRICS_PER_BATCH])


_log_batch = log_batch  # the name this module's callers used before the split
