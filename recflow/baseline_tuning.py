"""Fair tuning of the baselines: every method gets the same small search budget on the validation split.

:func:`tune_baselines` fits each named baseline on ``train_events`` once per trial with hyper-parameters proposed
by Optuna's TPE sampler (seeded, so the same data and seed give the same trials and the same choice), scores
its top-k lists on ``validation_events`` with :mod:`recflow.evaluation.metrics` (the Evaluator's protocol:
ground truth per user, optionally excluding each user's training items) and keeps the best trial. Trial 0 of
every method is its default configuration (:data:`DEFAULT_PARAMS`), so tuning can only match or improve on the
defaults on the validation split. :func:`make_tuned` builds the recommender of a chosen configuration.

Search spaces (:data:`SEARCH_SPACES`; ``log`` = sampled log-uniformly):

* ``als``: factors in {16, 32, 64, 128}; regularization 0.01-100 (log); alpha 0.1-50 (log); 15 iterations.
* ``ease``: l2 1-5000 (log).
* ``item_knn``: neighbors 5-500 (integer, log).
* ``bpr``: factors in {16, 32, 64, 128}; learning_rate 0.005-0.2 (log); regularization 1e-4-0.1 (log).
* ``coview``: session_gap_minutes 5-1440 (log); decay 0.3-1.0; max_history in {5, 10, 20, 50}.

A configured trial-0 value outside the space is added to the choices (or stretches the range). A method
whose space has fewer distinct configurations than the budget (none here) would repeat some; the
budget counts trials, not distinct configurations, so every method still gets the same number of fits.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from recflow.baselines import make_baseline
from recflow.errors import ConfigError, DataError
from recflow.evaluation.metrics import aggregate, per_user_metrics, relevant_by_user, sampled_exclusions
from recflow.memory import release_freed_memory
from recflow.recommender import Recommender

log = logging.getLogger(__name__)

#: Hyper-parameters of trial 0 (the baselines' own defaults, as the Evaluator builds them).
DEFAULT_PARAMS: dict[str, dict[str, Any]] = {
    "als": {"factors": 32, "regularization": 30.0, "alpha": 1.0},
    "ease": {"l2": 200.0},
    "item_knn": {"neighbors": 50},
    "bpr": {"factors": 64, "learning_rate": 0.05, "regularization": 0.01},
    "coview": {"session_gap_minutes": 30.0, "decay": 0.8, "max_history": 20},
}

#: The search space of each tunable baseline: name -> (kind, arguments). Kinds: ``cat`` (choices),
#: ``logfloat`` / ``float`` (low, high), ``logint`` (low, high).
SEARCH_SPACES: dict[str, dict[str, tuple[str, tuple[Any, ...]]]] = {
    "als": {
        "factors": ("cat", (16, 32, 64, 128)),
        "regularization": ("logfloat", (0.01, 100.0)),
        "alpha": ("logfloat", (0.1, 50.0)),
    },
    "ease": {"l2": ("logfloat", (1.0, 5000.0))},
    "item_knn": {"neighbors": ("logint", (5, 500))},
    "bpr": {
        "factors": ("cat", (16, 32, 64, 128)),
        "learning_rate": ("logfloat", (0.005, 0.2)),
        "regularization": ("logfloat", (1e-4, 0.1)),
    },
    "coview": {
        "session_gap_minutes": ("logfloat", (5.0, 1440.0)),
        "decay": ("float", (0.3, 1.0)),
        "max_history": ("cat", (5, 10, 20, 50)),
    },
}
TUNABLE: tuple[str, ...] = tuple(SEARCH_SPACES)
#: Fixed hyper-parameters that are not searched (the same for every trial).
FIXED_PARAMS: dict[str, dict[str, Any]] = {"als": {"iterations": 15}, "bpr": {"iterations": 100}}
#: Random trials before TPE starts modelling the results (of the budget).
STARTUP_TRIALS = 4


@dataclass
class TuningResult:
    """One method's search: the best trial's parameters and score, and every trial (``{"params", "score"}``,
    in the order they ran; trial 0 is the default configuration)."""

    best_params: dict[str, Any]
    best_score: float
    trials: list[dict[str, Any]] = field(default_factory=list)
    metric: str = "ndcg@10"
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "best_params": self.best_params,
            "best_score": self.best_score,
            "metric": self.metric,
            "seconds": self.seconds,
            "trials": self.trials,
        }


def make_tuned(name: str, params: Mapping[str, Any], seed: int) -> Recommender:
    """The unfitted baseline ``name`` with tuned ``params`` (plus the fixed ones of :data:`FIXED_PARAMS`)."""
    if name not in SEARCH_SPACES:
        raise ConfigError(f"baseline {name!r} is not tunable; tunable: {list(TUNABLE)}")
    unknown = sorted(set(params) - set(SEARCH_SPACES[name]) - set(FIXED_PARAMS.get(name, {})))
    if unknown:
        raise ConfigError(f"{name}: {unknown} are not tuned parameters; tuned: {sorted(SEARCH_SPACES[name])}")
    return make_baseline(name, seed=seed, **{**FIXED_PARAMS.get(name, {}), **dict(params)})


def _suggest(trial: Any, space: Mapping[str, tuple[str, tuple[Any, ...]]]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for key, (kind, args) in space.items():
        if kind == "cat":
            params[key] = trial.suggest_categorical(key, list(args))
        elif kind == "logfloat":
            params[key] = trial.suggest_float(key, *args, log=True)
        elif kind == "float":
            params[key] = trial.suggest_float(key, *args)
        elif kind == "logint":
            params[key] = trial.suggest_int(key, *args, log=True)
        else:  # pragma: no cover - SEARCH_SPACES is fixed in this module
            raise ConfigError(f"unknown search-space kind {kind!r}")
    return params


def _space_with(
    space: Mapping[str, tuple[str, tuple[Any, ...]]], initial: Mapping[str, Any]
) -> dict[str, tuple[str, tuple[Any, ...]]]:
    """``space`` widened so that trial 0's ``initial`` values lie in it (a configured value outside the
    documented space is added to the choices, or stretches the range)."""
    out = dict(space)
    for key, value in initial.items():
        if key not in out:
            raise ConfigError(f"initial parameter {key!r} is not searched; searched: {sorted(space)}")
        kind, args = out[key]
        if kind == "cat":
            if value not in args:
                out[key] = (kind, tuple(sorted((*args, value))))
        else:
            out[key] = (kind, (min(args[0], value), max(args[1], value)))
    return out


def score_recommender(
    recommender: Recommender,
    users: Sequence[str],
    truth: Sequence[set[str]],
    k: int,
    exclude: Mapping[str, set[str]],
    metric: str,
) -> float:
    """Mean ``metric`` (e.g. ``ndcg@10``) of ``recommender``'s top-``k`` lists for ``users`` against ``truth``."""
    recs = [[str(i) for i in r] for r in recommender.recommend(list(users), k, exclude)]
    table = per_user_metrics(recs, list(truth), k, user_ids=list(users))
    if metric not in table.columns:
        raise ConfigError(f"tuning metric {metric!r} is not measured; choose from {list(table.columns)}")
    value = aggregate(table[[metric]])[metric]
    return float(value) if math.isfinite(value) else float("-inf")


