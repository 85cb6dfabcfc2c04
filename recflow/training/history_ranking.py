"""Training of the history-aware ranking model (:mod:`recflow.models.history_ranking`) in the TFRS trainer.

Each logged impression becomes one row: the user's history strictly before the impression (the same event
types the sequence model reads, point in time: no row sees its own outcome or the future), encoded by the
trained sequence encoder exactly as serving encodes a request's history (gaps from the newest history event),
the impressed item, its slot, the request's context and the click label. Impressions of users with no earlier
history are left out: serving answers such users from the cold-start path, not with this model.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from recflow.errors import DataError
from recflow.io import epoch_seconds
from recflow.memory import release_freed_memory
from recflow.models.history_ranking import (
    DENSE_FEATURES,
    MAX_POSITIONS,
    N_DENSE,
    RankerInputs,
    _context_key,
    build_keras_ranker,
    click_loss,
    export_ranker,
    history_features,
    item_log_odds,
    numpy_click_logits,
    save_ranker,
    score_feature,
)
from recflow.policy.logged_data import DECISION_STATES_FILE
from recflow.training.caps import cap_report
from recflow.training.columnar import object_values, string_values, with_user_region

#: Smallest logged propensity used in the inverse-propensity weights (larger weights are clipped to 1/this).
MIN_PROPENSITY = 0.01


@dataclass
class RankerTraining:
    """What training the ranker produced and measured (``report`` goes into training.json)."""

    trained: bool
    report: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


#: The event columns the ranker reads besides the context columns (the label's, the slot's, the propensity's).
IMPRESSION_COLUMNS: tuple[str, ...] = ("event_type", "timestamp", "user_id", "item_id", "request_id", "position",
                                       "propensity")


def _impressions(examples_dir: Path, context_columns: Sequence[str]) -> pd.DataFrame:
    """Impressions of train and eval with their click label, slot, propensity, context and split.

    With request ids logged (every impression has one), a split at a time
    (:func:`_impressions_by_split`): the clicks' (user, item, request) keys of both splits are read first (a
    request can straddle the time cut: a click in eval still labels its impression in train), then each split's
    impressions alone, labelled and cut to the kept columns before the next split is read. Otherwise the
    time-window match of ``label_impressions`` on both splits' impressions and clicks at once
    (:func:`_impressions_whole`). Both give the rows and values of reading the whole splits with pandas
    (``tests/test_training_columnar.py``, ``tests/test_history_ranking_impressions.py``)."""
    by_split = _impressions_by_split(examples_dir, context_columns)
    return by_split if by_split is not None else _impressions_whole(examples_dir, context_columns)


#: :func:`_impressions_by_split` labels a split's impressions this many rows at a time (a row's label depends on
#: its own keys and the clicks only: the same labels as all rows at once, with key arrays of this many rows).
LABEL_CHUNK = 1 << 20
#: The columns of a click :func:`_request_labels` matches an impression on.
LABEL_KEYS: tuple[str, ...] = ("user_id", "item_id", "request_id")
#: :func:`_labels_from_clicks` packs the three key codes into one int64 below this product of their ranges, else
#: matches them as a pandas MultiIndex (the same labels).
ONE_KEY_LIMIT = 2.0 ** 62


def _impressions_by_split(examples_dir: Path, context_columns: Sequence[str],
                          rows_by_split: Mapping[str, np.ndarray] | None = None) -> pd.DataFrame | None:
    """:func:`_impressions_whole`'s frame when every impression has a request id, built a split at a time;
    None when some impression has none (or the splits log no request id): the caller then labels by time.
    ``rows_by_split``: only the impressions of these file rows of each split
    (:func:`recflow.training.columnar.read_split_events`' ``rows``): the rows of the whole frame that those are."""
    import gc

    from recflow.training.columnar import concat_categorical, read_split_events

    splits = RANKER_SPLITS
    clicks = concat_categorical([read_split_events(examples_dir, split, LABEL_KEYS, ("click",))
                                 for split in splits])
    columns = tuple(c for c in IMPRESSION_COLUMNS if c != "event_type") + tuple(context_columns)
    frames = []
    for split in splits:
        df = read_split_events(examples_dir, split, columns, ("impression",),
                               rows=None if rows_by_split is None else rows_by_split[split])
        if "request_id" not in df.columns or "request_id" not in clicks.columns or df["request_id"].isna().any():
            return None
        df["_split"] = pd.Categorical.from_codes(np.zeros(len(df), np.int8), categories=[split])
        df["clicked"] = np.concatenate([_labels_from_clicks(df.iloc[a:a + LABEL_CHUNK], clicks)
                                        for a in range(0, len(df), LABEL_CHUNK)] or [np.zeros(0, np.int64)])
        seconds = epoch_seconds(df["timestamp"])
        for column in IMPRESSION_ONLY_FOR_LABELS:  # in place: no copy of the other columns
            if column in df.columns:
                del df[column]
        df["_seconds"] = seconds
        frames.append(df)
        del df
        gc.collect()
    del clicks
    imp = concat_categorical(frames, consume=True)
    del frames
    had_region = "region" in imp.columns
    imp = with_user_region(imp, examples_dir, context_columns)
    return _in_impression_order(imp, "region" in imp.columns and not had_region)


#: The splits the history ranker learns from, in :func:`_impressions`' row order.
RANKER_SPLITS: tuple[str, ...] = ("train", "eval")


@dataclass
class ImpressionKeys:
    """Every impression of :func:`_impressions`, in its row order, by its keys alone -- ``frame``: ``user_id``
    (categorical), ``_split``, ``_seconds`` -- and how to read the whole rows of some of them (:meth:`rows`): the
    sampled rows' frame without the whole impressions table ever in memory (issue 17). ``file_rows``: each row's
    file row in its split (:func:`recflow.training.columnar.read_split_events`); ``whole``: the whole table
    instead, when the impressions are labelled by time window (no request ids: :func:`_impressions_whole`)."""

    examples_dir: Path
    context_columns: tuple[str, ...]
    frame: pd.DataFrame
    file_rows: np.ndarray | None = None
    whole: pd.DataFrame | None = None

    def rows(self, rows: np.ndarray) -> pd.DataFrame:
        """``_impressions(examples_dir, context_columns).iloc[rows]`` (ascending ``rows``), index 0..n-1: the
        same rows, columns and values; a categorical's categories are those of the rows read."""
        rows = np.asarray(rows, np.int64)
        if self.whole is not None:
            return self.whole.iloc[rows].reset_index(drop=True)
        assert self.file_rows is not None
        split = self.frame["_split"].to_numpy()[rows] if len(rows) else np.zeros(0, object)
        by_split = {name: self.file_rows[rows[split == name]] for name in RANKER_SPLITS}
        frame = _impressions_by_split(self.examples_dir, self.context_columns, by_split)
        if frame is None:  # impression_keys saw every request id: the splits changed under the read
            raise DataError(f"{self.examples_dir}: the impressions' request ids changed while they were read")
        return frame


def impression_keys(examples_dir: Path, context_columns: Sequence[str]) -> ImpressionKeys:
    """:class:`ImpressionKeys` of the train and eval impressions: their user id, time and file row only, a split
    at a time, when every impression has a request id (they are then labelled by request: :meth:`ImpressionKeys.rows`
    reads the sampled rows alone); otherwise :func:`_impressions_whole` (the labels need every impression's
    time window)."""
    from recflow.training.columnar import FILE_ROW, concat_categorical, has_missing, read_split_events

    if any(has_missing(examples_dir, split, "request_id", ("impression",)) for split in RANKER_SPLITS):
        whole = _impressions_whole(examples_dir, context_columns)
        return ImpressionKeys(Path(examples_dir), tuple(context_columns),
                              whole[["user_id", "_split", "_seconds"]], whole=whole)
    frames = []
    for split in RANKER_SPLITS:
        df = read_split_events(examples_dir, split, ("user_id", "timestamp"), ("impression",), with_rows=True)
        df["_split"] = pd.Categorical.from_codes(np.zeros(len(df), np.int8), categories=[split])
        df["_seconds"] = epoch_seconds(df.pop("timestamp"))
        frames.append(df)
    keys = concat_categorical(frames, consume=True)
    file_rows = keys.pop(FILE_ROW).to_numpy(np.int64)
    return ImpressionKeys(Path(examples_dir), tuple(context_columns), keys, file_rows=file_rows)


def _in_impression_order(imp: pd.DataFrame, merged_region: bool) -> pd.DataFrame:
    """The impressions' columns in the one order both paths of :func:`_impressions` give: the read columns, the
    split, the users file's region (when :func:`with_user_region` merged it), the label, the seconds; index
    0..n-1."""
    last = ("_split", "region", "clicked", "_seconds") if merged_region else ("_split", "clicked", "_seconds")
    for column in last:  # moved to the end in place: selecting the columns would copy the whole table
        if column in imp.columns:
            imp[column] = imp.pop(column)
    imp.index = pd.RangeIndex(len(imp))
    return imp


def _shared_codes(imp: pd.Series, clicks: pd.Series) -> tuple[np.ndarray, np.ndarray, int]:
    """Codes of one key column on the impressions' and the clicks' rows that are equal where the values are:
    0 a missing value, 1.. a value of the impressions, -1 a click value no impression has; and the codes' bound."""
    if isinstance(imp.dtype, pd.CategoricalDtype) and isinstance(clicks.dtype, pd.CategoricalDtype):
        at = np.asarray(imp.cat.categories.get_indexer(clicks.cat.categories), np.int64)
        c_codes = clicks.cat.codes.to_numpy().astype(np.int64)
        mapped = np.where(at[np.maximum(c_codes, 0)] >= 0, at[np.maximum(c_codes, 0)] + 1, -1) if len(at) else (
            np.full(len(c_codes), -1, np.int64))
        return (imp.cat.codes.to_numpy().astype(np.int64) + 1, np.where(c_codes < 0, 0, mapped),
                len(imp.cat.categories) + 1)
    both = pd.factorize(pd.concat([imp.astype(object), clicks.astype(object)], ignore_index=True),
                        use_na_sentinel=True)[0].astype(np.int64) + 1
    return both[:len(imp)], both[len(imp):], int(both.max(initial=0)) + 1


def _labels_from_clicks(imp: pd.DataFrame, clicks: pd.DataFrame) -> np.ndarray:
    """1 for each impression of ``imp`` whose (user, item, request) a click of ``clicks`` has, else 0: what
    :func:`_request_labels` gives the impressions of the two frames' rows together."""
    labels = np.zeros(len(imp), np.int64)
    if not len(imp) or not len(clicks):
        return labels
    imp_codes, click_codes, bounds = [], [], []
    for column in LABEL_KEYS:
        i, c, b = _shared_codes(imp[column], clicks[column])
        imp_codes.append(i)
        click_codes.append(c)
        bounds.append(b)
    usable = np.all([c >= 0 for c in click_codes], axis=0)  # a click with a value no impression has matches none
    click_codes = [c[usable] for c in click_codes]
    if not usable.any():
        return labels
    if float(np.prod(np.asarray(bounds, np.float64))) < ONE_KEY_LIMIT:  # one int64 key per row
        def key(parts: list[np.ndarray]) -> np.ndarray:
            out = parts[0].copy()
            for part, bound in zip(parts[1:], bounds[1:], strict=True):
                out *= bound
                out += part
            return out

        hit = np.isin(key(imp_codes), np.unique(key(click_codes)))
    else:
        clicked = pd.MultiIndex.from_arrays(click_codes).unique()
        hit = np.asarray(clicked.get_indexer(pd.MultiIndex.from_arrays(imp_codes)) >= 0)
    labels[hit] = 1
    return labels


def _impressions_whole(examples_dir: Path, context_columns: Sequence[str]) -> pd.DataFrame:
    """Impressions of train and eval with their click label, slot, propensity, context and split, both splits'
    impressions and clicks held at once.

    Each split is read a row group at a time, only impressions and the clicks that label them (label_impressions
    reads no other event) and only these columns, strings as integer codes
    (:func:`recflow.training.columnar.read_split_events`): the impressions' table holds no Python string per row
    (at 10 million events it would hold several GB of them). The rows and values are those of reading the whole
    splits with pandas (``tests/test_training_columnar.py``)."""
    from recflow.features.transform import label_impressions
    from recflow.training.columnar import concat_categorical, read_split_events

    frames = []
    for split in ("train", "eval"):
        df = read_split_events(examples_dir, split, IMPRESSION_COLUMNS + tuple(context_columns),
                               ("impression", "click"))
        df["_split"] = pd.Categorical(np.full(len(df), split, object), categories=[split])
        frames.append(df)
    events = concat_categorical(frames)
    del frames
    had_region = "region" in events.columns
    events = with_user_region(events, examples_dir, context_columns)
    merged_region = "region" in events.columns and not had_region
    by_request = bool("request_id" in events.columns
                      and events.loc[events["event_type"] == "impression", "request_id"].notna().all())
    if by_request:
        events["clicked"] = _request_labels(events)
    else:  # the time-window match of label_impressions (merge_asof) on plain columns
        plain = events[["event_type", "user_id", "item_id", "timestamp"]].astype(
            {c: object for c in ("event_type", "user_id", "item_id")})
        events["clicked"] = label_impressions(plain, by_request=False)
    # The impressions only, without the columns no later step reads (the label's request id, the type, the
    # timestamp once it is in seconds).
    keep = [c for c in events.columns if c not in IMPRESSION_ONLY_FOR_LABELS]
    imp = events.loc[(events["event_type"] == "impression").to_numpy(), keep]
    seconds = epoch_seconds(events.loc[(events["event_type"] == "impression").to_numpy(), "timestamp"])
    del events
    imp = imp.reset_index(drop=True)
    imp["_seconds"] = seconds
    return _in_impression_order(imp, merged_region)


#: Columns :func:`_impressions` reads to label the impressions, not kept in its result.
IMPRESSION_ONLY_FOR_LABELS: tuple[str, ...] = ("event_type", "request_id", "timestamp")


def _request_labels(events: pd.DataFrame) -> np.ndarray:
    """:func:`recflow.features.transform.label_impressions` with request ids logged, on integer codes: 1 when a
    click of the same user, item and request exists, 0 for other impressions, -1 for the other rows."""
    is_imp = (events["event_type"] == "impression").to_numpy()
    is_click = (events["event_type"] == "click").to_numpy()
    labels = np.where(is_imp, 0, -1).astype(np.int64)
    if not is_imp.any() or not is_click.any():
        return labels
    parts = []
    for column in ("user_id", "item_id", "request_id"):
        values = events[column]
        if isinstance(values.dtype, pd.CategoricalDtype):
            parts.append(values.cat.codes.to_numpy().astype(np.int64))
        else:
            parts.append(pd.factorize(values.astype(object), use_na_sentinel=True)[0].astype(np.int64))
    keys = pd.MultiIndex.from_arrays(parts)
    clicked = keys[is_click].unique()
    hit = is_imp & np.asarray(clicked.get_indexer(keys) >= 0) if len(clicked) else np.zeros(len(labels), bool)
    labels[hit] = 1
    return labels


#: Encoder batch of :func:`ranker_rows` and the (user, time) keys whose histories it builds at once (a multiple of
#: the batch, so the batches are the same whatever the chunk): the [keys, max_len] history arrays of every
#: impression are never held at once, only each key's state and its history's item rows (int32).
ENCODER_BATCH = 2048
RANKER_ROWS_CHUNK = ENCODER_BATCH * 64


def _encoded_chunks(seq_data: Any, encoder: Any, users: np.ndarray, times: np.ndarray, max_len: int, chunk: int
                    ) -> Iterator[tuple[int, np.ndarray, np.ndarray, np.ndarray]]:
    """Each (user, time) key's history strictly before the time, encoded, ``chunk`` keys at a time: yields
    (first key, states [k, D], history item rows [k, L] int32, whether each key has a history)."""
    from recflow.models.sequence import history_at

    if chunk % ENCODER_BATCH:
        raise ValueError(f"chunk must be a multiple of {ENCODER_BATCH}, got {chunk}")
    for c in range(0, len(users), chunk):
        hist = history_at(seq_data.user_rows, seq_data.item_rows, seq_data.type_codes, seq_data.seconds,
                          users[c:c + chunk], times[c:c + chunk], max_len, strictly_before=True)
        valid = hist["hist_items"] >= 0
        # Serving measures gaps from the newest event of the history it is given: do the same here.
        gaps = hist["hist_gaps"].astype(np.float64)
        newest = np.where(valid, gaps, np.inf).min(1)
        hist["hist_gaps"] = np.where(valid, gaps - np.where(np.isfinite(newest), newest, 0.0)[:, None], -1.0
                                     ).astype(np.float32)
        parts = []
        for s in range(0, len(valid), ENCODER_BATCH):
            part = {k: hist[k][s:s + ENCODER_BATCH] for k in ("hist_items", "hist_types", "hist_gaps")}
            parts.append(encoder(part, training=False).numpy())
        has_hist: np.ndarray = np.asarray(valid.any(axis=1), bool)
        yield c, np.concatenate(parts).astype(np.float32, copy=False), hist["hist_items"].astype(np.int32), has_hist


def _states_by_chunk(seq_data: Any, encoder: Any, users: np.ndarray, times: np.ndarray, max_len: int, dim: int,
                     chunk: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each (user, time) key's history strictly before the time, encoded: (states [K, D], history item rows
    [K, L] int32, whether it has a history), built ``chunk`` keys at a time (:func:`_encoded_chunks`)."""
    n = len(users)
    states = np.zeros((n, dim), np.float32)
    hist_rows = np.full((n, max_len), -1, np.int32)
    has_hist = np.zeros(n, bool)
    for c, part_states, part_rows, part_has in _encoded_chunks(seq_data, encoder, users, times, max_len, chunk):
        states[c:c + len(part_has)] = part_states
        hist_rows[c:c + len(part_has)] = part_rows
        has_hist[c:c + len(part_has)] = part_has
    return states, hist_rows, has_hist


@dataclass(frozen=True)
class RankerEvents:
    """The arrays of :class:`recflow.training.sequence_retrieval.SequenceData` the ranker reads (the histories'
    rows, codes and times), without its per-event id, type, weight and split arrays: ``row_user_ids[r]`` is the
    user id of user row ``r``."""

    user_rows: np.ndarray  # [N] int64
    item_rows: np.ndarray  # [N] int64
    type_codes: np.ndarray  # [N] int64
    seconds: np.ndarray  # [N] float64
    row_user_ids: np.ndarray  # [users] str


def ranker_events(data: Any) -> RankerEvents:
    """:class:`RankerEvents` of a :class:`recflow.training.sequence_retrieval.SequenceData` (the same arrays;
    user ids once per user row)."""
    rows = np.asarray(data.user_rows, np.int64)
    rows_seen, first = np.unique(rows, return_index=True)
    return _ranker_events(data, rows, rows_seen, np.asarray(data.user_ids)[first])


def ranker_events_of_codes(codes: Any) -> RankerEvents:
    """:func:`ranker_events` of :func:`recflow.training.sequence_retrieval.load_history_codes`' arrays (equal to
    it on ``load_events`` of the same splits: ``tests/test_history_ranking_impressions.py``)."""
    rows = np.asarray(codes.user_rows, np.int64)
    rows_seen = np.unique(rows)
    return _ranker_events(codes, rows, rows_seen, np.asarray(codes.user_ids)[rows_seen])


def _ranker_events(data: Any, rows: np.ndarray, rows_seen: np.ndarray, seen_ids: np.ndarray) -> RankerEvents:
    names = np.empty(int(rows_seen.max(initial=-1)) + 1, object)
    names[rows_seen] = seen_ids
    return RankerEvents(rows, np.asarray(data.item_rows, np.int64), np.asarray(data.type_codes, np.int64),
                        np.asarray(data.seconds, np.float64), names)


def _user_rows(imp: pd.DataFrame, seq_data: Any) -> np.ndarray:
    """Each impression's user row in ``seq_data`` (a ``SequenceData`` or :class:`RankerEvents`; -1: a user
    without history events), looked up once per distinct user id
    (:func:`recflow.training.columnar.category_codes`)."""
    from recflow.training.columnar import category_codes

    if isinstance(seq_data, RankerEvents):
        user_row_of = {str(u): r for r, u in enumerate(seq_data.row_user_ids) if u is not None}
        return category_codes(imp["user_id"], user_row_of, -1)
    rows = np.asarray(seq_data.user_rows, np.int64)
    first = np.unique(rows, return_index=True)[1]  # each user's row once (user ids and rows pair up one to one)
    user_row_of = {str(u): int(r) for u, r in zip(np.asarray(seq_data.user_ids)[first], rows[first], strict=True)}
    return category_codes(imp["user_id"], user_row_of, -1)


def distinct_keys(users: np.ndarray, times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct (user, time) keys in order of first appearance, as ``pd.DataFrame({u, t}).drop_duplicates()``
    finds them, on numpy arrays (a sort; no hash table of every row): (each key's first row, each row's key)."""
    n = len(users)
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    order = np.lexsort((times, users))  # stable: equal keys keep their row order, the first row first
    u, t = users[order], times[order]
    starts = np.ones(n, bool)
    starts[1:] = (u[1:] != u[:-1]) | (t[1:] != t[:-1])
    del u, t
    group = np.cumsum(starts) - 1  # each sorted row's key, numbered in sorted order
    first = order[starts]  # each key's first row, keys in sorted order
    by_appearance = np.argsort(first, kind="stable")
    key_of_group = np.empty(len(first), np.int64)
    key_of_group[by_appearance] = np.arange(len(first))
    position = np.empty(n, np.int64)
    position[order] = key_of_group[group]
    return first[by_appearance].astype(np.int64), position


