"""The run's best baseline as a servable model: what a shop serves when the candidate loses and nothing better exists.

When the Evaluator does not bless the candidate and the model store has no champion yet (``release.
baseline_fallback``), a shop would otherwise serve nothing at all. The Evaluator then writes the best *servable*
baseline of the same run -- by the run's primary metric, on the same held-out users the candidate lost on -- as a
``fallback_baseline/`` directory inside its output, and the Pusher publishes it as a bundle of kind ``baseline``
(recorded as such in the store's manifest, MLflow and the run summary; serving labels its metrics with it).

The directory holds ``baseline.json`` (which baseline, built how, and why it was chosen) and the run's training
events (``train.parquet``, plus ``items.parquet`` when the run had a catalog). Loading refits the baseline with
exactly the Evaluator's construction (:func:`recflow.evaluation.evaluator.build_baselines`, the same tuned
hyper-parameters and seed), so the served baseline is the evaluated one by construction; count baselines fit in
seconds.

Servable baselines answer a user unseen at training time from the history in the request:
``popularity``, ``most_viewed``, ``most_recent``, ``coview`` (their own ``recommend_from_history``), and
``item_knn`` and ``ease`` (the request's history as the user's row of the interaction matrix). ALS, BPR and the
content baseline can only answer users seen at training time, so they are never chosen as the fallback (the
choice and the reason are recorded).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from recflow.errors import DataError
from recflow.examplegen import read_split
from recflow.io import staged_dir

#: The fallback's directory inside the Evaluator's output, and the bundle part the Pusher stores it under.
FALLBACK_DIR = "fallback_baseline"
BASELINE_PART = "baseline"
SPEC_FILE = "baseline.json"
TRAIN_FILE = "train.parquet"
ITEMS_FILE = "items.parquet"
SPEC_FORMAT = 1

#: Baselines that can answer a user unseen at training time from the request's history.
SERVABLE = ("popularity", "most_viewed", "most_recent", "coview", "item_knn", "ease")


@dataclass(frozen=True)
class FallbackChoice:
    """Which baseline a run would serve instead of its candidate, and why."""

    label: str
    name: str
    metric: str
    value: float
    candidate_value: float
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "name": self.name, "metric": self.metric, "value": self.value,
                "candidate_value": self.candidate_value, "reason": self.reason}


def choose_fallback(
    baseline_metrics: Mapping[str, Mapping[str, float]], names: Mapping[str, str], metric: str,
    candidate_value: float,
) -> FallbackChoice | None:
    """The servable baseline with the best ``metric`` (ties: the first in :data:`SERVABLE` order); ``None``
    when the run evaluated no servable baseline. ``reason`` names the overall best when it is not servable."""
    scored = {lbl: float(m[metric]) for lbl, m in baseline_metrics.items() if metric in m}
    servable = [lbl for lbl in SERVABLE if lbl in scored]
    if not servable:
        return None
    best = max(servable, key=lambda lbl: (scored[lbl], -servable.index(lbl)))
    overall = max(scored, key=lambda lbl: scored[lbl])
    reason = f"best servable baseline by {metric} ({scored[best]:.4f}; candidate {candidate_value:.4f})"
    if overall != best:
        reason += (f"; the run's best baseline {overall} ({scored[overall]:.4f}) cannot answer users unseen at "
                   "training time, so it is not served")
    return FallbackChoice(best, names.get(best, best), metric, scored[best], float(candidate_value), reason)


def write_fallback(
    out_dir: Path, examples_dir: Path, choice: FallbackChoice, evaluator_config: Mapping[str, Any],
    tuned_params: Mapping[str, Any] | None,
) -> Path:
    """Write ``out_dir/fallback_baseline/`` (spec + the run's training events) atomically; returns its path."""
    examples_dir = Path(examples_dir)
    final = Path(out_dir) / FALLBACK_DIR
    with staged_dir(final) as staging:
        # one file, either layout, streamed a record batch at a time (not the split as a pandas frame)
        from recflow.evaluation.evaluator import write_split_events

        write_split_events(examples_dir, "train", staging / TRAIN_FILE)
        files = [TRAIN_FILE]
        if (examples_dir / ITEMS_FILE).is_file():
            shutil.copyfile(examples_dir / ITEMS_FILE, staging / ITEMS_FILE)
            files.append(ITEMS_FILE)
        spec = {"format": SPEC_FORMAT, **choice.to_dict(), "evaluator": dict(evaluator_config),
                "tuned_params": dict(tuned_params) if tuned_params else None, "files": files}
        (staging / SPEC_FILE).write_text(json.dumps(spec, indent=2, sort_keys=True), encoding="utf-8")
    return final


def read_spec(directory: Path) -> dict[str, Any]:
    """``baseline.json`` of a fallback directory, checked; :class:`DataError` naming the file otherwise."""
    path = Path(directory) / SPEC_FILE
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path} does not exist: not a servable baseline") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path} cannot be read as JSON: {exc}") from None
    if not isinstance(spec, dict) or spec.get("format") != SPEC_FORMAT:
        raise DataError(f"{path}: expected a servable-baseline spec of format {SPEC_FORMAT}")
    for key in ("label", "metric", "value", "evaluator"):
        if key not in spec:
            raise DataError(f"{path}: field {key!r} is missing")
    if spec["label"] not in SERVABLE:
        raise DataError(f"{path}: label: {spec['label']!r} is not a servable baseline ({', '.join(SERVABLE)})")
    for name in spec.get("files", [TRAIN_FILE]):
        if not (Path(directory) / name).is_file():
            raise DataError(f"{Path(directory) / name} does not exist (listed in {path})")
    return spec


