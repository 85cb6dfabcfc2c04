"""Transform: point-in-time features and tf.Transform (vocabularies, scaling) on Apache Beam."""

from components.transform.component import build, transform

__all__ = ["build", "transform"]
