"""Sending the training DAG to a Kubeflow Pipelines endpoint: one run, or a recurring (cron) run.

Both compile the same pipeline that ``recflow pipeline run`` executes locally and hand the package to the kfp
``Client``. Recurring runs are created with ``max_concurrency=1`` and ``no_catchup=True``: a slow run never
overlaps the next one, and an endpoint that was down does not start a flood of missed runs when it comes back
(kubeflow/pipelines #7261, #3055).
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from typing import Any

from pipelines.package import compiled_package
from recflow.config import RecflowConfig
from recflow.errors import ConfigError, RecflowError, ServiceUnavailable
from recflow.pipeline_config import PipelineConfig
from recflow.tuning import TuningConfig

_CRON_FIELD = re.compile(r"^[0-9A-Za-z*?/,\-LW#]+$")


@dataclass(frozen=True)
class SubmittedRun:
    """A run created on a Kubeflow Pipelines endpoint."""

    run_id: str
    url: str


@dataclass(frozen=True)
class ScheduledRun:
    """A recurring run created on a Kubeflow Pipelines endpoint."""

    recurring_run_id: str
    cron: str
    url: str


def kfp_cron(expression: str) -> str:
    """Normalise a cron expression to the 6-field form (seconds first) that Kubeflow's scheduler reads.

    A classic 5-field expression (``"0 3 * * *"``: 03:00 every day) gets ``0`` seconds prepended; 6 fields are
    kept as they are. Anything else is a :class:`ConfigError`.
    """
    fields = expression.split()
    if len(fields) not in (5, 6) or not all(_CRON_FIELD.match(f) for f in fields):
        raise ConfigError(
            f"cron expression {expression!r}: expected 5 fields (minute hour day month weekday, e.g. '0 3 * * *') "
            "or 6 with seconds first (e.g. '0 0 3 * * *')"
        )
    return " ".join(["0", *fields] if len(fields) == 5 else fields)


def _host_error(host: str, exc: BaseException) -> RecflowError:
    """Turn what the kfp client raises into an error that names the host and what to do."""
    status = getattr(exc, "status", None)
    if isinstance(status, int) and status in (401, 403):
        return ServiceUnavailable(f"Kubeflow Pipelines at {host} refused the request (HTTP {status})",
                                  hint="check the credentials (kfp context, cookies or an auth proxy)")
    if isinstance(status, int) and status:
        reason = getattr(exc, "body", None) or getattr(exc, "reason", "")
        return ServiceUnavailable(f"Kubeflow Pipelines at {host} answered HTTP {status}: {str(reason)[:500]}")
    return ServiceUnavailable(f"Kubeflow Pipelines at {host} cannot be reached ({type(exc).__name__})",
                              hint="check --host (e.g. http://localhost:8080 after "
                              "`kubectl port-forward -n kubeflow svc/ml-pipeline-ui 8080:80`)")


def _client_errors() -> tuple[type[BaseException], ...]:
    import kfp_server_api
    import requests
    import urllib3

    return (urllib3.exceptions.HTTPError, requests.exceptions.RequestException, kfp_server_api.ApiException,
            ConnectionError, TimeoutError)


def kfp_client(host: str) -> Any:
    """A kfp ``Client`` for ``host``, or :class:`ServiceUnavailable` when the endpoint does not answer."""
    import kfp

    if not re.match(r"^https?://", host):
        raise ConfigError(f"--host {host!r}: expected an http:// or https:// URL of the Kubeflow Pipelines API")
    try:
        with warnings.catch_warnings():  # "only works with Kubeflow Pipeline v2.0.0-beta.2 and later"
            warnings.simplefilter("ignore", FutureWarning)
            return kfp.Client(host=host.rstrip("/"))
    except _client_errors() as exc:
        raise _host_error(host, exc) from None


def _section(config: RecflowConfig | PipelineConfig) -> PipelineConfig:
    return config.pipeline if isinstance(config, RecflowConfig) else config


def submit_run(host: str, config: RecflowConfig | PipelineConfig, arguments: dict[str, Any],
               run_name: str | None = None, tuning: TuningConfig | None = None) -> SubmittedRun:
    """Compile the pipeline for ``config`` and start one run of it on ``host`` with ``arguments``."""
    client = kfp_client(host)
    full, config = config, _section(config)
    with compiled_package(full, tuning) as package:
        try:
            result = client.create_run_from_pipeline_package(
                str(package), arguments=arguments, run_name=run_name or config.name,
                experiment_name=config.experiment, pipeline_root=config.pipeline_root or None)
        except _client_errors() as exc:
            raise _host_error(host, exc) from None
    return SubmittedRun(run_id=result.run_id, url=f"{host.rstrip('/')}/#/runs/details/{result.run_id}")


def schedule_run(host: str, config: RecflowConfig | PipelineConfig, arguments: dict[str, Any], cron: str,
                 name: str | None = None, tuning: TuningConfig | None = None) -> ScheduledRun:
    """Compile the pipeline for ``config`` and create a recurring run on ``host`` (one at a time, no catch-up)."""
    expression = kfp_cron(cron)
    client = kfp_client(host)
    full, config = config, _section(config)
    with compiled_package(full, tuning) as package:
        try:
            experiment = client.create_experiment(name=config.experiment)
            job = client.create_recurring_run(
                experiment_id=experiment.experiment_id, job_name=name or f"{config.name}-scheduled",
                cron_expression=expression, max_concurrency=1, no_catchup=True, params=arguments,
                pipeline_package_path=str(package), pipeline_root=config.pipeline_root or None, enabled=True)
        except _client_errors() as exc:
            raise _host_error(host, exc) from None
    recurring_id = job.recurring_run_id
    return ScheduledRun(recurring_run_id=recurring_id, cron=expression,
                        url=f"{host.rstrip('/')}/#/recurringrun/details/{recurring_id}")