class ServableBaseline:
    """A fitted baseline that answers requests: ``recommend(user_id, k, history, exclude)``."""

    def __init__(self, spec: Mapping[str, Any], model: Any) -> None:
        self.spec = dict(spec)
        self.model = model
        self.label: str = spec["label"]

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> ServableBaseline:
        """Refit the baseline ``directory`` describes, exactly as the Evaluator built and fitted it."""
        from recflow.evaluation.config import EvaluatorConfig
        from recflow.evaluation.evaluator import build_baselines

        directory = Path(directory)
        spec = read_spec(directory)
        try:
            config = EvaluatorConfig.model_validate(spec["evaluator"])
        except ValueError as exc:
            raise DataError(f"{directory / SPEC_FILE}: evaluator: {exc}") from None
        label = spec["label"]
        tuned = {label: spec["tuned_params"]} if spec.get("tuned_params") else None
        if label not in config.baselines:
            config = config.model_copy(update={"baselines": [*config.baselines, label]})
        model = build_baselines(config, tuned)[label]
        train = read_split(directory, "train")
        items = pd.read_parquet(directory / ITEMS_FILE) if (directory / ITEMS_FILE).is_file() else None
        model.fit(train, items)  # type: ignore[attr-defined]
        return cls(spec, model)

    @property
    def catalog(self) -> list[str]:
        """Every item the baseline can recommend, most popular first."""
        popularity = getattr(self.model, "popularity", None) or self.model  # popularity itself has no fallback
        return [str(i) for i in popularity.ranking()]

    def recommend(
        self,
        user_id: str,
        k: int,
        history: Sequence[tuple[str, str, Any]] | None = None,
        exclude: Sequence[str] | None = None,
    ) -> list[str]:
        """Top-``k`` item ids for ``user_id``: from ``history`` ((item id, event type, timestamp or None),
        oldest first) when it is given and not empty, else from the user's training history (popularity for
        a user without one)."""
        banned = set(map(str, exclude or ()))
        if history:
            items = [str(h[0]) for h in history]
            types = [str(h[1]) for h in history]
            times = [h[2] for h in history]
            stamps = None if any(t is None for t in times) else times
            return list(self.model.recommend_from_history(items, k, banned, event_types=types,
                                                          timestamps=stamps))
        return list(self.model.recommend([str(user_id)], k, {str(user_id): banned})[0])