#: :func:`distinct_keys_by_time` finds the keys of about this many rows at a time.
KEY_CHUNK = 1 << 20


def distinct_keys_by_time(users: np.ndarray, times: np.ndarray, chunk: int = KEY_CHUNK
                          ) -> tuple[np.ndarray, np.ndarray]:
    """:func:`distinct_keys`, a chunk of about ``chunk`` rows at a time when ``times`` never decrease (the
    impressions in log order): a key's rows then share one run of equal times, each chunk ends where a run
    begins, and the keys of one chunk all appear before those of the next, so the chunks' keys, numbered on,
    are the whole arrays'. The sort's temporaries are a chunk's, not every row's. Times that go back: the
    whole arrays at once."""
    n = len(users)
    if n <= chunk or bool((times[1:] < times[:-1]).any()):
        return distinct_keys(users, times)
    firsts, positions = [], []
    start, keys_before = 0, 0
    while start < n:
        end = min(start + chunk, n)
        if end < n:  # back to where the run of the time at ``end`` begins; past it when that is ``start``
            end = int(np.searchsorted(times, times[end], side="left"))
            if end <= start:
                end = int(np.searchsorted(times, times[start], side="right"))
        first, position = distinct_keys(users[start:end], times[start:end])
        firsts.append(first + start)
        positions.append(position + keys_before)
        keys_before += len(first)
        start = end
    return np.concatenate(firsts), np.concatenate(positions)


