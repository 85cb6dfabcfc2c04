"""The one interface every recommender in recflow implements: trained models, baselines and serving alike.

Evaluation compares anything that satisfies :class:`Recommender` under the same protocol, so a baseline and the
TFRS model are measured by the same code on the same split.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol, runtime_checkable


@runtime_checkable
class Recommender(Protocol):
    """Something that ranks catalog items for users."""

    name: str

    def recommend(
        self,
        user_ids: Sequence[str],
        k: int,
        exclude: Mapping[str, set[str]] | None = None,
    ) -> list[list[str]]:
        """Top-``k`` item ids for each user, best first, never containing that user's ``exclude`` items.

        Users unknown to the model still get ``k`` items (cold start), so results align with ``user_ids``.
        """
        ...
