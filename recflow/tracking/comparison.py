"""Finding, listing and comparing tracked runs (``recflow runs list|compare``)."""

from __future__ import annotations

import contextlib
import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Literal

from recflow.errors import DataError
from recflow.tracking.names import TAG_KIND, TAG_PARENT
from recflow.tracking.store import tracking_client

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Run

#: Metrics shown by ``recflow runs list`` (as logged on the pipeline run, names via :func:`metric_name`).
KEY_METRIC = "candidate.ndcg_at_10"
LIFT_REFERENCE = "popularity.ndcg_at_10"
BLESSED_METRIC = "blessed"


@dataclass(frozen=True)
class RunSummary:
    """One row of ``recflow runs list``."""

    run_id: str
    name: str
    status: str
    started: str
    seconds: float | None
    kind: str
    data_fingerprint: str
    code_version: str
    blessed: bool | None = None
    pushed_version: str = ""
    ndcg_at_10: float | None = None
    lift_pct: float | None = None


def _iso(ms: int | None) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S") if ms else ""


def _experiment_id(client: MlflowClient, tracking_uri: str, experiment: str) -> str:
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise DataError(
            f"MLflow experiment {experiment!r} does not exist at {tracking_uri} (no runs tracked yet?)"
        )
    return str(exp.experiment_id)


def summarize_run(run: Run) -> RunSummary:
    """The ``runs list`` row of one run: what MLflow and the pipeline logged on it.

    ``blessed`` is the metric ``blessed`` (None when the run never reached the Evaluator); ``pushed_version``
    the tag ``recflow.bundle_version`` set when the bundle was registered; ``ndcg_at_10`` the candidate's
    ``candidate.ndcg_at_10``; ``lift_pct`` the candidate's lift over the popularity baseline on that metric,
    ``100 * (candidate / popularity - 1)``, from the two logged values.
    """
    metrics, tags = run.data.metrics, run.data.tags
    seconds = (run.info.end_time - run.info.start_time) / 1000 if run.info.end_time else None
    blessed = metrics.get(BLESSED_METRIC)
    ndcg, ref = metrics.get(KEY_METRIC), metrics.get(LIFT_REFERENCE)
    lift = 100.0 * (ndcg / ref - 1.0) if ndcg is not None and ref else None
    return RunSummary(
        run.info.run_id,
        run.info.run_name or "",
        run.info.status,
        _iso(run.info.start_time),
        seconds,
        tags.get(TAG_KIND, ""),
        run.data.params.get("data.fingerprint", "")[:12],
        run.data.params.get("code.version", "")[:14],
        blessed=None if blessed is None else bool(blessed),
        pushed_version=tags.get("recflow.bundle_version", ""),
        ndcg_at_10=ndcg,
        lift_pct=lift,
    )


def list_runs(
    tracking_uri: str, experiment: str, *, include_steps: bool = False, limit: int = 50
) -> list[RunSummary]:
    """Recent runs of ``experiment``, newest first; pipeline runs only unless ``include_steps``."""
    client = tracking_client(tracking_uri)
    experiment_id = _experiment_id(client, tracking_uri, experiment)
    runs = client.search_runs(
        [experiment_id],
        order_by=["attributes.start_time DESC"],
        max_results=limit if include_steps else max(limit * 20, 1000),
    )
    out = [summarize_run(r) for r in runs if include_steps or TAG_PARENT not in r.data.tags]
    return out[:limit]


@dataclass(frozen=True)
class ComparisonRow:
    """One param or metric of two runs."""

    section: Literal["param", "metric"]
    key: str
    a: str | float | None
    b: str | float | None

    @property
    def differs(self) -> bool:
        return self.a != self.b

    @property
    def delta(self) -> float | None:
        if isinstance(self.a, float) and isinstance(self.b, float):
            return self.b - self.a
        return None

    @property
    def change_pct(self) -> float | None:
        d = self.delta
        if d is None or not isinstance(self.a, float) or self.a == 0 or math.isnan(self.a):
            return None
        return 100.0 * d / abs(self.a)


