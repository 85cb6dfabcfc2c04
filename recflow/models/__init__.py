"""TFRS models: the two-tower retrieval model, the click ranking model, their raw-feature exports and loading."""

from recflow.models.loading import TFRSRecommender, load_recommender

__all__ = ["TFRSRecommender", "load_recommender"]
