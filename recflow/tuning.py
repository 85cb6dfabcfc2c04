"""Hyperparameter search for the TFRS trainer with Optuna: an optional pipeline step between Transform and the
trainer.

:func:`run_tuning` runs ``n_trials`` short trainings (``epochs`` each) of
:func:`recflow.training.tfrs_trainer.train_tfrs` on the transformed data, each with a learning rate, batch size,
embedding size and softmax temperature proposed by Optuna's TPE sampler (seeded, so the same data and seed give
the same trials), and maximises the trainer's own eval metric (default: factorized top-10 accuracy on the eval
split, the metric its early stopping watches). With a tracking run, every trial is a nested MLflow run (params,
metrics, wall time) under the tuner step's run. The best parameters are written to ``best_params.json``;
:func:`apply_best_params` and :func:`tuned_config_yaml` turn them into the trainer config of the full training.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from recflow.errors import ConfigError, DataError
from recflow.io import atomic_path
from recflow.training.tfrs_trainer import TrainerConfig

log = logging.getLogger(__name__)

BEST_PARAMS_NAME = "best_params.json"
#: Trainer fields the search may change (the names of TrainerConfig's fields).
TUNED_FIELDS: tuple[str, ...] = ("learning_rate", "batch_size", "embedding_dim", "temperature")


class TuningConfig(BaseModel):
    """The ``tuning`` section: hyperparameter search before the TFRS trainer (off by default)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(
        False,
        description="Add the tuner step between transform and tfrs_trainer (a compile-time switch: the DAG "
        "has the tuner task only when this is true).",
    )
    n_trials: int = Field(12, gt=0, description="Trainings the search runs.")
    epochs: int = Field(3, gt=0, description="Maximum epochs of each trial (the full training keeps trainer.epochs).")
    timeout_s: float | None = Field(
        None, gt=0, description="Stop starting new trials after this many seconds (null = run all n_trials)."
    )
    seed: int = Field(42, ge=0, description="Seed of Optuna's TPE sampler.")
    startup_trials: int = Field(
        5, ge=1, description="Trials sampled at random before TPE starts modelling the results."
    )
    metric: str = Field(
        "retrieval_eval_top10_accuracy",
        description="Trainer metric maximised (a key of TrainResult.metrics measured on the eval split).",
    )
    learning_rate: tuple[float, float] = Field(
        (0.005, 0.5), description="Range of the Adagrad learning rate (sampled log-uniformly)."
    )
    batch_sizes: tuple[int, ...] = Field((128, 256, 512, 1024), description="Batch sizes to choose from.")
    embedding_dims: tuple[int, ...] = Field((16, 32, 64), description="Embedding sizes to choose from.")
    temperature: tuple[float, float] = Field(
        (0.02, 1.0), description="Range of the softmax temperature (sampled log-uniformly)."
    )

    @model_validator(mode="after")
    def _valid_space(self) -> TuningConfig:
        for name in ("learning_rate", "temperature"):
            low, high = getattr(self, name)
            if not 0 < low <= high:
                raise ValueError(f"{name}: need 0 < low <= high, got [{low}, {high}]")
        for name in ("batch_sizes", "embedding_dims"):
            values = getattr(self, name)
            if not values or any(v <= 0 for v in values):
                raise ValueError(f"{name}: need at least one positive value, got {list(values)}")
        return self


@dataclass(frozen=True)
class TuningResult:
    """What the search found: the best trial's parameters and metric, every trial, and where it was written."""

    best_params: dict[str, Any]
    best_value: float
    metric: str
    trials: list[dict[str, Any]]
    best_params_path: Path
    seconds: float


def suggest_params(trial: Any, config: TuningConfig) -> dict[str, Any]:
    """The trainer parameters of one Optuna ``trial`` drawn from the search space of ``config``."""
    return {
        "learning_rate": trial.suggest_float("learning_rate", *config.learning_rate, log=True),
        "batch_size": trial.suggest_categorical("batch_size", list(config.batch_sizes)),
        "embedding_dim": trial.suggest_categorical("embedding_dim", list(config.embedding_dims)),
        "temperature": trial.suggest_float("temperature", *config.temperature, log=True),
    }


def trial_config(trainer: TrainerConfig, params: Mapping[str, Any], epochs: int | None = None) -> TrainerConfig:
    """``trainer`` with ``params`` (and, for a trial, ``epochs``) applied, validated as a TrainerConfig."""
    unknown = sorted(set(params) - set(TUNED_FIELDS))
    if unknown:
        raise ConfigError(f"tuned parameters {unknown} are not tunable; tunable: {list(TUNED_FIELDS)}")
    update: dict[str, Any] = dict(params)
    if epochs is not None:
        update["epochs"] = min(epochs, trainer.epochs)
    try:
        return TrainerConfig.model_validate({**trainer.model_dump(), **update})
    except ValidationError as exc:
        raise ConfigError(f"tuned trainer parameters {dict(params)} are invalid: {exc}") from None


