"""Training budgets at shop scale: a seeded sample of a model's training (or early-stopping) examples.

The TFRS trainer's models each train on every example of their split by default; their time (and the memory of
their per-example arrays: a sequence example holds ``max_len`` history positions) grows with the log. A cap
(``trainer.sequence_max_train_examples``, ``trainer.sequence_max_eval_examples``,
``trainer.ranking_max_train_impressions``, ``trainer.ranking_max_eval_impressions``,
``trainer.history_ranking_max_train_impressions``, ``trainer.history_ranking_max_eval_impressions``) bounds both: above
it the model reads a seeded sample of that many examples, and the trainer's report and notes say so (never a
silent cut). A cap of None, or one the split does not reach, changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class CapResult:
    """The mask after the cap and what the cap did (``report()`` goes into training.json)."""

    mask: np.ndarray
    kept: int
    of: int
    cap: int | None

    @property
    def binds(self) -> bool:
        return self.cap is not None and self.of > self.cap

    def report(self) -> dict[str, Any] | None:
        """``{"kept", "of", "cap"}`` when the cap bound, else None."""
        return cap_report(self.kept, self.of, self.cap)

    def note(self, what: str, key: str) -> str:
        """The run's note when the cap bound (``what``: the examples, ``key``: the config key)."""
        return f"{what}: a seeded sample of {self.kept} of {self.of} (trainer.{key})"


def cap_report(kept: int, of: int, cap: int | None) -> dict[str, Any] | None:
    """What a cap did, for training.json: ``{"kept", "of", "cap"}`` when ``cap`` bound (``of`` > ``cap``; ``kept``
    rows of ``of`` were kept), else None. :meth:`CapResult.report`, and the streamed samples that keep no mask."""
    return {"kept": kept, "of": of, "cap": cap} if cap is not None and of > cap else None


def cap_mask(mask: np.ndarray, cap: int | None, seed: int, stream: int) -> CapResult:
    """``mask`` (bool, one entry per row) with at most ``cap`` True rows: a uniform sample without replacement,
    drawn by ``numpy.random.default_rng([seed, stream])`` (``stream`` keeps each model's sample independent of
    the others' for the same seed). Rows keep their order. ``cap`` None or not reached: ``mask`` unchanged.

    Raises ValueError for a cap below 1.
    """
    mask = np.asarray(mask, bool)
    rows = np.flatnonzero(mask)
    if cap is not None and cap < 1:
        raise ValueError(f"a training cap must be >= 1 or None, got {cap}")
    if cap is None or len(rows) <= cap:
        return CapResult(mask, len(rows), len(rows), cap)
    chosen = np.random.default_rng([seed, stream]).choice(rows, size=cap, replace=False)
    out = np.zeros(len(mask), bool)
    out[chosen] = True
    return CapResult(out, cap, len(rows), cap)


#: The ``stream`` of each capped sample (see :func:`cap_mask`).
(STREAM_SEQUENCE_TRAIN, STREAM_SEQUENCE_EVAL, STREAM_RANKING_TRAIN, STREAM_HISTORY_EVAL,
 STREAM_RANKING_EVAL) = 1, 2, 3, 4, 5


def row_keys(row_ids: np.ndarray, seed: int, stream: int) -> np.ndarray:
    """A seeded pseudo-random uint64 key per row id (splitmix64 of the id mixed with ``seed`` and ``stream``):
    the same row gets the same key whichever batch, file or order it is read in."""
    with np.errstate(over="ignore"):
        mix = np.uint64((seed * 0x9E3779B97F4A7C15 + stream * 0xBF58476D1CE4E5B9) % 2**64)
        z = np.asarray(row_ids).astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15) + mix
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def smallest_keys(row_ids: np.ndarray, cap: int, seed: int, stream: int) -> np.ndarray:
    """Positions (sorted) of the ``cap`` rows of ``row_ids`` with the smallest :func:`row_keys` (all rows when
    there are no more): a seeded uniform sample that a stream of batches can keep bounded (the smallest keys of
    the union are the smallest of each part's smallest)."""
    if len(row_ids) <= cap:
        return np.arange(len(row_ids))
    keys = row_keys(row_ids, seed, stream)
    return np.sort(np.lexsort((np.asarray(row_ids), keys))[:cap])


def cap_rows_by_key(mask: np.ndarray, row_ids: np.ndarray, cap: int | None, seed: int, stream: int) -> CapResult:
    """:func:`cap_mask` by row key: the ``cap`` rows of ``mask`` with the smallest :func:`row_keys` of their
    ``row_ids`` -- the same sample :func:`recflow.training.transformed.load_transformed_sample` keeps while
    streaming a split."""
    mask = np.asarray(mask, bool)
    rows = np.flatnonzero(mask)
    if cap is not None and cap < 1:
        raise ValueError(f"a training cap must be >= 1 or None, got {cap}")
    if cap is None or len(rows) <= cap:
        return CapResult(mask, len(rows), len(rows), cap)
    out = np.zeros(len(mask), bool)
    out[rows[smallest_keys(np.asarray(row_ids)[rows], cap, seed, stream)]] = True
    return CapResult(out, cap, len(rows), cap)
