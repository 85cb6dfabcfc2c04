"""The e-commerce world simulator: recflow's embedded data source and the environment for policy learning.

* :class:`World`: the latent ground truth (users, items, context effects, the true response model).
* :class:`LoggingPolicy`: the shop's existing recommender whose slates and propensities fill the log.
* :func:`generate_dataset`: the batch log generator behind ``recflow data generate``.
* :class:`ShopEnv`: a step-by-step environment over slates, for reinforcement learning and traffic simulation.

The generative model is documented in docs/simulator.md.
"""

from recflow.simulator.config import DriftConfig, RewardConfig, SimulatorConfig
from recflow.simulator.env import Observation, ShopEnv, StepResult
from recflow.simulator.generator import GenerationSummary, SimulatedLog, generate_dataset, simulate_log
from recflow.simulator.logging_policy import LoggingPolicy
from recflow.simulator.world import Context, World

__all__ = [
    "Context",
    "DriftConfig",
    "GenerationSummary",
    "LoggingPolicy",
    "Observation",
    "RewardConfig",
    "SimulatedLog",
    "ShopEnv",
    "SimulatorConfig",
    "StepResult",
    "World",
    "generate_dataset",
    "simulate_log",
]
