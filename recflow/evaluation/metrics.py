"""Top-K ranking metrics of recommendation lists against held-out interactions.

Definitions (binary relevance; ``hits_i`` = 1 when the i-th recommended item, i = 1..k, is relevant):

* ``precision@k`` = sum(hits) / k  (a list shorter than k counts its missing slots as misses)
* ``recall@k``    = sum(hits) / |relevant|
* ``ndcg@k``      = DCG / IDCG, DCG = sum(hits_i / log2(i + 1)), IDCG = the DCG of min(|relevant|, k) hits
* ``mrr@k``       = 1 / rank of the first relevant item within the top k (0 when there is none)
* ``hit@k``       = 1 when any of the top k is relevant

Users with no relevant items get NaN (they cannot be scored); :func:`aggregate` skips them. Duplicate items in
a list count once (later copies are misses). Issue 4's beyond-accuracy metrics (diversity, novelty, popularity
bias) belong next to :func:`catalog_coverage` as further list-level functions.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from recflow.schema import POSITIVE_EVENT_TYPES

#: Columns of :func:`per_user_metrics` (before the ``@k`` suffix).
METRIC_NAMES: tuple[str, ...] = ("precision", "recall", "ndcg", "mrr", "hit")


def ground_truth(
    events: pd.DataFrame,
    exclude: Mapping[str, set[str]] | None = None,
) -> dict[str, set[str]]:
    """Relevant items per user in a held-out event log.

    A user's relevant items are those with a positive event (click, add_to_cart, purchase); a user without any
    positive event falls back to the items they viewed. Impressions and removals never make an item relevant.
    Items in ``exclude[user]`` (e.g. the user's training items) are dropped; users left with nothing are
    omitted.
    """
    missing = {"user_id", "item_id", "event_type"} - set(events.columns)
    if missing:
        raise KeyError(f"events lack column(s) {sorted(missing)}")
    ev = events[["user_id", "item_id", "event_type"]]
    positive = ev[ev["event_type"].isin(POSITIVE_EVENT_TYPES)]
    views = ev[(ev["event_type"] == "view") & ~ev["user_id"].isin(positive["user_id"].unique())]
    chosen = pd.concat([positive, views], ignore_index=True)[["user_id", "item_id"]].drop_duplicates()
    truth: dict[str, set[str]] = {}
    for user, items in chosen.groupby("user_id", sort=True)["item_id"]:
        relevant = set(items.astype(str))
        if exclude:
            relevant -= exclude.get(str(user), set())
        if relevant:
            truth[str(user)] = relevant
    return truth


def interacted_items(events: pd.DataFrame, users: Iterable[str] | None = None) -> dict[str, set[str]]:
    """Items each user interacted with (any event except impressions): what evaluation excludes from their
    lists. ``users`` limits the result to those users (the same sets, without building one per user of a
    large log)."""
    from recflow.training.columnar import object_values

    ev = events.loc[events["event_type"] != "impression", ["user_id", "item_id"]]
    if users is not None:
        ev = ev[str_isin(ev["user_id"], pd.Index(list(users)).astype(str))]
    ev = ev.drop_duplicates()
    # a categorical column (the Evaluator's compact train) as objects, only for the rows kept: converting a
    # group's categorical with astype(str) converts every category of the catalog, once per user
    ev = pd.DataFrame({c: object_values(ev[c]) for c in ("user_id", "item_id")})
    return {str(u): set(items.astype(str)) for u, items in ev.groupby("user_id", sort=False)["item_id"]}


def str_isin(values: pd.Series, wanted: pd.Index) -> np.ndarray:
    """``values.astype(str).isin(wanted)`` as a boolean array; a categorical ``values`` is tested once per
    category (a null as ``"None"``), without an object array of its rows."""
    if isinstance(values.dtype, pd.CategoricalDtype):
        per_category = pd.Index(values.cat.categories.astype(str)).isin(wanted)
        table = np.append(per_category, "None" in wanted)  # code -1 (null): the last slot
        return np.asarray(table[values.cat.codes.to_numpy()], dtype=bool)
    return np.asarray(values.astype(str).isin(wanted), dtype=bool)


#: Held-out users whose train items are gathered at a time by :func:`relevant_by_user`.
RELEVANT_USERS_PER_CHUNK = 20_000


def relevant_by_user(
    train: pd.DataFrame, held_out: pd.DataFrame, exclude_train_items: bool,
    users_per_chunk: int = RELEVANT_USERS_PER_CHUNK,
) -> dict[str, set[str]]:
    """``ground_truth(held_out, interacted_items(train, held-out users) if exclude_train_items else None)``,
    the same dict, with the train-item sets built for ``users_per_chunk`` held-out users at a time and dropped
    after their relevant items are known: only the relevant items are kept, never a train-item set for every
    held-out user (which grows with the log). The caller builds the exclusions of the users it samples."""
    if not exclude_train_items:
        return ground_truth(held_out, None)
    if users_per_chunk < 1:
        raise ValueError(f"users_per_chunk must be at least 1, got {users_per_chunk}")
    held_users = pd.unique(held_out["user_id"].to_numpy())
    seen = train.loc[train["event_type"] != "impression", ["user_id", "item_id", "event_type"]]
    seen = seen[str_isin(seen["user_id"], pd.Index(held_users).astype(str))]
    truth: dict[str, set[str]] = {}
    for start in range(0, len(held_users), users_per_chunk):
        chunk = held_users[start:start + users_per_chunk]
        part = held_out[held_out["user_id"].isin(chunk)]
        truth.update(ground_truth(part, interacted_items(seen, users=[str(u) for u in chunk])))
    return dict(sorted(truth.items()))


def sampled_exclusions(train: pd.DataFrame, users: Sequence[str]) -> dict[str, set[str]]:
    """``{user: train items}`` (:func:`interacted_items`) of ``users`` that have train events, in ``users``'
    order."""
    found = interacted_items(train, users=users)
    return {u: found[u] for u in map(str, users) if u in found}


def hit_matrix(recs: Sequence[Sequence[str]], truth: Sequence[set[str]], k: int) -> np.ndarray:
    """A (users x k) boolean matrix: whether each of a user's top-k recommended items is relevant."""
    if len(recs) != len(truth):
        raise ValueError(f"{len(recs)} recommendation lists but {len(truth)} ground-truth sets")
    hits = np.zeros((len(recs), k), dtype=bool)
    for row, (items, relevant) in enumerate(zip(recs, truth, strict=True)):
        seen: set[str] = set()
        for col, item in enumerate(items[:k]):
            if item in relevant and item not in seen:
                hits[row, col] = True
            seen.add(item)
    return hits


def per_user_metrics(
    recs: Sequence[Sequence[str]],
    truth: Sequence[set[str]],
    k: int,
    user_ids: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Precision, recall, NDCG, MRR and hit rate at ``k`` for each user (one row per user, columns
    ``name@k``).

    ``recs[i]`` is user i's ranked list (best first) and ``truth[i]`` their relevant items. The result is
    indexed by ``user_ids`` when given (so two methods' results align for paired tests), else by position.
    """
    if k <= 0:
        raise ValueError(f"k must be positive, got {k}")
    hits = hit_matrix(recs, truth, k)
    n_relevant = np.fromiter((len(t) for t in truth), dtype=np.float64, count=len(truth))
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    ideal_dcg = np.concatenate([[0.0], np.cumsum(discounts)])  # ideal_dcg[m] = DCG of m hits at the top
    n_hits = hits.sum(axis=1).astype(np.float64)
    dcg = hits @ discounts
    first = np.where(hits.any(axis=1), hits.argmax(axis=1) + 1, 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        idcg = ideal_dcg[np.minimum(n_relevant, k).astype(int)]
        scored = n_relevant > 0
        out = {
            f"precision@{k}": np.where(scored, n_hits / k, np.nan),
            f"recall@{k}": np.where(scored, n_hits / n_relevant, np.nan),
            f"ndcg@{k}": np.where(scored, dcg / idcg, np.nan),
            f"mrr@{k}": np.where(scored, np.where(first > 0, 1.0 / np.maximum(first, 1), 0.0), np.nan),
            f"hit@{k}": np.where(scored, (n_hits > 0).astype(np.float64), np.nan),
        }
    index = pd.Index([str(u) for u in user_ids], name="user_id") if user_ids is not None else None
    if index is not None and len(index) != len(recs):
        raise ValueError(f"{len(index)} user ids but {len(recs)} recommendation lists")
    return pd.DataFrame(out, index=index)


def aggregate(per_user: pd.DataFrame) -> dict[str, float]:
    """Mean of each per-user metric over the users that could be scored, plus ``users`` (how many)."""
    scored = per_user.dropna(how="all")
    result = {
        str(col): float(scored[col].mean()) if len(scored) else float("nan") for col in per_user.columns
    }
    result["users"] = float(len(scored))
    return result


#: Confidence level of the intervals reported beside every ranking metric.
CI_LEVEL = 0.95


def confidence_intervals(per_user: pd.DataFrame, level: float = CI_LEVEL) -> dict[str, tuple[float, float]]:
    """A ``level`` confidence interval ``(low, high)`` of each per-user metric's mean over the scored users.

    The normal (Student t) approximation of the mean: ``mean +- t_{(1+level)/2, n-1} * sd / sqrt(n)``, clipped
    to the metrics' range [0, 1]. The per-user values are bounded and the users independent, so with the
    hundreds to thousands of users an evaluation has the mean is close to normal (the paired tests of
    :mod:`recflow.evaluation.significance` rest on the same approximation); it is exact arithmetic, no
    resampling, so it needs no seed and costs one pass. Fewer than two users give (nan, nan).
    """
    from scipy import stats

    scored = per_user.dropna(how="all")
    out: dict[str, tuple[float, float]] = {}
    for col in per_user.columns:
        values = scored[col].dropna().to_numpy(dtype=float)
        n = len(values)
        if n < 2:
            out[str(col)] = (float("nan"), float("nan"))
            continue
        mean = float(values.mean())
        half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * float(values.std(ddof=1)) / np.sqrt(n)
        out[str(col)] = (max(0.0, mean - half), min(1.0, mean + half))
    return out


def catalog_coverage(recs: Iterable[Sequence[str]], catalog: Iterable[str]) -> float:
    """Share of the catalog that appears in at least one recommendation list (items outside it are
    ignored)."""
    catalog_set = {str(i) for i in catalog}
    if not catalog_set:
        return float("nan")
    shown = {str(item) for items in recs for item in items}
    return len(shown & catalog_set) / len(catalog_set)
