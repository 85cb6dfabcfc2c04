"""Model training: the TFRS trainer (retrieval and ranking)."""
