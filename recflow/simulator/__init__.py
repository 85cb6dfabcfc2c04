"""The e-commerce world simulator: recflow's embedded data source and the environment for policy learning."""

from recflow.simulator.config import SimulatorConfig

__all__ = ["SimulatorConfig"]
