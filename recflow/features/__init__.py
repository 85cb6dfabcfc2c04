"""Feature engineering: point-in-time behaviour features (pandas) and the tf.Transform step (Beam)."""