def ranker_rows(imp: pd.DataFrame, seq_data: Any, encoder: Any, all_vectors: np.ndarray, item_rows: Mapping[str, int],
                item_ids: Sequence[str], max_len: int, chunk: int = RANKER_ROWS_CHUNK
                ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Model inputs of the impressions whose user has an earlier history: (kept impression rows, arrays).

    Arrays: ``state`` [N, D], ``hist_rows`` [N, L] (int32), ``item`` (ranker item index), ``score`` (retrieval
    score). The histories are built and encoded ``chunk`` keys at a time (:func:`_states_by_chunk`; the same
    arrays whatever the chunk).
    """
    users = _user_rows(imp, seq_data)
    rows = np.flatnonzero(users >= 0)
    keys = pd.DataFrame({"u": users[rows], "t": imp["_seconds"].to_numpy()[rows]})
    uniq = keys.drop_duplicates().reset_index(drop=True)
    states, hist_rows, has_hist = _states_by_chunk(seq_data, encoder, uniq["u"].to_numpy(), uniq["t"].to_numpy(),
                                                   max_len, all_vectors.shape[1], chunk)
    position = pd.MultiIndex.from_frame(uniq).get_indexer(pd.MultiIndex.from_frame(keys))
    keep = has_hist[position]
    rows, position = rows[keep], position[keep]
    items = object_values(imp["item_id"].iloc[rows])
    enc_rows = np.array([item_rows.get(str(i), -1) for i in items], np.int64)
    state = states[position]
    score = np.einsum("nd,nd->n", state, all_vectors[np.maximum(enc_rows, 0)]) * (enc_rows >= 0)
    index = {str(i): k for k, i in enumerate(item_ids)}
    item = np.array([index.get(str(i), len(item_ids)) for i in items], np.int64)
    return rows, {"state": state, "hist_rows": hist_rows[position], "enc_rows": enc_rows,
                  "item": item, "score": score.astype(np.float64)}


@dataclass(frozen=True)
class ImpressionSample:
    """:func:`cap_impressions`' result: the rows kept (in their order) and how many train and eval rows there
    were (``train_of``, ``eval_of``); ``train_cap`` / ``eval_cap`` are the caps that bound (None: that split
    whole)."""

    rows: np.ndarray
    train_of: int
    eval_of: int
    train_cap: int | None
    eval_cap: int | None

    def report(self, split: str) -> dict[str, int] | None:
        """``{"kept", "of", "cap"}`` of ``split`` ("train" or "eval") when its cap bound, else None."""
        cap, of = (self.train_cap, self.train_of) if split == "train" else (self.eval_cap, self.eval_of)
        return cap_report(cap or 0, of, cap)  # a cap is set only where it bound: it kept cap rows


def cap_impressions(is_train: np.ndarray, cap: int | None, seed: int, eval_cap: int | None = None
                    ) -> ImpressionSample | None:
    """The rows kept when more than ``cap`` rows are train rows or more than ``eval_cap`` are eval rows: a seeded
    sample of ``cap`` train rows (``default_rng(seed)``) and of ``eval_cap`` eval rows
    (:func:`recflow.training.caps.cap_mask`, stream ``STREAM_HISTORY_EVAL``: the train sample is the same with
    or without an eval cap), the other split whole; rows in their order. None when neither cap binds."""
    from recflow.training.caps import STREAM_HISTORY_EVAL, cap_mask

    is_train = np.asarray(is_train, bool)
    train_rows = np.flatnonzero(is_train)
    keep = np.ones(len(is_train), bool)
    train_binds = cap is not None and len(train_rows) > cap
    if train_binds:
        keep[train_rows] = False
        keep[np.random.default_rng(seed).choice(train_rows, size=cap, replace=False)] = True
    evals = cap_mask(~is_train, eval_cap, seed, STREAM_HISTORY_EVAL)
    if not (train_binds or evals.binds):
        return None
    keep[~is_train] = evals.mask[~is_train]
    return ImpressionSample(np.flatnonzero(keep), len(train_rows), evals.of, cap if train_binds else None,
                            eval_cap if evals.binds else None)


def write_decision_states(out_dir: Path, user_ids: np.ndarray, seconds: np.ndarray, states: np.ndarray) -> None:
    """Each logged impression's point-in-time user state (user id, seconds, embedding; one row per distinct
    user and time) for the policy trainer, which would otherwise see each user's final state -- one that already
    holds the clicks the impressions led to (:data:`DECISION_STATES_FILE`)."""
    from recflow.io import atomic_path

    frame = pd.DataFrame({"user_id": user_ids, "seconds": seconds, "embedding": list(states.astype(np.float32))})
    frame = frame.drop_duplicates(["user_id", "seconds"]).reset_index(drop=True)
    with atomic_path(Path(out_dir) / DECISION_STATES_FILE) as tmp:
        frame.to_parquet(tmp, index=False)


def _decision_states_schema() -> Any:
    """The columns of :data:`DECISION_STATES_FILE` as :func:`write_decision_states` writes them."""
    import pyarrow as pa

    return pa.schema([("user_id", pa.string()), ("seconds", pa.float64()), ("embedding", pa.list_(pa.float32()))])


@dataclass
class SampledRankerRows:
    """:func:`sampled_ranker_rows`'s result: the impression rows the ranker gets inputs for (those with an
    earlier history, train cut to the cap), their arrays (as :func:`ranker_rows`), how many impressions have an
    earlier history, and the sample (:func:`cap_impressions`; None when no cap binds)."""

    rows: np.ndarray
    arrays: dict[str, np.ndarray]
    n_with_history: int
    sampled: ImpressionSample | None
    frame: pd.DataFrame  #: the sampled rows' whole frame (index 0..n-1)


def sampled_ranker_rows(imp: pd.DataFrame, seq_data: Any, encoder: Any, all_vectors: np.ndarray,
                        item_rows: Mapping[str, int], item_ids: Sequence[str], max_len: int, cap: int | None,
                        seed: int, states_path: Path | None = None, chunk: int = RANKER_ROWS_CHUNK,
                        eval_cap: int | None = None,
                        frame_of_rows: Callable[[np.ndarray], pd.DataFrame] | None = None) -> SampledRankerRows:
    """:func:`ranker_rows` followed by :func:`cap_impressions` (``cap``, ``seed``, ``eval_cap``) on the splits
    (``imp["_split"]``), with the same rows and arrays, in memory bounded by the caps: which impressions have an
    earlier history is known before any history is built (a user's first history event is before the
    impression), so the sample is drawn first and only the sampled rows' states are kept.

    ``imp``: every impression's ``user_id``, ``_seconds`` and ``_split`` (no other column is read);
    ``frame_of_rows(rows)``: the whole frame of the sampled rows (default ``imp.iloc[rows]``; the trainer reads
    them from the splits, :class:`ImpressionKeys`), whose ``item_id`` gives the item arrays, returned as
    ``frame``. Every impression's point-in-time state still goes to ``states_path`` (the file of
    :func:`write_decision_states` with the same content), written a chunk of (user, time) keys at a time.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    users = _user_rows(imp, seq_data)
    seconds = imp["_seconds"].to_numpy(np.float64)
    first_seen = np.full(int(np.max(seq_data.user_rows, initial=-1)) + 1, np.inf)
    np.minimum.at(first_seen, np.asarray(seq_data.user_rows, np.int64), np.asarray(seq_data.seconds, np.float64))
    # an impression has an earlier history when its user's first event is before it (its key's history is
    # non-empty: checked against the built histories below)
    kept_rows = np.flatnonzero((users >= 0) & (first_seen[np.maximum(users, 0)] < seconds))
    sampled = cap_impressions((imp["_split"] == "train").to_numpy()[kept_rows], cap, seed, eval_cap)
    rows = kept_rows if sampled is None else kept_rows[sampled.rows]
    n_with_history = len(kept_rows)
    del kept_rows
    frame = imp.iloc[rows].reset_index(drop=True) if frame_of_rows is None else frame_of_rows(rows)
    if len(frame) != len(rows):
        raise RuntimeError(f"history ranker: {len(frame)} impressions read for {len(rows)} sampled rows")
    # The distinct (user, time) keys of every impression (a user without events as user -1, dropped after):
    # those of the impressions with a user, in the same order of first appearance.
    first, position = distinct_keys_by_time(users, seconds)
    u_arr, t_arr = users[first], seconds[first]
    del users, seconds
    with_user = u_arr >= 0
    renumbered = np.cumsum(with_user) - 1
    row_pos = renumbered[position[rows]]  # each sampled row's key (its user has events)
    del position, renumbered
    first_row, u_arr, t_arr = first[with_user], u_arr[with_user], t_arr[with_user]  # first_row: its user id
    del first, with_user
    key_has_hist = first_seen[u_arr] < t_arr
    need = np.unique(row_pos)
    dim = all_vectors.shape[1]
    need_states = np.zeros((len(need), dim), np.float32)
    need_hist = np.full((len(need), max_len), -1, np.int32)
    schema = _decision_states_schema()
    writer = pq.ParquetWriter(states_path, schema) if states_path is not None else None
    try:
        for c, states, hist, has in _encoded_chunks(seq_data, encoder, u_arr, t_arr, max_len, chunk):
            end = c + len(has)
            if not np.array_equal(has, key_has_hist[c:end]):
                raise RuntimeError("history ranker: the histories built disagree with the users' first events")
            lo, hi = np.searchsorted(need, [c, end])
            need_states[lo:hi], need_hist[lo:hi] = states[need[lo:hi] - c], hist[need[lo:hi] - c]
            if writer is not None and has.any():
                part = pd.DataFrame({"user_id": string_values(imp["user_id"].iloc[first_row[c:end][has]]),
                                     "seconds": t_arr[c:end][has], "embedding": list(states[has])})
                writer.write_table(pa.Table.from_pandas(part, schema=schema, preserve_index=False))
    finally:
        if writer is not None:
            writer.close()
    at = np.searchsorted(need, row_pos)
    state = need_states[at]
    items = object_values(frame["item_id"])
    enc_rows = np.array([item_rows.get(str(i), -1) for i in items], np.int64)
    score = np.einsum("nd,nd->n", state, all_vectors[np.maximum(enc_rows, 0)]) * (enc_rows >= 0)
    index = {str(i): k for k, i in enumerate(item_ids)}
    item = np.array([index.get(str(i), len(item_ids)) for i in items], np.int64)
    return SampledRankerRows(rows, {"state": state, "hist_rows": need_hist[at], "enc_rows": enc_rows, "item": item,
                                    "score": score.astype(np.float64)}, n_with_history, sampled, frame)


