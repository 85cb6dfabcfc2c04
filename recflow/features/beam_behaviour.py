"""The point-in-time behaviour features as a Beam pipeline: events sharded by user, each shard's features
computed with :func:`recflow.features.behaviour.add_behaviour_features` under the whole log's plan.

A user's features depend on that user's own earlier events only, so a shard that holds all of its users' events
(a stable hash of the user id picks the shard) gives exactly the values of the in-memory computation over the
whole log. The pipeline uses only Create, ParDo and GroupByKey, and writes its shards from a ParDo, so it runs
on every Beam runner, Beam's Dask runner included (whose file sinks write empty files and which cannot run
tf.Transform: docs/pipeline.md, "Distributed data steps").

Output: ``part-SSSSS-of-NNNNN.parquet`` per shard, the input's columns plus ``split`` (the input's index in
``inputs``), ``split_row`` (the row's position in that input), the behaviour columns and ``recent_items`` when
asked for, each shard's rows in log order (time, then input order).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from recflow.errors import DataError
from recflow.features import beam_runner, behaviour
from recflow.io import atomic_path, staged_dir

#: Columns the pipeline adds: which input a row came from, and its position there.
SPLIT, SPLIT_ROW = "split", "split_row"


def shard_of(user_ids: pd.Series, num_shards: int) -> np.ndarray:
    """The shard of each user: CRC-32 of the id (the same in every process, unlike ``hash``) modulo the count."""
    return np.fromiter((zlib.crc32(str(u).encode("utf-8")) % num_shards for u in user_ids), dtype=np.int64,
                       count=len(user_ids))


def read_keyed(indexed_path: tuple[int, str], num_shards: int, batch_rows: int = 65_536
               ) -> Iterator[tuple[int, pa.Table]]:
    """One input file as (shard, rows) pieces, each row tagged with the input's index and its position."""
    import pyarrow.parquet as pq

    index, path = indexed_path
    offset = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_rows):
        frame = batch.to_pandas()
        frame[SPLIT] = index
        frame[SPLIT_ROW] = np.arange(offset, offset + len(frame), dtype=np.int64)
        offset += len(frame)
        shards = shard_of(frame["user_id"], num_shards)
        for shard in np.unique(shards):
            yield int(shard), pa.Table.from_pandas(frame[shards == shard], preserve_index=False)


def shard_features(shard: int, pieces: Sequence[pa.Table], plan: behaviour.BehaviourPlan, recent_n: int
                   ) -> pd.DataFrame:
    """The behaviour features of one shard's events (all events of its users), in log order."""
    del shard  # the pieces carry every user of the shard
    events = pa.concat_tables(list(pieces)).to_pandas()
    events = events.sort_values(["timestamp", SPLIT, SPLIT_ROW], kind="stable").reset_index(drop=True)
    out = behaviour.add_behaviour_features(events, plan=plan)
    if recent_n > 0:
        out["recent_items"] = behaviour.recent_items(events, recent_n)
    return out


def write_shard(keyed: tuple[int, Sequence[pa.Table]], plan: behaviour.BehaviourPlan, recent_n: int,
                out_dir: str, num_shards: int) -> str:
    """Compute one shard and write it (atomically: a rerun or a retried bundle never leaves half a file)."""
    shard, pieces = keyed
    frame = shard_features(shard, pieces, plan, recent_n)
    path = Path(out_dir) / f"part-{shard:05d}-of-{num_shards:05d}.parquet"
    with atomic_path(path) as tmp:
        frame.to_parquet(tmp, index=False)
    return str(path)


def build_pipeline(pipeline: Any, inputs: Sequence[str], out_dir: str, plan: behaviour.BehaviourPlan,
                   recent_n: int = 0, num_shards: int = 4) -> Any:
    """Add the behaviour-features transforms to ``pipeline``; the result holds the written shards' paths."""
    import apache_beam as beam

    return (pipeline
            | "Inputs" >> beam.Create(list(enumerate(inputs)))
            | "ReadKeyed" >> beam.FlatMap(read_keyed, num_shards)
            | "GroupShards" >> beam.GroupByKey()
            | "WriteShards" >> beam.Map(write_shard, plan, recent_n, out_dir, num_shards))


def run_behaviour_features(inputs: Sequence[str | Path], out_dir: str | Path, plan: behaviour.BehaviourPlan,
                           runner: str = "DirectRunner", *, recent_n: int = 0, num_shards: int = 4,
                           beam_pipeline_args: Sequence[str] | None = None, **runner_options: Any) -> list[Path]:
    """Run the behaviour-features pipeline on ``runner`` and return the shards it wrote, sorted.

    ``inputs`` are Parquet event files in log order (for example ExampleGen's train, eval and test);
    ``runner_options`` go to :func:`recflow.features.beam_runner.beam_args` (``direct_running_mode``,
    ``direct_num_workers``, ``dask_address``, ``dask_workers``). Shards that no user hashes to are not written.
    """
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    missing = [str(p) for p in inputs if not Path(p).is_file()]
    if missing:
        raise DataError(f"behaviour features: no such event file: {', '.join(missing)}")
    out = Path(out_dir)
    # Staged: a failed run leaves the previous output (or none), never some of the shards.
    with staged_dir(out) as tmp, beam_runner.beam_args(runner, beam_pipeline_args, **runner_options) as args, \
            beam.Pipeline(options=PipelineOptions(args)) as pipeline:
        written = build_pipeline(pipeline, [str(p) for p in inputs], str(tmp), plan, recent_n, num_shards)
        beam_runner.wait_for_all(pipeline, written)
    return sorted(out.glob("part-*.parquet"))


def read_shards(paths: Sequence[Path]) -> pd.DataFrame:
    """The shards as one frame in input order (``split``, ``split_row``)."""
    frame = pd.concat([pd.read_parquet(p) for p in paths], ignore_index=True)
    return frame.sort_values([SPLIT, SPLIT_ROW], kind="stable").reset_index(drop=True)