@dataclass(frozen=True)
class RunComparison:
    """Two runs side by side (``recflow runs compare``)."""

    run_a: str
    run_b: str
    name_a: str
    name_b: str
    rows: tuple[ComparisonRow, ...]

    @property
    def differences(self) -> tuple[ComparisonRow, ...]:
        return tuple(r for r in self.rows if r.differs)


def _all_runs(client: MlflowClient, experiment_ids: list[str]) -> list[Run]:
    """Every run of the experiments (all pages), newest first."""
    runs: list[Run] = []
    token: str | None = None
    while True:
        page = client.search_runs(
            experiment_ids, order_by=["attributes.start_time DESC"], max_results=1000, page_token=token
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def find_run(tracking_uri: str, ref: str, experiment: str | None = None) -> Run:
    """A run by full id, unique id prefix (as ``models list`` and ``runs list`` print them) or run name.

    A full id is looked up anywhere in the store; prefixes and names within ``experiment`` (every experiment
    when None). A name stands for the newest run of that name. Raises DataError when nothing matches, and
    when the reference is ambiguous (a prefix of several ids, or both a prefix and another run's name),
    listing the candidates.
    """
    from mlflow.exceptions import MlflowException

    ref = ref.strip()
    if not ref:
        raise DataError("empty run id", hint="`recflow runs list` shows the run ids and names")
    client = tracking_client(tracking_uri)
    if re.fullmatch(r"[0-9a-f]{32}", ref):
        with contextlib.suppress(MlflowException):
            return client.get_run(ref)
    if experiment:
        exp = client.get_experiment_by_name(experiment)
        experiment_ids = [] if exp is None else [str(exp.experiment_id)]
    else:
        experiment_ids = [str(e.experiment_id) for e in client.search_experiments()]
    runs = _all_runs(client, experiment_ids) if experiment_ids else []
    is_hex = re.fullmatch(r"[0-9a-fA-F]+", ref) is not None
    by_prefix = [r for r in runs if r.info.run_id.startswith(ref.lower())] if is_hex else []
    by_name = [r for r in runs if r.info.run_name == ref][:1]  # newest of that name
    candidates = {r.info.run_id: r for r in (*by_prefix, *by_name)}
    if len(candidates) == 1:
        return next(iter(candidates.values()))
    where = f"{tracking_uri}" + (f", experiment {experiment!r}" if experiment else "")
    if not candidates:
        raise DataError(
            f"run {ref!r} not found at {where} (by full id, id prefix or run name)",
            hint="`recflow runs list` shows the run ids and names",
        )
    listed = "\n".join(
        f"  {r.info.run_id}  {r.info.run_name or ''}  {_iso(r.info.start_time)}"
        for r in list(candidates.values())[:20]
    )
    more = f"\n  ... and {len(candidates) - 20} more" if len(candidates) > 20 else ""
    raise DataError(
        f"run {ref!r} is ambiguous at {where}: it matches {len(candidates)} runs\n{listed}{more}",
        hint="give more characters of the id (or the full id)",
    )


def compare_runs(tracking_uri: str, run_a: str, run_b: str, experiment: str | None = None) -> RunComparison:
    """All params and metrics (latest values) of two runs, keyed and sorted, for a side-by-side view."""
    a, b = find_run(tracking_uri, run_a, experiment), find_run(tracking_uri, run_b, experiment)
    rows: list[ComparisonRow] = []
    for key in sorted(set(a.data.params) | set(b.data.params)):
        rows.append(ComparisonRow("param", key, a.data.params.get(key), b.data.params.get(key)))
    for key in sorted(set(a.data.metrics) | set(b.data.metrics)):
        va, vb = a.data.metrics.get(key), b.data.metrics.get(key)
        rows.append(
            ComparisonRow("metric", key, None if va is None else float(va), None if vb is None else float(vb))
        )
    return RunComparison(
        a.info.run_id, b.info.run_id, a.info.run_name or "", b.info.run_name or "", tuple(rows)
    )
