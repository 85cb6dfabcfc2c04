"""The serving config section (defined in the core: :mod:`recflow.serving_config`)."""

from recflow.serving_config import ServingConfig

__all__ = ["ServingConfig"]
