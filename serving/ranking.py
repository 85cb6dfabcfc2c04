"""The DCN ranking SavedModel (``model/ranking/``) evaluated in numpy, so that no request calls TensorFlow.

What the SavedModel computes for one request (:class:`recflow.models.export.RankingServing`): the raw inputs
(``user_id``, ``item_id`` and the context) are completed by lookups in tables saved inside it (each known
user's behaviour state, recent items and static attributes; each catalog item's category, brand and price;
unknown ids get the no-history / fill row), turned into transformed features by the tf.Transform graph
(vocabulary indices with OOV buckets, z-scores of log values, sin/cos of hour and weekday), embedded by the
query and item towers, and scored by the deep & cross network (``recflow.models.ranking.DCNRankingModel``).

Every request shares its user and context over all its candidates, so the work splits along the towers:

* **item side, once per bundle**: the item tower's output of every catalog item -- the transformed features
  come from the bundle's own tf.Transform graph applied at load time to the item table saved in the model, and
  items the model does not know share the OOV row(s);
* **user side, once per bundle**: the transformed per-user features (behaviour z-scores, segment, recent
  items) of every user row of the saved table, likewise, and their tower inputs;
* **per request, numpy**: the context's features (sin/cos, vocabulary indices of device and region), the user
  id's vocabulary index, the query tower (one row), then cross layers, deep layers and the click head on the
  candidates.

The one piece numpy cannot reproduce is the OOV bucket of an unseen string when the Transform step used more
than one OOV bucket (``transform.num_oov_buckets`` > 1): TensorFlow's Fingerprint64 hash
(``tf.strings.to_hash_bucket_fast``) picks it. That single op is still called then, once per distinct unseen
value (cached); with the default single bucket every unseen value maps to the same index and TensorFlow is
never called. :meth:`ServingBundle.load <serving.bundle.ServingBundle.load>` checks the engine against the
SavedModel on a fixed sample (:func:`ranking_sample`) and serves with the SavedModel if they differ.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from recflow import bundle_layout
from recflow.errors import DataError

#: Transformed features computed per request from the context (the rest come from the user's row).
CONTEXT_DERIVED = {"hour_sin": "hour", "hour_cos": "hour", "weekday_sin": "weekday", "weekday_cos": "weekday",
                   "device_idx": "device", "region_idx": "region"}
_PERIOD = {"hour": 24.0, "weekday": 7.0}
_OOV_CACHE_SIZE = 100_000


def _dense(obj: Any) -> tuple[np.ndarray, np.ndarray]:
    return obj.kernel.numpy().astype(np.float32), obj.bias.numpy().astype(np.float32)


def _children(obj: Any) -> dict[str, Any]:
    return dict(obj._trackable_children())  # noqa: SLF001 - the restored object graph has no public listing


class Vocabulary:
    """A tf.Transform vocabulary with its OOV buckets: ``index(value)`` as ``tft.apply_vocabulary`` gives it."""

    def __init__(self, tokens: Sequence[str], num_oov_buckets: int) -> None:
        self.index_of = {t: i for i, t in enumerate(tokens)}
        self.size = len(tokens)
        self.num_oov_buckets = int(num_oov_buckets)
        self._oov: dict[str, int] = {}
        self._lock = threading.Lock()

    def index(self, value: str) -> int:
        found = self.index_of.get(value)
        if found is not None:
            return found
        if self.num_oov_buckets <= 1:
            return self.size
        with self._lock:
            cached = self._oov.get(value)
        if cached is None:
            cached = int(self.oov_buckets([value])[0])
            with self._lock:
                if len(self._oov) >= _OOV_CACHE_SIZE:
                    self._oov.clear()
                self._oov[value] = cached
        return cached

    def indices(self, values: Sequence[str]) -> np.ndarray:
        out = np.array([self.index_of.get(v, -1) for v in values], np.int64)
        unseen = out < 0
        if unseen.any():
            out[unseen] = (
                self.size if self.num_oov_buckets <= 1 else self.oov_buckets([v for v, u in
                                                                              zip(values, unseen, strict=True) if u])
            )
        return out

    def oov_buckets(self, values: Sequence[str]) -> np.ndarray:
        """``size + Fingerprint64(value) mod num_oov_buckets``: the only TensorFlow op of the engine, and only
        with several OOV buckets (see the module docstring)."""
        import tensorflow as tf

        buckets = tf.strings.to_hash_bucket_fast(tf.constant(list(values), tf.string), self.num_oov_buckets)
        return self.size + buckets.numpy().astype(np.int64)


class NumpyTower:
    """A :class:`recflow.models.two_tower.FeatureTower` (embeddings, dense inputs, hidden layers, projection)."""

    def __init__(self, restored: Any, features: Sequence[str]) -> None:
        children = _children(restored)
        if "bias" in children:
            raise DataError("ranking tower with an item-bias column: not supported by the numpy engine")
        emb = _children(children["embeddings"]) if "embeddings" in children else {}
        self.embeddings = {name: emb[name].embeddings.numpy().astype(np.float32) for name in emb}
        self.features = list(features)
        self.categorical = [f for f in self.features if f in self.embeddings]
        self.dense_features = [f for f in self.features if f not in self.embeddings]
        hidden = sorted((n for n in children if n.startswith("hidden_")), key=lambda n: int(n.split("_")[1]))
        self.hidden = [_dense(children[n]) for n in hidden]
        self.projection = _dense(children["projection"])

    def inputs(self, values: Mapping[str, np.ndarray]) -> np.ndarray:
        """The tower's input rows ``[n, width]`` from transformed feature values (bags: ``[n, L]``, -1 padded)."""
        parts = []
        for f in self.categorical:
            ids = np.asarray(values[f], np.int64)
            table = self.embeddings[f]
            if ids.ndim == 2:  # a bag: mean of the non-padding ids' embeddings (zeros for none)
                mask = (ids >= 0).astype(np.float32)[..., None]
                vectors = (table[np.maximum(ids, 0)] * mask).sum(axis=1)
                parts.append(vectors / np.maximum(mask.sum(axis=1), 1.0))
            else:
                parts.append(table[ids])
        if self.dense_features:
            parts.append(np.stack([np.asarray(values[f], np.float32).reshape(-1) for f in self.dense_features],
                                  axis=1))
        return np.concatenate(parts, axis=1).astype(np.float32)

    def forward(self, x: np.ndarray) -> np.ndarray:
        for kernel, bias in self.hidden:
            x = np.maximum(x @ kernel + bias, 0.0)
        kernel, bias = self.projection
        return x @ kernel + bias