@contextlib.contextmanager
def _trial_run(tracking_uri: str, parent_run_id: str, number: int) -> Iterator[Any]:
    if not tracking_uri or not parent_run_id:
        yield None
        return
    from recflow import tracking

    with tracking.component_run(tracking_uri, parent_run_id, f"trial-{number:03d}") as run:
        yield run


def run_tuning(
    examples_dir: Path,
    transform_dir: Path,
    out_dir: Path,
    trainer: TrainerConfig,
    config: TuningConfig,
    *,
    tracking_uri: str = "",
    parent_run_id: str = "",
) -> TuningResult:
    """Search the trainer's hyperparameters and write ``out_dir/best_params.json``; see the module docstring.

    ``parent_run_id`` is the MLflow run the trials nest under (the tuner step's run); empty = no tracking.
    Raises :class:`~recflow.errors.DataError` when the trainer does not report ``config.metric`` (e.g. the
    eval split has no positive interaction, so there is nothing to select on).
    """
    import optuna

    examples_dir, transform_dir, out_dir = Path(examples_dir), Path(transform_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    from recflow.training.tfrs_trainer import train_tfrs

    sampler = optuna.samplers.TPESampler(seed=config.seed, n_startup_trials=config.startup_trials)
    study = optuna.create_study(direction="maximize", sampler=sampler, study_name="recflow-tfrs")
    records: list[dict[str, Any]] = []
    scratch = Path(tempfile.mkdtemp(prefix=".trials.", dir=out_dir))

    def objective(trial: optuna.Trial) -> float:
        params = suggest_params(trial, config)
        cfg = trial_config(trainer, params, config.epochs)
        started = time.perf_counter()
        with _trial_run(tracking_uri, parent_run_id, trial.number) as run:
            if run is not None:
                run.log_params({**params, "epochs": cfg.epochs, "trial": trial.number})
            try:
                result = train_tfrs(examples_dir, transform_dir, scratch / f"trial-{trial.number}", cfg)
            finally:
                shutil.rmtree(scratch / f"trial-{trial.number}", ignore_errors=True)
            if config.metric not in result.metrics:
                raise DataError(
                    f"{examples_dir / 'eval.parquet'}: the trainer reported no {config.metric!r} "
                    f"(it reported {sorted(result.metrics)}); tuning needs positive interactions in the eval "
                    "split to compare trials"
                )
            value = float(result.metrics[config.metric])
            seconds = time.perf_counter() - started
            if run is not None:
                run.log_metrics({**result.metrics, "objective": value, "trial_seconds": seconds})
        records.append({"number": trial.number, "params": params, "value": value, "seconds": seconds,
                        "metrics": dict(result.metrics)})
        log.info("trial %d: %s -> %s = %.4f (%.1fs)", trial.number, params, config.metric, value, seconds)
        return value

    started = time.perf_counter()
    try:
        study.optimize(objective, n_trials=config.n_trials, timeout=config.timeout_s, catch=())
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    best = study.best_trial
    document = {
        "metric": config.metric,
        "best_value": best.value,
        "best_trial": best.number,
        "params": dict(best.params),
        "n_trials": len(records),
        "trial_epochs": config.epochs,
        "seed": config.seed,
        "trials": records,
    }
    path = out_dir / BEST_PARAMS_NAME
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    return TuningResult(dict(best.params), float(study.best_value), config.metric, records, path,
                        time.perf_counter() - started)


def read_best_params(path: Path) -> dict[str, Any]:
    """The ``params`` of a ``best_params.json`` (or of the one inside a directory), checked."""
    path = Path(path)
    if path.is_dir():
        path = path / BEST_PARAMS_NAME
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: no tuning result (run the tuner first)") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: not a readable tuning result: {exc}") from None
    params = doc.get("params") if isinstance(doc, dict) else None
    if not isinstance(params, dict):
        raise DataError(f"{path}: field 'params' is missing or not a mapping")
    return params


def apply_best_params(trainer: TrainerConfig, best_params: Path | Mapping[str, Any]) -> TrainerConfig:
    """The trainer config of the full training: ``trainer`` with the tuned parameters (a ``best_params.json``
    path or its ``params`` mapping) applied; epochs and everything else stay as configured."""
    params = read_best_params(best_params) if isinstance(best_params, str | Path) else dict(best_params)
    return trial_config(trainer, params)


def tuned_config_yaml(config_yaml: str, best_params: Path | Mapping[str, Any]) -> str:
    """The whole recflow config YAML with the ``trainer`` section overridden by the tuned parameters."""
    from recflow.config import RecflowConfig, dump_config

    data = yaml.safe_load(config_yaml) or {}
    try:
        config = RecflowConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"pipeline config: invalid ({exc})") from None
    tuned = apply_best_params(config.trainer, best_params)
    return dump_config(config.model_copy(update={"trainer": tuned}))