def _auc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels, scores)) if 0 < labels.sum() < len(labels) else None


def _ranker_inputs(imp: pd.DataFrame, arr: dict[str, np.ndarray], context_columns: list[str], is_train: np.ndarray,
                   offset: np.ndarray | None = None) -> tuple[RankerInputs, list[list[str]], float, float]:
    """The ranker's inputs of each impression; the context vocabularies (of the train split) and the retrieval
    score's standardisation (of the score less ``offset``, :func:`score_feature`)."""
    shifted = score_feature(arr["score"], arr["item"], offset, 0.0, 1.0)
    score_mean = float(shifted[is_train].mean())
    score_std = float(shifted[is_train].std()) or 1.0
    dense = np.zeros((len(imp), N_DENSE), np.float32)
    dense[:, 0] = (shifted - score_mean) / score_std
    dense[:, 1:] = history_features(arr["hist_rows"], arr["enc_rows"])
    # object_values: a categorical column's missing values as None, as pandas reads them from Parquet
    vocabs = [sorted({_context_key(v) for v in object_values(imp[c])[is_train].tolist()}) for c in context_columns]
    codes = np.zeros((len(imp), len(context_columns)), np.int64)
    for c, (col, vocab) in enumerate(zip(context_columns, vocabs, strict=True)):
        lookup = {v: k + 1 for k, v in enumerate(vocab)}
        codes[:, c] = [lookup.get(_context_key(v), 0) for v in object_values(imp[col]).tolist()]
    position = (imp["position"].fillna(0).to_numpy().astype(np.int64) if "position" in imp.columns
                else np.zeros(len(imp), np.int64))
    inputs = RankerInputs(state=arr["state"], item=arr["item"], dense=dense, context=codes,
                          position=np.clip(position, 0, MAX_POSITIONS - 1))
    return inputs, vocabs, score_mean, score_std


