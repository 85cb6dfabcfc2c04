"""Reading the rows and columns of a transformed split that a trainer stage uses, batch by batch.

:func:`recflow.features.transform.load_transformed` parses every feature of every row of a split into memory; at
shop scale (a million events, about 1.7 GB for train + eval) most of it is rows no stage reads: with the sequence
retrieval model (which reads ExampleGen's events itself) the TFRS trainer's datasets keep only the impressions
the ranking model learns from. :func:`load_transformed_rows` streams the TFRecord shards in batches, parses only
the named features and keeps the rows a ``keep`` function selects, so memory grows with the kept rows, not the
split; the result equals ``load_transformed``'s arrays at those rows and columns, in the same (``row_id``) order
(``tests/test_transformed_rows.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from recflow.errors import DataError

#: Serialized examples parsed at once (as :func:`recflow.features.transform.load_transformed`).
BATCH = 65536

Keep = Callable[[dict[str, np.ndarray]], np.ndarray]


def load_transformed_rows(transformed_dir: Path, transform_graph_dir: Path, columns: Sequence[str],
                          keep: Keep | None = None, batch: int = BATCH) -> dict[str, np.ndarray]:
    """The ``columns`` of the rows of one transformed split that ``keep`` selects, in ``row_id`` order.

    ``keep(parsed)`` gets each batch's parsed ``columns`` (plus ``row_id``) and returns a bool mask of the rows
    to keep (None: every row); it may also tally what it sees (e.g. counts over the rows it drops). Raises
    DataError naming the split and the feature when a column is not a transformed feature, or when ``keep``
    returns a mask of the wrong shape.
    """
    import tensorflow as tf
    import tensorflow_transform as tft

    full_spec = tft.TFTransformOutput(str(transform_graph_dir)).transformed_feature_spec()
    names = list(dict.fromkeys([*columns, "row_id"]))
    unknown = [n for n in names if n not in full_spec]
    if unknown:
        raise DataError(f"{transformed_dir}: no transformed feature(s) {unknown} (the features are "
                        f"{sorted(full_spec)})")
    spec = {n: full_spec[n] for n in names}
    parts: dict[str, list[np.ndarray]] = {n: [] for n in names}
    files = sorted(str(p) for p in Path(transformed_dir).glob("part-*"))
    if files:
        for serialized in tf.data.TFRecordDataset(files, compression_type="GZIP").batch(batch):
            parsed = {n: v.numpy() for n, v in tf.io.parse_example(serialized, spec).items()}
            rows = len(parsed["row_id"])
            mask = np.ones(rows, bool) if keep is None else np.asarray(keep(parsed), bool)
            if mask.shape != (rows,):
                raise DataError(f"{transformed_dir}: the row filter returned a mask of shape {mask.shape} for a "
                                f"batch of {rows} rows")
            for n in names:
                parts[n].append(parsed[n][mask])
    data = {n: (np.concatenate(p) if p else np.zeros((0,), dtype=spec[n].dtype.as_numpy_dtype))
            for n, p in parts.items()}
    order = np.argsort(data["row_id"], kind="stable")
    return {n: values[order] for n, values in data.items()}


def load_transformed_sample(transformed_dir: Path, transform_graph_dir: Path, columns: Sequence[str],
                            keep: Keep, cap: int | None, seed: int, stream: int, batch: int = BATCH
                            ) -> tuple[dict[str, np.ndarray], int]:
    """:func:`load_transformed_rows` of the rows ``keep`` selects, cut while streaming to the ``cap`` of them
    with the smallest seeded row keys (:func:`recflow.training.caps.smallest_keys`; cap None: all), so memory
    holds at most about twice ``cap`` rows whatever the split's size. Returns (the rows in ``row_id`` order, how
    many rows ``keep`` selected in all)."""
    from recflow.training.caps import smallest_keys

    if cap is None:
        count = [0]

        def counted(parsed: dict[str, np.ndarray]) -> np.ndarray:
            mask = np.asarray(keep(parsed), bool)
            count[0] += int(mask.sum())
            return mask

        everything = load_transformed_rows(transformed_dir, transform_graph_dir, columns, counted, batch)
        return everything, count[0]
    names = list(dict.fromkeys([*columns, "row_id"]))
    held: dict[str, np.ndarray] | None = None
    selected = 0

    def prune(data: dict[str, np.ndarray], limit: int) -> dict[str, np.ndarray]:
        chosen = smallest_keys(data["row_id"], limit, seed, stream)
        return {n: v[chosen] for n, v in data.items()}

    def collect(parsed: dict[str, np.ndarray]) -> np.ndarray:
        nonlocal held, selected
        mask = np.asarray(keep(parsed), bool)
        selected += int(mask.sum())
        part = {n: parsed[n][mask] for n in names}
        held = part if held is None else {n: np.concatenate([held[n], part[n]]) for n in names}
        if cap is not None and len(held["row_id"]) > 2 * cap:
            held = prune(held, cap)
        return np.zeros(len(mask), bool)  # nothing left for load_transformed_rows to gather

    empty = load_transformed_rows(transformed_dir, transform_graph_dir, columns, collect, batch)
    data = empty if held is None else prune(held, cap)
    order = np.argsort(data["row_id"], kind="stable")
    return {n: v[order] for n, v in data.items()}, selected
