"""Warm start: initialise a new model's towers from a previous model (the champion, or one pre-trained elsewhere).

The trainer saves every tower variable (``towers.npz``) and the vocabularies its id embeddings index
(``vocabularies.json``) next to its exports. A retraining run loads them and copies, variable by variable:

* id embeddings (``<feature>_embedding``, ``<feature>_bias``) **row by id**: a user or item present in both
  vocabularies keeps its learned vector; new ids keep their fresh initialisation; OOV rows are copied as OOV rows;
* every other variable (dense layers, small attribute embeddings) when its shape is unchanged.

So a retrain after a day of new data starts from the champion's knowledge even though vocabularies grew.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from recflow.errors import DataError
from recflow.io import atomic_path

WEIGHTS_FILE = "towers.npz"
VOCAB_FILE = "vocabularies.json"


def can_warm_start_from(model_dir: Path) -> bool:
    """Whether ``model_dir`` (a trainer output or a bundle's ``model/``) holds weights a retraining can start
    from: the two-tower's tower weights or the sequence model's encoder and item table."""
    from recflow.training.sequence_retrieval import is_sequence_model

    return (Path(model_dir) / WEIGHTS_FILE).is_file() or is_sequence_model(model_dir)


def _key(tower: str, position: int) -> str:
    # By position, not by name: Keras numbers auto-named layers per process (dense_3, dense_7, ...), while the
    # order of a tower's variables is fixed by its architecture; shapes are checked before copying.
    return f"{tower}::{position}"


def save_tower_weights(out_dir: Path, towers: Mapping[str, Any], vocabularies: Mapping[str, list[str]]) -> None:
    """Write the variables of ``towers`` (name -> Keras model) and the id vocabularies into ``out_dir``."""
    out_dir = Path(out_dir)
    arrays = {_key(name, i): v.numpy() for name, tower in towers.items() for i, v in enumerate(tower.variables)}
    with atomic_path(out_dir / WEIGHTS_FILE) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, allow_pickle=False, **arrays)
    with atomic_path(out_dir / VOCAB_FILE) as tmp:
        tmp.write_text(json.dumps(dict(vocabularies)), encoding="utf-8")


def _feature_of(variable_name: str, vocab_of: Mapping[str, str]) -> str | None:
    for feature in vocab_of:
        if f"/{feature}_embedding/" in variable_name or f"/{feature}_bias/" in variable_name:
            return feature
    return None


def warm_start_towers(towers: Mapping[str, Any], source_dir: Path, vocabularies: Mapping[str, list[str]],
                      vocab_of: Mapping[str, str]) -> dict[str, int]:
    """Copy weights saved by :func:`save_tower_weights` in ``source_dir`` into the (built) ``towers``.

    ``vocabularies`` are the new model's vocabularies (vocab name -> tokens, OOV rows follow them) and
    ``vocab_of`` maps an id feature to its vocabulary name. Returns counts: ``variables_copied``,
    ``variables_skipped`` (shape changed or absent) and ``id_rows_copied``.
    Raises DataError when ``source_dir`` holds no saved towers.
    """
    source_dir = Path(source_dir)
    if not (source_dir / WEIGHTS_FILE).is_file():
        raise DataError(f"{source_dir}: no {WEIGHTS_FILE} to warm-start from (a model trained by recflow >= this "
                        "version writes it next to retrieval/)")
    saved = np.load(source_dir / WEIGHTS_FILE)
    old_vocab: dict[str, list[str]] = json.loads((source_dir / VOCAB_FILE).read_text(encoding="utf-8"))
    counts = {"variables_copied": 0, "variables_skipped": 0, "id_rows_copied": 0}
    for name, tower in towers.items():
        for position, variable in enumerate(tower.variables):
            key = _key(name, position)
            if key not in saved.files:
                counts["variables_skipped"] += 1
                continue
            old = saved[key]
            new = variable.numpy()
            feature = _feature_of(variable.name, vocab_of)
            vocab = vocab_of.get(feature) if feature else None
            if vocab and vocab in old_vocab and vocab in vocabularies and old.shape[1:] == new.shape[1:]:
                old_tokens, new_tokens = old_vocab[vocab], vocabularies[vocab]
                old_pos = {t: i for i, t in enumerate(old_tokens)}
                rows_new, rows_old = [], []
                for i, token in enumerate(new_tokens):
                    j = old_pos.get(token)
                    if j is not None and j < len(old) and i < len(new):
                        rows_new.append(i)
                        rows_old.append(j)
                old_oov, new_oov = len(old) - len(old_tokens), len(new) - len(new_tokens)
                for k in range(min(old_oov, new_oov)):  # OOV rows, in order
                    rows_new.append(len(new_tokens) + k)
                    rows_old.append(len(old_tokens) + k)
                if rows_new:
                    new[np.asarray(rows_new)] = old[np.asarray(rows_old)]
                    variable.assign(new)
                    counts["variables_copied"] += 1
                    counts["id_rows_copied"] += len(rows_new)
                else:
                    counts["variables_skipped"] += 1
            elif old.shape == new.shape:
                variable.assign(old)
                counts["variables_copied"] += 1
            else:
                counts["variables_skipped"] += 1
    return counts
