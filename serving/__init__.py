"""Online serving: the in-process :class:`Recommender` API and the HTTP service over it (docs/serving.md)."""

from serving.config import ServingConfig

__all__ = ["Recommender", "ServingConfig"]


def __getattr__(name: str) -> object:
    # The recommender imports TensorFlow; load it only when asked for.
    if name == "Recommender":
        from serving.recommender import Recommender

        return Recommender
    raise AttributeError(name)
