"""The e-commerce world simulator: recflow's embedded data source and the environment for policy learning.

* :class:`World`: the latent ground truth (users, items, context effects, the true response model).
* :class:`LoggingPolicy`: the shop's existing recommender whose slates and propensities fill the log.
* :func:`generate_dataset`: the batch log generator behind ``recflow data generate``.
* :class:`ShopEnv`: a step-by-step environment over slates, for reinforcement learning and traffic simulation.
* :class:`OrganicShop`, :func:`simulate_organic_log`: the ``organic`` world preset (mostly organic views, uniformly
  random logged recommendations, new users online); :class:`HistoryBayesRecommender`, its history-Bayes ceiling.

The generative model is documented in docs/simulator.md.
"""

from recflow.simulator.config import DriftConfig, OrganicConfig, RewardConfig, SimulatorConfig
from recflow.simulator.env import Observation, ShopEnv, StepResult
from recflow.simulator.generator import GenerationSummary, SimulatedLog, generate_dataset, simulate_log
from recflow.simulator.logging_policy import LoggingPolicy
from recflow.simulator.organic import (
    HistoryBayesRecommender,
    HistoryPosterior,
    OrganicLog,
    OrganicShop,
    OrganicUser,
    OrganicWorld,
    SlateFeedback,
    measure_headroom,
    simulate_organic_log,
)
from recflow.simulator.world import Context, World

__all__ = [
    "Context",
    "DriftConfig",
    "GenerationSummary",
    "HistoryBayesRecommender",
    "HistoryPosterior",
    "LoggingPolicy",
    "Observation",
    "OrganicConfig",
    "OrganicLog",
    "OrganicShop",
    "OrganicUser",
    "OrganicWorld",
    "RewardConfig",
    "SimulatedLog",
    "ShopEnv",
    "SimulatorConfig",
    "SlateFeedback",
    "StepResult",
    "World",
    "generate_dataset",
    "measure_headroom",
    "simulate_log",
    "simulate_organic_log",
]