def tune_baselines(
    train_events: pd.DataFrame,
    validation_events: pd.DataFrame,
    items: pd.DataFrame | None,
    names: Sequence[str] = ("als", "ease", "item_knn"),
    budget: int = 8,
    seed: int = 42,
    k: int = 10,
    exclude_train_items: bool = True,
    metric: str = "ndcg@10",
    max_users: int | None = None,
    initial_params: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, TuningResult]:
    """Tune each of ``names`` with ``budget`` trials: fit on ``train_events``, score ``metric`` on
    ``validation_events`` (at most ``max_users`` users, sampled with ``seed``), keep the best (the earliest
    trial on ties). Trial 0 of each method is ``initial_params[name]`` when given (e.g. the configured
    values), else :data:`DEFAULT_PARAMS`. Deterministic for a given seed. Raises DataError when the validation
    split has no user with a relevant item."""
    import optuna

    if budget < 1:
        raise ConfigError(f"tuning budget must be at least 1 trial, got {budget}")
    unknown = [n for n in names if n not in SEARCH_SPACES]
    if unknown:
        raise ConfigError(f"baseline(s) {unknown} are not tunable; tunable: {list(TUNABLE)}")
    truth_by_user = relevant_by_user(train_events, validation_events, exclude_train_items)
    if not truth_by_user:
        raise DataError(
            "validation events: no user has a relevant item (a click, add_to_cart, purchase or view not "
            "already seen in train); nothing to tune on"
        )
    users = sorted(truth_by_user)
    if max_users is not None and len(users) > max_users:
        rng = np.random.default_rng(seed)
        users = sorted(rng.choice(np.array(users, dtype=object), size=max_users, replace=False).tolist())
    truth = [truth_by_user[u] for u in users]
    del truth_by_user
    # the train items of the scored users only (a set per validation user grows with the log)
    exclude = sampled_exclusions(train_events, users) if exclude_train_items else {}

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    results: dict[str, TuningResult] = {}
    for name in names:
        start = time.perf_counter()
        sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(STARTUP_TRIALS, budget))
        study = optuna.create_study(direction="maximize", sampler=sampler)
        initial = dict((initial_params or {}).get(name, DEFAULT_PARAMS[name]))
        space = _space_with(SEARCH_SPACES[name], initial)
        study.enqueue_trial(initial)
        trials: list[dict[str, Any]] = []
        for _ in range(budget):
            trial = study.ask()
            params = _suggest(trial, space)
            model = make_tuned(name, params, seed)
            model.fit(train_events, items)  # type: ignore[attr-defined]
            score = score_recommender(model, users, truth, k, exclude, metric)
            study.tell(trial, score)
            del model
            release_freed_memory()  # each trial's fit is freed before the next
            trials.append({"params": params, "score": score})
            log.info("tuning %s trial %d: %s -> %s %.4f", name, len(trials) - 1, params, metric, score)
        best = max(range(len(trials)), key=lambda i: (trials[i]["score"], -i))
        results[name] = TuningResult(
            best_params=dict(trials[best]["params"]),
            best_score=float(trials[best]["score"]),
            trials=trials,
            metric=metric,
            seconds=time.perf_counter() - start,
        )
    return results
