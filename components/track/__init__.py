"""Track: the light, never-cached step after each heavy step that logs its record in MLflow."""

from components.track.component import build, track

__all__ = ["build", "track"]