def _ips_weights(imp: pd.DataFrame, is_train: np.ndarray, trainer_config: Any) -> tuple[np.ndarray, bool]:
    """Inverse-propensity weights normalised to mean 1 per split (``history_ranking_ips`` and every impression
    logged with a propensity), else 1s; and whether they are used."""
    weights = np.ones(len(imp), np.float32)
    ips = bool(trainer_config.history_ranking_ips and "propensity" in imp.columns
               and imp["propensity"].notna().all())
    if ips:
        weights = (1.0 / np.clip(imp["propensity"].to_numpy(np.float64), MIN_PROPENSITY, 1.0)).astype(np.float32)
        weights[is_train] /= weights[is_train].mean()
        weights[~is_train] /= max(float(weights[~is_train].mean()), 1e-12) if (~is_train).any() else 1.0
    return weights, ips


def dense_mask_of(features: Sequence[str]) -> list[float]:
    """[N_DENSE] 1 for each dense feature in ``features``, else 0."""
    chosen = set(features)
    return [1.0 if name in chosen else 0.0 for name in DENSE_FEATURES]


def score_offsets(states: np.ndarray, all_vectors: np.ndarray, item_ids: Sequence[str],
                  item_rows: Mapping[str, int]) -> np.ndarray:
    """[len(item_ids) + 1] each ranker item's score by the mean user state of ``states`` (the train split's
    impressions): what the ranker subtracts when it centres scores. Items the encoder does not know, and the
    unknown row, get 0."""
    mean_state = np.asarray(states, np.float64).mean(0)
    out = np.zeros(len(item_ids) + 1, np.float64)
    for k, item in enumerate(item_ids):
        row = item_rows.get(str(item), -1)
        if row >= 0:
            out[k] = float(all_vectors[row] @ mean_state)
    return out


