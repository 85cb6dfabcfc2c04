"""A bundle of kind ``baseline``: the run's best baseline, served when its candidate lost and no champion existed.

:class:`BaselineBundle` wraps a :class:`recflow.servable_baseline.ServableBaseline` (refitted at load from the
bundle's ``baseline/`` part, exactly as the Evaluator built it) with the few attributes the request path needs.
A slate is the baseline's own top-k for the user -- from the history in the request when there is one, else from
the user's training history, else popularity -- in order, without exploration (propensity 1) and without a
ranking model, a policy or explanations; feedback is logged and counted per variant like any other bundle's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from recflow.errors import DataError
from recflow.servable_baseline import BASELINE_PART, ServableBaseline

KIND = "baseline"


def is_baseline_bundle(path: str | Path) -> bool:
    """Whether the bundle directory ``path`` holds a baseline (a ``baseline/`` part) rather than a model."""
    return (Path(path) / BASELINE_PART).is_dir()


@dataclass
class BaselineBundle:
    """A loaded baseline bundle (see the module docstring)."""

    version: str
    path: Path
    model: ServableBaseline
    item_ids: np.ndarray = field(init=False)
    kind: str = field(default=KIND, init=False)

    def __post_init__(self) -> None:
        self.item_ids = np.array(self.model.catalog, dtype=object)
        self.item_index = {str(i): n for n, i in enumerate(self.item_ids)}
        train_users = getattr(self.model.model, "_user_pos", None) or getattr(self.model.model, "_histories", {})
        self.user_index = {str(u): n for n, u in enumerate(train_users)}

    @classmethod
    def load(cls, path: str | Path, version: str = "local") -> BaselineBundle:
        path = Path(path)
        return cls(version, path, ServableBaseline.load(path / BASELINE_PART))

    @property
    def label(self) -> str:
        """Which baseline this is (``most_viewed``, ``item_knn``, ...)."""
        return self.model.label

    @property
    def description(self) -> dict[str, Any]:
        """What the store's manifest records about it: label, metric, value and why it was chosen."""
        keys = ("label", "name", "metric", "value", "candidate_value", "reason")
        return {k: self.model.spec.get(k) for k in keys}

    def add_items(self, items: Any) -> int:
        """Catalog items without events cannot be ranked by a count; the baseline keeps its own items."""
        return 0

    def slate(
        self, user_id: str, k: int, history: list[tuple[str, str, Any]] | None, exclude: list[str] | None
    ) -> list[str]:
        """The baseline's top-``k`` item ids for the request (see :meth:`ServableBaseline.recommend`)."""
        items = self.model.recommend(user_id, k, history or None, exclude)
        if not items:
            raise DataError("exclude: every item the baseline knows is excluded")
        return items
