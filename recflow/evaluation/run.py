"""The Evaluator step: the trained TFRS model and TF-Agents policy against baselines and the champion.

:func:`run_evaluator` ties the pieces together for the pipeline: ranking metrics of the retrieval model beside
the baselines (and the current champion, with paired significance tests), off-policy estimates of the policy's
click and conversion rate on the held-out logged feedback, TFMA per-slice metrics of the ranking model, the
blessing, and the report. Each optional part degrades to a note when the log cannot support it (no
impressions -> no ranking model and no off-policy estimate), so an ids-only log still evaluates and pushes.
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from recflow.errors import DataError
from recflow.evaluation.config import EvaluatorConfig
from recflow.evaluation.evaluator import EvaluationResult, evaluate_recommenders
from recflow.evaluation.report import write_report
from recflow.examplegen import has_split, read_split, split_path
from recflow.memory import release_freed_memory
from recflow.policy.config import PolicyConfig

if TYPE_CHECKING:
    from recflow.policy.logged_data import BanditData

log = logging.getLogger(__name__)

#: Test examples scored by the ranking model for the TFMA slices (sampled with the evaluator's seed).
MAX_SLICE_EXAMPLES = 20_000


@dataclass
class EvaluatorRun:
    """What :func:`run_evaluator` produced."""

    result: EvaluationResult
    report_path: Path
    blessed: bool
    reasons: list[str]
    metrics: dict[str, float]
    #: The run's best servable baseline, written to ``out_dir/fallback_baseline`` for the Pusher (only when the
    #: candidate is not blessed and a fallback was asked for); see :mod:`recflow.servable_baseline`.
    fallback: dict[str, Any] | None = None


def sample_requests(data: BanditData, n_items: int, max_pairs: int | None,
                    seed: int) -> tuple[BanditData, str | None]:
    """``data`` itself when its decisions x ``n_items`` fit ``max_pairs`` (None: always), else the decisions of a
    seeded random sample of whole logged requests (a slot's target probability depends on the slots above it)
    holding at most ``max_pairs // n_items`` decisions (at least one request), with a note saying so."""
    n = len(data)
    if max_pairs is None or n * n_items <= max_pairs:
        return data, None
    budget = max(1, max_pairs // n_items)
    request_ids = data.request_ids.astype(str)
    requests, sizes = np.unique(request_ids, return_counts=True)
    order = np.random.default_rng(seed).permutation(len(requests))
    taken = max(1, int(np.searchsorted(np.cumsum(sizes[order]), budget, side="right")))
    index = np.flatnonzero(np.isin(request_ids, requests[order[:taken]]))
    note = (f"off-policy estimates on a seeded sample of {taken:,} of {len(requests):,} logged requests "
            f"({len(index):,} of {n:,} decisions): scoring every decision against the {n_items:,}-item catalog "
            f"is {n * n_items:,} pairs, above evaluator.ope_max_scored_pairs {max_pairs:,}")
    return data.subset(index), note


def sample_request_users(split_path: Path, n_items: int, max_pairs: int | None, seed: int,
                         ) -> tuple[pd.DataFrame | None, np.ndarray | None, str | None]:
    """Before any decision is built: ``(events, request ids, note)`` of a seeded random sample of whole logged
    requests of the split at ``split_path`` holding at most ``max_pairs // n_items`` impressions (at least one
    request), the same requests :func:`sample_requests` draws from the loaded decisions when every impression has
    an embedding; ``events`` are all the events of those requests' users (each sampled impression keeps its
    feedback, attributed per user, and the user's point-in-time state). ``(None, None, None)`` when every
    decision x ``n_items`` fits ``max_pairs`` (None: always), or when some impression lacks a request id or a
    logged propensity (the whole log is then needed: ids are made up, propensities estimated from it).

    Only ``event_type``, ``user_id``, ``request_id`` and ``propensity`` are read to choose, then only the chosen
    users' rows, so the memory is that of the sample, not of the split."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    none: tuple[None, None, None] = (None, None, None)
    if max_pairs is None:
        return none
    files = [split_path] if split_path.is_file() else sorted(split_path.glob("*.parquet"))
    names = set(pq.read_schema(files[0]).names) if files else set()
    needed = {"event_type", "user_id", "timestamp", "item_id", "request_id", "propensity"}
    if not files or not needed <= names:
        return none  # the whole-split path says what is missing or estimates what is not logged
    wanted = ["event_type", "user_id", "request_id", "propensity"]
    table = pa.concat_tables([pq.read_table(f, columns=wanted) for f in files])
    table = table.filter(pc.equal(table["event_type"], "impression"))
    n = table.num_rows
    if n * n_items <= max_pairs:
        return none
    prop = table["propensity"]
    if table["request_id"].null_count or prop.null_count or not pc.all(
            pc.and_(pc.greater(prop, 0.0), pc.less_equal(prop, 1.0))).as_py():
        return none
    # the distinct requests (sorted, with their sizes) from Arrow's dictionary encoding: a Python string per
    # request, not per impression
    encoded = pc.dictionary_encode(table["request_id"].cast(pa.string()).combine_chunks())
    codes = encoded.indices.to_numpy(zero_copy_only=False)
    distinct = np.asarray(encoded.dictionary.to_pylist(), dtype=object).astype(str)
    by_id = np.argsort(distinct, kind="stable")
    requests, sizes = distinct[by_id], np.bincount(codes, minlength=len(distinct))[by_id]
    budget = max(1, max_pairs // n_items)
    order = np.random.default_rng(seed).permutation(len(requests))
    taken = max(1, int(np.searchsorted(np.cumsum(sizes[order]), budget, side="right")))
    chosen = requests[order[:taken]]
    in_chosen = pa.array(np.isin(codes, by_id[order[:taken]]))
    users = sorted(set(table["user_id"].cast(pa.string()).filter(in_chosen).to_pylist()))
    del table, prop, encoded, codes, in_chosen
    parts = [pq.read_table(f, filters=[("user_id", "in", users)]) for f in files]
    frame = pa.concat_tables(parts, promote_options="default").to_pandas()
    keys = [c for c in ("timestamp", "event_id") if c in frame.columns]
    frame = frame.sort_values(keys, kind="stable").reset_index(drop=True)
    from recflow.memory import release_arrow_memory

    release_arrow_memory()
    decisions = int(sizes[order[:taken]].sum())
    note = (f"off-policy estimates on a seeded sample of {taken:,} of {len(requests):,} logged requests "
            f"({decisions:,} of {n:,} decisions; only their {len(users):,} users' events loaded): scoring every "
            f"decision against the {n_items:,}-item catalog is {n * n_items:,} pairs, above "
            f"evaluator.ope_max_scored_pairs {max_pairs:,}")
    return frame, chosen, note


def off_policy_estimates(
    examples_dir: Path, model_dir: Path, policy_dir: Path, policy_config: PolicyConfig, split: str, seed: int,
    max_pairs: int | None = None,
) -> tuple[pd.DataFrame | None, str | None]:
    """IPS and SNIPS estimates of the policy's click and conversion rate on the held-out logged feedback.

    Returns ``(table, None)`` or ``(None, why not)`` when the log cannot support an estimate (no impressions).
    ``max_pairs``: at most this many (decision x catalog item) pairs are scored: a seeded sample of whole logged
    requests chosen before any decision is built (:func:`sample_request_users`), else (request ids or
    propensities not all logged) the same kind of sample drawn from the loaded decisions (:func:`sample_requests`).
    """
    try:
        return _off_policy_estimates(examples_dir, model_dir, policy_dir, policy_config, split, seed, max_pairs)
    finally:  # the scorer's and the decisions' freed memory back to the system (10M world: about 200 MB)
        release_freed_memory()


def _off_policy_estimates(
    examples_dir: Path, model_dir: Path, policy_dir: Path, policy_config: PolicyConfig, split: str, seed: int,
    max_pairs: int | None,
) -> tuple[pd.DataFrame | None, str | None]:
    from recflow.evaluation.off_policy import evaluate_policy_offline
    from recflow.policy.logged_data import load_bandit_data
    from recflow.policy.scorer import load_policy

    scorer = load_policy(policy_dir, seed=seed)
    split_file = examples_dir / f"{split}.parquet"
    sample, chosen, presampled = sample_request_users(split_file, len(scorer.item_ids), max_pairs, seed)
    try:
        if sample is None or chosen is None:
            data = load_bandit_data(split_file, model_dir, policy_config, layout=scorer.layout)
        else:  # only the sampled requests' users' events are turned into decisions, then their requests kept
            with tempfile.TemporaryDirectory(prefix="recflow-ope-") as tmp:
                sample_file = Path(tmp) / f"{split}.parquet"
                sample.to_parquet(sample_file, index=False)
                del sample
                data = load_bandit_data(sample_file, model_dir, policy_config, layout=scorer.layout)
            data = data.subset(np.flatnonzero(np.isin(data.request_ids.astype(str), chosen)))
    except DataError as exc:
        return None, f"no off-policy estimate: {exc}"
    if len(data) == 0:
        return None, "no off-policy estimate: the held-out split has no logged impressions"
    data, sampled = sample_requests(data, len(scorer.item_ids), max_pairs, seed)
    sampled = "; ".join(n for n in (presampled, sampled) if n) or None
    probs = scorer.logged_action_probabilities(data)
    estimates = evaluate_policy_offline(data, probs, seed=seed)
    rows = [
        {"estimate": name, "value": e.value, "ci_low": e.ci_low, "ci_high": e.ci_high, "n": e.n,
         "effective_sample_size": e.effective_sample_size}
        for name, e in estimates.items()
    ]
    note = "; ".join([*(getattr(data, "notes", []) or []), *([sampled] if sampled else [])]) or None
    return pd.DataFrame(rows), note


def users_in_split(examples_dir: Path, split: str, users: Any, batch_rows: int = 262_144) -> set[str]:
    """Which of ``users`` have an event in ``split`` of ``examples_dir``: the split's ``user_id`` column is read in
    batches of ``batch_rows``, so the memory is that of ``users`` and one batch, not of the split."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    path = split_path(examples_dir, split)
    if not has_split(examples_dir, split):
        raise DataError(f"{examples_dir}: no {split}.parquet (run ExampleGen first: recflow.examplegen)")
    wanted = pa.array([str(u) for u in users], pa.string())
    found: set[str] = set()
    for file in [path] if path.is_file() else sorted(path.glob("*.parquet")):
        for batch in pq.ParquetFile(file).iter_batches(batch_size=batch_rows, columns=["user_id"]):
            column = batch.column(0).cast(pa.string())
            found.update(wanted.filter(pc.is_in(wanted, value_set=column)).to_pylist())
            if len(found) == len(wanted):
                return found
    return found


def ranking_slices(
    examples_dir: Path, model_dir: Path, split: str, seed: int, recommender: Any = None,
    max_examples: int = MAX_SLICE_EXAMPLES,
) -> tuple[pd.DataFrame | None, str | None]:
    """TFMA per-slice metrics (by category, new vs returning user) of the ranking model's click predictions, on
    at most ``max_examples`` held-out (user, shown item) pairs (a sample with ``seed``, said in the note).

    ``recommender``: the model of ``model_dir`` when the caller has it loaded already (else it is loaded). Only
    the columns the slices need are read."""
    try:
        return _ranking_slices(examples_dir, model_dir, split, seed, recommender, max_examples)
    finally:  # the held-out split's and the examples' freed memory back to the system
        release_freed_memory()


def _ranking_slices(
    examples_dir: Path, model_dir: Path, split: str, seed: int, recommender: Any, max_examples: int,
) -> tuple[pd.DataFrame | None, str | None]:
    from recflow.evaluation.slices import ranking_examples, slice_metrics
    from recflow.models import load_recommender

    if recommender is None:
        recommender = load_recommender(model_dir)
    if not recommender.has_ranking:
        return None, "no ranking model (the log has no impressions), so no per-slice metrics"
    held_out = read_split(examples_dir, split, columns=["user_id", "item_id", "event_type"])
    items_path = examples_dir / "items.parquet"
    items = None
    if items_path.exists():
        import pyarrow.parquet as pq

        wanted = [c for c in ("item_id", "category") if c in pq.read_schema(items_path).names]
        items = pd.read_parquet(items_path, columns=wanted)
    frame = ranking_examples(held_out, items)
    del held_out
    from recflow.memory import release_arrow_memory

    release_arrow_memory()
    if frame.empty or frame["label"].nunique() < 2:
        return None, "per-slice metrics need shown items with and without clicks in the held-out split"
    note = None
    if len(frame) > max_examples:
        note = (f"TFMA slices on a seeded sample of {max_examples:,} of {len(frame):,} held-out (user, shown item) "
                "pairs (evaluator.max_slice_examples)")
        frame = frame.sample(max_examples, random_state=seed).reset_index(drop=True)
    # new vs returning only for the sampled pairs' users, the train split streamed (not one set of all its users)
    returning = users_in_split(examples_dir, "train", frame["user_id"].unique())
    frame["user_type"] = np.where(frame["user_id"].isin(returning), "returning", "new")
    frame["prediction"] = np.asarray(
        recommender.score(frame["user_id"].tolist(), frame["item_id"].tolist()), dtype=np.float64
    )
    return slice_metrics(frame), note


def flat_metrics(evaluation_dir: Path) -> dict[str, float]:
    """Every number of an evaluation as one flat dict, for MLflow: ``<method>.<metric>``, ``ope.<estimate>``,
    ``best_baseline.value`` and each tuned baseline's chosen ``tuning.<baseline>.<param>`` and
    ``tuning.<baseline>.eval_score``."""
    doc = json.loads((evaluation_dir / "metrics.json").read_text(encoding="utf-8"))
    out: dict[str, float] = {}
    for label, values in doc.get("methods", {}).items():
        for name, value in values.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                out[f"{label}.{name}"] = float(value)
    for row in doc.get("extra", {}).get("off_policy", []) or []:
        if isinstance(row, dict) and isinstance(row.get("value"), int | float):
            out[f"ope.{row['estimate']}"] = float(row["value"])
    best = doc.get("best_baseline") or {}
    if isinstance(best.get("value"), int | float):
        out["best_baseline.value"] = float(best["value"])
    for name, tuning in (doc.get("baseline_tuning") or {}).items():
        for param, value in (tuning.get("best_params") or {}).items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                out[f"tuning.{name}.{param}"] = float(value)
        if isinstance(tuning.get("best_score"), int | float):
            out[f"tuning.{name}.eval_score"] = float(tuning["best_score"])
    blessing = json.loads((evaluation_dir / "blessing.json").read_text(encoding="utf-8"))
    out["blessed"] = 1.0 if blessing.get("blessed") else 0.0
    return out


def run_evaluator(
    examples_dir: Path,
    model_dir: Path,
    policy_dir: Path,
    out_dir: Path,
    config: EvaluatorConfig,
    champion_dir: Path | None = None,
    policy_config: PolicyConfig | None = None,
    fallback: bool = False,
) -> EvaluatorRun:
    """Evaluate a trained bundle and write ``report.html``, ``metrics.json`` and ``blessing.json`` to ``out_dir``.

    ``champion_dir`` is the current champion's TFRS model directory (``None`` for the first model); the
    candidate is compared with it by paired t-test and Wilcoxon signed-rank test of per-user metrics. With
    ``fallback`` and a candidate that is not blessed, the run's best servable baseline is written to
    ``out_dir/fallback_baseline`` (:func:`write_baseline_fallback`) for the Pusher.
    """
    from recflow.models import load_recommender

    examples_dir, model_dir, policy_dir, out_dir = map(Path, (examples_dir, model_dir, policy_dir, out_dir))
    candidate = load_recommender(model_dir)
    champion = None
    notes: list[str] = []
    if champion_dir is not None:
        try:
            champion = load_recommender(Path(champion_dir))
            champion.name = f"champion ({champion.name})"
        except Exception as exc:  # noqa: BLE001 - an unreadable champion must not block evaluating the candidate
            notes.append(f"champion at {champion_dir} could not be loaded ({exc}); compared with baselines only")
    extra: dict[str, Any] = {}
    ope, note = off_policy_estimates(
        examples_dir, model_dir, policy_dir, policy_config or PolicyConfig(), config.split, config.seed,
        max_pairs=config.ope_max_scored_pairs,
    )
    if ope is not None:
        extra["off_policy"] = ope
    if note:
        notes.append(note)
    slices, note = ranking_slices(examples_dir, model_dir, config.split, config.seed, recommender=candidate,
                                  max_examples=config.max_slice_examples)
    if slices is not None:
        extra["slices"] = slices
    if note:
        notes.append(note)
    if notes:
        extra["notes"] = {f"note {i + 1}": n for i, n in enumerate(notes)}
    from recflow.index import read_index_report

    index_metrics = {k: float(v) for k, v in read_index_report(model_dir).items()
                     if k.startswith("index_recall@") and v is not None}
    result = evaluate_recommenders(examples_dir, candidate, config, champion=champion, extra=extra,
                                   candidate_metrics=index_metrics)
    report = write_report(out_dir, result)
    chosen = None
    if fallback and not result.blessing.blessed:
        chosen = write_baseline_fallback(out_dir, examples_dir, result, config)
    return EvaluatorRun(
        result=result,
        report_path=report,
        blessed=result.blessing.blessed,
        reasons=list(result.blessing.reasons),
        metrics=flat_metrics(out_dir),
        fallback=chosen,
    )


def write_baseline_fallback(
    out_dir: Path, examples_dir: Path, result: EvaluationResult, config: EvaluatorConfig
) -> dict[str, Any] | None:
    """Choose the run's best servable baseline (:func:`recflow.servable_baseline.choose_fallback`, by the primary
    metric on the evaluated users) and write it to ``out_dir/fallback_baseline``; returns the choice, or ``None``
    when the run evaluated no servable baseline."""
    from recflow.servable_baseline import choose_fallback, write_fallback

    primary = result.primary_metric
    baselines = {lbl: m for lbl, m in result.methods.items() if m.role == "baseline"}
    choice = choose_fallback({lbl: m.metrics for lbl, m in baselines.items()},
                             {lbl: m.name for lbl, m in baselines.items()}, primary,
                             float(result.methods["candidate"].metrics.get(primary, float("nan"))))
    if choice is None:
        log.warning("no servable baseline among evaluator.baselines: nothing to fall back to")
        return None
    tuned = (result.baseline_tuning.get(choice.label) or {}).get("best_params")
    write_fallback(out_dir, examples_dir, choice, config.model_dump(mode="json"), tuned)
    return choice.to_dict()
