"""Configuration of the e-commerce world simulator (the ``simulator`` section of the config)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class SimulatorConfig(BaseModel):
    """Size, seed and behaviour parameters of the simulated shop. See docs/simulator.md for the model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    users: int = Field(2000, gt=0, description="Number of users.")
    items: int = Field(1000, gt=0, description="Number of catalog items at day 0.")
    days: int = Field(14, gt=0, description="Days of traffic.")
    seed: int = Field(42, ge=0, description="Random seed; the same seed gives the same data.")
    start_date: str = Field("2026-01-05", description="First simulated day (UTC date).")
    slate_size: int = Field(10, gt=0, description="Items shown per recommendation request.")