#: The simplest candidate of the selection: per-item click biases and one weight on the retrieval score (per-item
#: and context vectors frozen at zero, the other history features unused).
SCORE_ONLY = "score_only"
#: The next one: per-item click biases, the weights of every ``history_ranking_dense_features`` feature and
#: position biases (per-item and context vectors frozen at zero).
PERSONAL_OFF = "personal_off"


@dataclass(frozen=True)
class Candidate:
    """One model of the history ranker's selection."""

    name: str | float
    l2: float
    personal: bool  # per-item and context vectors trained
    dense_features: tuple[str, ...]


def ranker_candidates(trainer_config: Any, enough_eval: bool) -> list[Candidate]:
    """The candidates, simplest first: :data:`SCORE_ONLY`, :data:`PERSONAL_OFF` (when its features differ), then
    one model with per-item vectors per L2 of ``history_ranking_l2``, strongest first. With too few eval clicks
    to choose (``enough_eval`` false), only the simplest."""
    grid = sorted(trainer_config.history_ranking_l2, reverse=True)
    features = tuple(f for f in DENSE_FEATURES if f in set(trainer_config.history_ranking_dense_features))
    out = [Candidate(SCORE_ONLY, grid[0], False, ("score",))]
    if not enough_eval:
        return out
    if features != ("score",):
        out.append(Candidate(PERSONAL_OFF, grid[0], False, features))
    return out + [Candidate(l2, l2, True, features) for l2 in grid]


def enough_eval_clicks(labels: np.ndarray, is_train: np.ndarray, trainer_config: Any) -> bool:
    """Whether the eval split has the ``history_ranking_min_eval_clicks`` clicked impressions that choosing
    among the candidates needs (below, only the simplest is fitted)."""
    return float(np.asarray(labels)[~np.asarray(is_train)].sum()) >= trainer_config.history_ranking_min_eval_clicks


def _eval_losses(model: Any, inputs: RankerInputs, labels: np.ndarray, weights: np.ndarray, mask: np.ndarray,
                 n_context: int, dense_mask: Sequence[float]) -> np.ndarray:
    """Per-example weighted log loss of ``model`` on the rows of ``mask`` (no regularisation term)."""
    sub = RankerInputs(*(getattr(inputs, f)[mask] for f in ("state", "item", "dense", "context", "position")))
    logits = numpy_click_logits(export_ranker(model, n_context, dense_mask), sub)
    y = labels[mask].astype(np.float64)
    loss = np.logaddexp(0.0, logits) - y * logits
    return np.asarray(weights[mask], np.float64) * loss