class NumpyRanker:
    """Click probabilities of the DCN ranking SavedModel in numpy (see the module docstring)."""

    def __init__(self, loaded: Any, model_dir: Path, transform_graph_dir: Path, spec: Mapping[str, Any],
                 item_ids: Sequence[str] | np.ndarray) -> None:
        import tensorflow_transform as tft

        self.spec = dict(spec)
        report = model_dir / bundle_layout.TRAINING_REPORT_FILE
        training = json.loads(report.read_text(encoding="utf-8"))["feature_spec"]
        model = loaded.model
        self.query = NumpyTower(model.query_tower, training["query_features"])
        self.item = NumpyTower(model.candidate_tower, training["candidate_tower_features"])
        self.cross = []
        for layer in (_children(model.cross)[str(i)] for i in range(len(_children(model.cross)))):
            parts = _children(layer)
            if "_dense" not in parts:
                raise DataError("a cross layer with a low-rank projection: not supported by the numpy engine")
            self.cross.append(_dense(parts["_dense"]))
        deep = _children(model.deep)
        self.deep = [_dense(deep[f"layer_with_weights-{i}"]) for i in range(
            sum(n.startswith("layer_with_weights-") for n in deep))]
        self.head = _dense(_children(model.heads)["click"])
        output = tft.TFTransformOutput(str(transform_graph_dir))
        oov = int(self.spec.get("num_oov_buckets", 1))

        def vocabulary(name: str) -> Vocabulary:
            tokens = [t.decode("utf-8") if isinstance(t, bytes) else str(t)
                      for t in output.vocabulary_by_name(name)]
            return Vocabulary(tokens, oov)

        self.vocab = {name: vocabulary(name) for name in ("user_id", "device", "region")
                      if name in self.spec["raw_features"]}
        self.fills = dict(self.spec.get("fill_values", {}))
        self._user_rows(loaded, transform_graph_dir)
        self._item_rows(loaded, transform_graph_dir, item_ids, vocabulary("item_id"))

    # ------------------------------------------------------------------ tables built once per bundle
    def _user_rows(self, loaded: Any, graph_dir: Path) -> None:
        """The per-user transformed features of every row of the SavedModel's user table (the last row: the
        no-history row that unknown users get), as tower inputs."""
        from recflow.features.transform import apply_transform_graph

        state = loaded.user_state.numpy()
        self.user_row = _table_keys(graph_dir.parent / bundle_layout.USER_STATE_FILE, "user_id", len(state) - 1)
        self.no_history_row = len(self.user_row)
        raw = pd.DataFrame({"user_id": [""] * len(state)})
        for j, name in enumerate(self.spec["behaviour_features"]):
            raw[name] = state[:, j]
        if int(self.spec.get("recent_items", 0)):
            raw["recent_items"] = [[v.decode("utf-8") for v in row] for row in loaded.user_recent_items.numpy()]
        for name, values in _children(loaded.user_attributes).items() if hasattr(loaded, "user_attributes") else ():
            raw[name] = [v.decode("utf-8") for v in values.numpy()]
        transformed = apply_transform_graph(graph_dir, self.spec, raw)
        self.user_features = [f for f in self.query.features if f not in CONTEXT_DERIVED and f != "user_idx"]
        self.user_values = {f: transformed[f] for f in self.user_features}

    def _item_rows(self, loaded: Any, graph_dir: Path, item_ids: Sequence[str] | np.ndarray,
                   vocab: Vocabulary) -> None:
        """The item tower's output of every item the SavedModel knows plus one row per OOV bucket, and each
        bundle item's row in that table."""
        from recflow.features.transform import apply_transform_graph

        n_items = len(loaded.item_price.numpy()) - 1 if hasattr(loaded, "item_price") else None
        known = list(_table_keys(graph_dir.parent / bundle_layout.CANDIDATES_FILE, "item_id", n_items))
        raw = pd.DataFrame({"item_id": known + [""]})  # the last row: the fill attributes of an unknown item
        strings = _children(loaded.item_strings) if hasattr(loaded, "item_strings") else {}
        for name, values in strings.items():
            raw[name] = [v.decode("utf-8") for v in values.numpy()]
        if hasattr(loaded, "item_price"):
            raw["price"] = loaded.item_price.numpy()
        transformed = apply_transform_graph(graph_dir, self.spec, raw)
        idx = np.asarray(transformed["item_idx"], np.int64)
        idx[-1] = vocab.size  # set per OOV bucket below
        values = {f: np.asarray(transformed[f]) for f in self.item.features}
        n_oov = max(vocab.num_oov_buckets, 1)
        values = {f: np.concatenate([v, np.repeat(v[-1:], n_oov - 1, axis=0)]) for f, v in values.items()}
        values["item_idx"] = np.concatenate([idx[:-1], vocab.size + np.arange(n_oov)])
        self.item_vectors = self.item.forward(self.item.inputs(values)).astype(np.float32)
        self._known_items = {k: i for i, k in enumerate(known)}
        self._item_vocab = vocab
        self.item_table_rows = np.zeros(0, np.int64)
        self.add_items(item_ids)

    def add_items(self, item_ids: Sequence[str] | np.ndarray) -> None:
        """Append bundle items (in bundle row order): known items use their own row, others their OOV row."""
        ids = [str(i) for i in item_ids]
        rows = np.array([self._known_items.get(i, -1) for i in ids], np.int64)
        unknown = rows < 0
        if unknown.any():
            n_known = len(self._known_items)
            buckets = self._item_vocab.indices([i for i, u in zip(ids, unknown, strict=True) if u])
            rows[unknown] = n_known + (buckets - self._item_vocab.size)
        self.item_table_rows = np.concatenate([self.item_table_rows, rows])

    # ------------------------------------------------------------------ per request
    def _context_value(self, name: str, context: Mapping[str, Any], default: Mapping[str, Any]) -> Any:
        value = context.get(name, default.get(name))
        if value is None or value == "":
            value = self.fills.get(name)
        if value is None:
            value = "" if self.spec["raw_features"].get(name) == "string" else 0
        return value

    def query_vector(self, user_id: str, context: Mapping[str, Any], default: Mapping[str, Any]) -> np.ndarray:
        """The query tower's output ``[D]`` for ``user_id`` in ``context`` (missing fields from ``default``,
        then the Transform step's fill values)."""
        row = self.user_row.get(user_id, self.no_history_row)
        values: dict[str, np.ndarray] = {f: self.user_values[f][row:row + 1] for f in self.user_features}
        if "user_idx" in self.query.features:
            values["user_idx"] = np.array([self.vocab["user_id"].index(user_id)], np.int64)
        for f in self.query.features:
            source = CONTEXT_DERIVED.get(f)
            if source is None:
                continue
            value = self._context_value(source, context, default)
            if f.endswith("_idx"):
                values[f] = np.array([self.vocab[source].index(str(value))], np.int64)
            else:
                try:
                    number = np.float32(int(value))
                except (TypeError, ValueError):
                    raise DataError(f"context.{source}: must be an integer, got {value!r}") from None
                angle = np.float32(2.0 * np.pi) * number / np.float32(_PERIOD[source])
                values[f] = np.array([np.sin(angle) if f.endswith("_sin") else np.cos(angle)], np.float32)
        return self.query.forward(self.query.inputs(values))[0]

    def click_probabilities(self, query: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """P(click) of the bundle items at ``rows`` for the query tower output ``query`` (float64 ``[n]``)."""
        items = self.item_vectors[self.item_table_rows[np.asarray(rows, np.int64)]]
        q = np.broadcast_to(query[None, :], items.shape)
        x0 = np.concatenate([q, items, q * items], axis=1)
        x = x0
        for kernel, bias in self.cross:
            x = x0 * (x @ kernel + bias) + x
        for kernel, bias in self.deep:
            x = np.maximum(x @ kernel + bias, 0.0)
        kernel, bias = self.head
        logit = (x @ kernel + bias)[:, 0].astype(np.float64)
        return 1.0 / (1.0 + np.exp(-logit))


def _table_keys(path: Path, column: str, rows: int | None) -> dict[str, int]:
    """Key -> row of a lookup table the SavedModel was built from (the Transform step's ``user_state.parquet``
    or ``candidates.parquet``, in row order; restored hash tables cannot be listed). ``rows``: the row count of
    the SavedModel's matching variable, checked."""
    keys = pd.read_parquet(path, columns=[column])[column].astype(str).tolist()
    if rows is not None and len(keys) != rows:
        raise DataError(f"{path}: {len(keys)} rows, but the ranking SavedModel's table has {rows}")
    return {k: i for i, k in enumerate(keys)}


def ranking_sample(user_ids: Sequence[str], n_items: int, default: Mapping[str, Any],
                   seed: int = 0) -> list[tuple[str, np.ndarray, dict[str, Any]]]:
    """The fixed sample the engine is checked on: known and unknown users, random item rows, the default
    context, every hour and weekday, an unseen device and region, and missing fields."""
    rng = np.random.default_rng(seed)
    users = [str(u) for u in list(user_ids)[:3]] + ["__check_unknown_user__", ""]
    contexts: list[dict[str, Any]] = [dict(default), {}]
    contexts += [{"hour": h, "weekday": h % 7, "device": "__unseen_device__", "region": "__unseen_region__"}
                 for h in range(0, 24, 5)]
    contexts += [{**default, "hour": 23, "weekday": 6}, {"device": default.get("device")}]
    sample = []
    for n, ctx in enumerate(contexts):
        rows = rng.choice(n_items, size=min(n_items, 12), replace=False)
        sample.append((users[n % len(users)], rows, ctx))
    return sample