def one_standard_error_choice(losses: Sequence[np.ndarray]) -> tuple[int, list[dict[str, float]]]:
    """Index of the simplest candidate (the first) whose mean eval loss is within one standard error of the best
    one's (Hastie, Tibshirani & Friedman, *Elements of Statistical Learning*, 7.10); ``losses``: per-example
    losses of each candidate on the same rows, simplest first. The standard error is that of the paired
    per-example difference to the best candidate. Returns the index and each candidate's mean, difference and
    standard error."""
    means = [float(np.mean(x)) for x in losses]
    best = int(np.argmin(means))
    stats: list[dict[str, float]] = []
    chosen: int | None = None
    for k, x in enumerate(losses):
        diff = np.asarray(x, np.float64) - np.asarray(losses[best], np.float64)
        se = float(diff.std(ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else 0.0
        stats.append({"mean": means[k], "difference_to_best": float(diff.mean()), "standard_error": se})
        if chosen is None and float(diff.mean()) <= se:
            chosen = k
    return (best if chosen is None else chosen), stats


def _fit_l2_grid(inputs: RankerInputs, labels: np.ndarray, weights: np.ndarray, is_train: np.ndarray,
                 has_eval: bool, n_items: int, vocabs: list[list[str]], trainer_config: Any,
                 only_simplest: bool = False) -> tuple[tuple[float, Any, Any, list[float]], list[dict[str, Any]]]:
    """Fit the candidates of :func:`ranker_candidates` and keep the one ``history_ranking_selection`` picks on
    the eval split's log loss: ``one_standard_error`` (the simplest within one standard error of the best) or
    ``min_loss``. Without an eval click, the first candidate. Returns ``(its loss, model, history, dense mask)``
    and every trial."""
    import tensorflow as tf

    from recflow.training.datasets import index_batches

    rows: dict[bool, Any] = {}  # each split's rows as tensors, built once for every candidate's fit

    def dataset(train: bool, shuffle: bool) -> Any:
        if train not in rows:
            mask = is_train if train else ~is_train
            feats = {k: v[mask] for k, v in inputs.as_dict().items()}
            rows[train] = tf.nest.map_structure(tf.convert_to_tensor, (feats, labels[mask], weights[mask]))
        return index_batches(rows[train], trainer_config.batch_size,
                             shuffle_seed=trainer_config.seed + 7 if shuffle else None)

    base_rate = float(np.average(labels[is_train], weights=weights[is_train]))
    prior = item_log_odds(inputs.item[is_train], labels[is_train], weights[is_train], n_items)
    candidates = ranker_candidates(trainer_config, enough_eval_clicks(labels, is_train, trainer_config)
                                   and not only_simplest)
    trials: list[dict[str, Any]] = []
    eval_losses: list[np.ndarray] = []

    def build(cand: Candidate, mask: list[float]) -> Any:
        tf.keras.utils.set_random_seed(trainer_config.seed + 7)
        return build_keras_ranker(n_items, inputs.state.shape[1], [len(v) for v in vocabs], l2=cand.l2,
                                  base_rate=base_rate, item_prior=prior,
                                  dense_l2=trainer_config.history_ranking_dense_l2, personal=cand.personal,
                                  dense_mask=mask)

    # Each candidate's fitted weights go to a file and its Keras model (with its Adam slots: three copies of the
    # per-item vectors over every item) is dropped before the next fit; only the chosen one is rebuilt
    # (:class:`CandidateWeights`). At 100,000 items the seven candidates held at once took about 0.9 GB.
    with CandidateWeights() as saved:
        for cand in candidates:
            mask = dense_mask_of(cand.dense_features)
            model = build(cand, mask)
            model.compile(optimizer=tf.keras.optimizers.Adam(trainer_config.ranking_learning_rate), loss=click_loss)
            callbacks: list[Any] = []
            if has_eval:
                callbacks.append(tf.keras.callbacks.EarlyStopping(
                    monitor="val_loss", mode="min", restore_best_weights=True,
                    patience=trainer_config.early_stopping_patience))
            hist = model.fit(dataset(True, True), validation_data=dataset(False, False) if has_eval else None,
                             epochs=trainer_config.history_ranking_epochs, callbacks=callbacks, verbose=0)
            losses = (_eval_losses(model, inputs, labels, weights, ~is_train, len(vocabs), mask) if has_eval
                      else np.full(1, np.nan))
            eval_losses.append(losses)
            trials.append({"candidate": cand.name, "l2": cand.l2, "personal_terms": cand.personal,
                           "dense_features": list(cand.dense_features), "eval_log_loss": float(np.mean(losses)),
                           "epochs_run": len(hist.history.get("loss", [])),
                           "history": {k: [float(x) for x in v] for k, v in hist.history.items()}})
            saved.save(model)
            del model, hist, callbacks  # the History and the callbacks hold the model
            release_freed_memory()
            if not has_eval:  # nothing to choose by: the first candidate
                break
        chosen = 0
        if has_eval and len(eval_losses) > 1:
            pick, stats = one_standard_error_choice(eval_losses)
            for trial, st in zip(trials, stats, strict=True):
                trial.update({"difference_to_best": st["difference_to_best"],
                              "standard_error": st["standard_error"]})
            chosen = pick if trainer_config.history_ranking_selection == "one_standard_error" else int(
                np.argmin([t["eval_log_loss"] for t in trials]))
        for k, trial in enumerate(trials):
            trial["chosen"] = k == chosen
        mask = dense_mask_of(candidates[chosen].dense_features)
        model = build(candidates[chosen], mask)
        saved.restore(chosen, model)
    return (trials[chosen]["eval_log_loss"], model, FitHistory(trials[chosen]["history"]), mask), trials


@dataclass(frozen=True)
class FitHistory:
    """The chosen candidate's per-epoch metrics (``history`` as Keras' ``History.history`` holds them)."""

    history: dict[str, list[float]]


class CandidateWeights:
    """Fitted candidates' weights (``model.get_weights()``: every variable, trainable or not, in the model's
    order) in a temporary directory, a file per candidate, deleted on exit: :meth:`restore` sets a candidate's
    weights on a freshly built model of the same candidate, which then holds exactly the fitted values."""

    def __init__(self) -> None:
        self._dir: tempfile.TemporaryDirectory[str] | None = None
        self._count = 0

    def __enter__(self) -> CandidateWeights:
        self._dir = tempfile.TemporaryDirectory(prefix="recflow-ranker-candidates-")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    def _path(self, k: int) -> Path:
        if self._dir is None:
            raise RuntimeError("CandidateWeights used outside its with block")
        return Path(self._dir.name) / f"candidate_{k}.npz"

    def save(self, model: Any) -> int:
        """Write ``model``'s weights as the next candidate's; returns its index."""
        k = self._count
        np.savez(self._path(k), *model.get_weights())
        self._count += 1
        return k

    def restore(self, k: int, model: Any) -> None:
        """Set candidate ``k``'s saved weights on ``model`` (built as that candidate was)."""
        if not 0 <= k < self._count:
            raise IndexError(f"no saved candidate {k} (saved: {self._count})")
        with np.load(self._path(k)) as saved:
            model.set_weights([saved[f"arr_{i}"] for i in range(len(saved.files))])


def _choose_centring(imp: pd.DataFrame, arr: dict[str, np.ndarray], context_columns: list[str], labels: np.ndarray,
                     weights: np.ndarray, is_train: np.ndarray, has_eval: bool, offsets: np.ndarray, n_items: int,
                     trainer_config: Any) -> dict[str, Any]:
    """Whether the score feature is centred (``history_ranking_center_score``): as set when a bool;
    ``auto`` centres unless the eval split has enough clicks (:func:`enough_eval_clicks`) to compare, on its log
    loss, the simplest candidate fitted on the centred and on the raw score -- then the lower one wins. Whether
    the items' browsing level predicts their clicks depends on the shop: in the organic world it does not (the
    centred score served up to 17% more clicks), in the default world it does (lower eval loss raw)."""
    setting = trainer_config.history_ranking_center_score
    if setting != "auto":
        return {"setting": setting, "centred": bool(setting)}
    if not (has_eval and enough_eval_clicks(labels, is_train, trainer_config)):
        return {"setting": "auto", "centred": True, "reason": "too few eval clicks to compare: centred"}
    losses = {}
    for name, offset in (("centred", offsets), ("raw", None)):
        inputs, vocabs, _, _ = _ranker_inputs(imp, arr, context_columns, is_train, offset)
        (loss, _, _, _), _ = _fit_l2_grid(inputs, labels, weights, is_train, has_eval, n_items, vocabs,
                                          trainer_config, only_simplest=True)
        losses[name] = loss
    return {"setting": "auto", "centred": losses["centred"] <= losses["raw"],
            "eval_log_loss": losses, "reason": "lower eval log loss of the simplest candidate"}


def _eval_aucs(report: dict[str, Any], labels: np.ndarray, logits: np.ndarray, scores: np.ndarray,
               is_train: np.ndarray) -> dict[str, float]:
    """The ranker's and the retrieval score's eval AUC, into ``report`` and as run metrics."""
    ev = ~is_train
    auc, score_auc = _auc(labels[ev], logits[ev]), _auc(labels[ev], scores[ev])
    report["eval_auc"], report["eval_auc_retrieval_score_alone"] = auc, score_auc
    metrics: dict[str, float] = {}
    if auc is not None:
        metrics["history_ranker_eval_auc"] = auc
    if score_auc is not None:
        metrics["history_ranker_eval_auc_score_alone"] = score_auc
    return metrics


def train_history_ranker(examples_dir: Path, vocabulary: Sequence[str], seq: Any, item_ids: Sequence[str],
                         spec: Mapping[str, Any], trainer_config: Any, out_dir: Path) -> RankerTraining:
    """Train the ranker on the logged impressions and write its files into ``out_dir``.

    ``seq``: the :class:`recflow.training.sequence_retrieval.SequenceTraining` of this run. Returns
    ``trained=False`` with a note when the log cannot train it (no clicked impression of a user with history).
    """

    from recflow.training.sequence_retrieval import item_rows_of, load_history_codes

    cfg = trainer_config.sequence_config()
    context_columns = [c for c in spec.get("context_features", [])]
    # every impression's keys only (user, time, split); the sampled rows' whole frame is read once they are known
    keys = impression_keys(examples_dir, context_columns)
    release_freed_memory()  # the splits' read temporaries
    if keys.frame.empty:
        return RankerTraining(False, notes=["history ranker skipped: no clicked impression in the log"])
    row_of, n_rows = item_rows_of(vocabulary)
    # only the integer arrays the ranker reads (no per-event id, type, weight or split objects are built)
    data = ranker_events_of_codes(load_history_codes(examples_dir, ("train", "eval"), row_of, n_rows - 1))
    release_freed_memory()  # the splits' read temporaries
    all_vectors = seq.encoder.item_vectors()
    cap = trainer_config.history_ranking_max_train_impressions
    # Every impression's point-in-time state goes to the policy trainer, whatever trains the ranker: written a
    # chunk at a time beside the ranker's files, kept only when the ranker trains.
    states_target = Path(out_dir) / DECISION_STATES_FILE
    states_target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{states_target.name}.", suffix=".tmp", dir=states_target.parent)
    os.close(fd)
    states_tmp = Path(tmp_name)
    # Handed over in a list that _train_sampled empties: no frame of this function keeps the impressions' keys
    # or the events alive while the candidates are fitted.
    held: list[Any] = [keys, data]
    del keys, data
    try:
        return _train_sampled(held, seq, all_vectors, row_of, item_ids, cfg.max_len, cap, context_columns,
                              trainer_config, Path(out_dir), states_tmp, states_target)
    finally:
        states_tmp.unlink(missing_ok=True)


def _train_sampled(held: list[Any], seq: Any, all_vectors: np.ndarray, row_of: Mapping[str, int],
                   item_ids: Sequence[str], max_len: int, cap: int | None, context_columns: list[str],
                   trainer_config: Any, out_dir: Path, states_tmp: Path, states_target: Path) -> RankerTraining:
    """:func:`train_history_ranker` from ``held`` = [the impressions' :class:`ImpressionKeys`, the events] on (the
    list is emptied: the keys and the events are freed once the sampled rows are built, before any fit); the
    decision states go to ``states_tmp``, renamed onto ``states_target`` when the ranker trains."""
    keys, data = held
    held.clear()
    n_impressions = len(keys.frame)
    picked = sampled_ranker_rows(keys.frame, data, seq.encoder, all_vectors, row_of, item_ids, max_len, cap,
                                 trainer_config.seed, states_tmp,
                                 eval_cap=trainer_config.history_ranking_max_eval_impressions,
                                 frame_of_rows=keys.rows)
    del data, keys
    imp, arr, sampled = picked.frame, picked.arrays, picked.sampled
    release_freed_memory()  # the impressions' keys and the events, before any fit
    context_columns = [c for c in context_columns if c in imp.columns]  # those the log has
    notes: list[str] = []
    if sampled is not None and sampled.train_cap is not None:
        notes.append(f"history ranker trained on a seeded sample of {cap} of {sampled.train_of} train impressions "
                     "(trainer.history_ranking_max_train_impressions)")
    if sampled is not None and sampled.eval_cap is not None:
        notes.append(f"history ranker early-stopped, chosen and scored on a seeded sample of {sampled.eval_cap} of "
                     f"{sampled.eval_of} eval impressions (trainer.history_ranking_max_eval_impressions)")
    is_train = (imp["_split"] == "train").to_numpy()
    labels = imp["clicked"].to_numpy().astype(np.float32)
    if not is_train.any() or labels[is_train].max(initial=0) < 1:
        return RankerTraining(False, notes=["history ranker skipped: no clicked impression in the train split "
                                            "of a user with an earlier history"])

    weights, ips = _ips_weights(imp, is_train, trainer_config)
    has_eval = bool((~is_train).any() and labels[~is_train].sum() > 0)
    offsets = score_offsets(arr["state"][is_train], all_vectors, item_ids, row_of)
    centring = _choose_centring(imp, arr, context_columns, labels, weights, is_train, has_eval, offsets,
                                len(item_ids), trainer_config)
    offset = offsets if centring["centred"] else None
    inputs, vocabs, score_mean, score_std = _ranker_inputs(imp, arr, context_columns, is_train, offset)
    if not enough_eval_clicks(labels, is_train, trainer_config):
        notes.append(f"history ranker: only the simplest model ({SCORE_ONLY}) was fitted: the eval split has "
                     f"{int(labels[~is_train].sum())} clicked impressions (< trainer.history_ranking_min_eval_clicks "
                     f"{trainer_config.history_ranking_min_eval_clicks}), too few to choose a richer one")
    started = time.perf_counter()
    best, trials = _fit_l2_grid(inputs, labels, weights, is_train, has_eval, len(item_ids), vocabs, trainer_config)
    _, model, hist, dense_mask = best
    seconds = time.perf_counter() - started
    exported = export_ranker(model, len(context_columns), dense_mask, offset)
    logits = numpy_click_logits(exported, inputs)
    report: dict[str, Any] = {
        "model": "history_ranker", "train_examples": int(is_train.sum()), "eval_examples": int((~is_train).sum()),
        "train_clicks": int(labels[is_train].sum()), "eval_clicks": int(labels[~is_train].sum()),
        "skipped_impressions_without_history": n_impressions - picked.n_with_history,
        "train_impressions_sampled": None if sampled is None else sampled.report("train"),
        "eval_impressions_sampled": None if sampled is None else sampled.report("eval"),
        "context_columns": context_columns, "inverse_propensity_weights": ips,
        "l2_trials": trials, "selection": trainer_config.history_ranking_selection, "score_centring": centring,
        "chosen_candidate": next(t["candidate"] for t in trials if t["chosen"]),
        "history": {k: [float(x) for x in v] for k, v in hist.history.items()},
        "epochs_run": len(hist.history.get("loss", [])), "seconds": seconds}
    metrics = _eval_aucs(report, labels, logits, arr["score"], is_train) if has_eval else {}
    with open(states_tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(states_tmp, states_target)
    meta = {"item_ids": [str(i) for i in item_ids], "context_columns": context_columns,
            "context_vocabularies": vocabs, "score_mean": score_mean, "score_std": score_std,
            "max_len": max_len, "report": report}
    save_ranker(Path(out_dir), exported, meta)
    return RankerTraining(True, report=report, metrics=metrics, notes=notes)
