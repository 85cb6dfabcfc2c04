"""Configuration of the e-commerce world simulator (the ``simulator`` section of the config).

Every parameter of the generative model is here, with the symbol docs/simulator.md uses for it in brackets.
"""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DriftConfig(_Frozen):
    """A change of the world from a given simulated day on (for drift monitoring and retraining)."""

    day: int | None = Field(
        None, ge=0, description="0-based simulated day from which the drift applies; null: no drift."
    )
    preference_shift: float = Field(
        0.8,
        ge=0.0,
        le=1.0,
        description="Strength s of the preference shift: theta' = sqrt(1-s^2) theta + s theta_new.",
    )
    category_demand_shift: dict[str, float] = Field(
        default_factory=dict,
        description="Change of every user's preference logit for these categories from the drift day on (a "
        "seasonal demand shift, e.g. {toys: -1.5} after the holidays); added to the preference shift.",
    )
    new_items: int = Field(100, ge=0, description="Items added to the catalog on the drift day.")
    price_change_factor: float = Field(
        1.3, gt=0.0, description="Factor applied to the prices of the repriced items on the drift day."
    )
    price_change_share: float = Field(
        0.3, ge=0.0, le=1.0, description="Share of the catalog whose price changes on the drift day."
    )


class RewardConfig(_Frozen):
    """Weights of the environment's reward: r = sum of weight x count (revenue: x order value)."""

    click: float = Field(1.0, description="Reward per click.")
    add_to_cart: float = Field(0.0, description="Reward per add-to-cart.")
    purchase: float = Field(0.0, description="Reward per purchased item.")
    revenue: float = Field(0.0, description="Reward per currency unit of order value.")


class OrganicConfig(_Frozen):
    """The ``organic`` world preset: a shop whose log is mostly organic product views plus uniformly random
    recommendations with about 1% clicks (in the style of RecoGym, Rohde et al. 2018). docs/simulator.md
    has the model; the symbols in brackets refer to it."""

    users: int = Field(1000, gt=0, description="Training users (the batch log's users).")
    items: int = Field(10, ge=2, description="Products in the catalog [P].")
    days: int = Field(14, gt=0, description="Window in which the users' first visits start (days from start_date).")
    slate_size: int = Field(1, gt=0, le=100, description="Items per logged recommendation [K].")
    latent_dim: int = Field(5, gt=0, description="Dimension [d] of the user latent and the product embeddings.")
    organic_weight: float = Field(
        2.0, ge=0.0, description="Weight [alpha] of the user-product affinity in the organic (browsing) logits."
    )
    organic_popularity: float = Field(
        1.0, ge=0.0, description="Std [sigma_o] of the products' organic popularity (traffic every user sees)."
    )
    coview_weight: float = Field(
        1.0, ge=0.0, description="Weight [lambda] of the similarity to the previous view (item-to-item browsing)."
    )
    click_weight: float = Field(
        0.5,
        ge=0.0,
        description="Weight [beta] of the user-product affinity in the click logit (0.5 gives the ~1.7x "
        "most-viewed / random CTR ratio observed in the independent world; docs/simulator.md).",
    )
    click_embedding_noise: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="Share [rho] of the click embedding that is independent of the organic embedding: "
        "b_j = sqrt(1-rho^2) e_j + rho n_j.",
    )
    click_popularity: float = Field(
        0.5, ge=0.0, description="Std [sigma_b] of the products' own click appeal when recommended."
    )
    click_rate: float = Field(
        0.01,
        gt=0.0,
        lt=1.0,
        description="Mean P(click) of a uniformly random recommendation in the first slot; calibrates [c0].",
    )
    position_bias: float = Field(
        0.8, ge=0.0, description="Examination exponent [eta] of slots after the first: (k+1)^-eta."
    )
    taste_drift: float = Field(
        0.1,
        ge=0.0,
        le=1.0,
        description="Drift [delta] of the user latent between visits: w' = sqrt(1-delta^2) w + delta n.",
    )
    views_per_session: float = Field(
        5.0, ge=1.0, description="Mean organic views per visit (geometric, at least 1) [m_o]."
    )
    recommendations_per_visit: float = Field(
        1.5, ge=1.0, description="Mean recommendations shown per visit, after its views (geometric) [m_b]."
    )
    visits_per_user: float = Field(
        8.0, ge=1.0, description="Mean visits of a user (geometric, at least 1) [m_v]."
    )
    visit_gap_hours: float = Field(
        36.0, gt=0.0, description="Mean time between the end of a visit and the next (exponential)."
    )
    dwell_median_s: float = Field(35.0, gt=0.0, description="Median dwell time (seconds) of a product view.")
    policy_id: str = Field(
        "organic-uniform-random-v1", min_length=1, description="policy_id of the logged random recommendations."
    )

    @model_validator(mode="after")
    def _consistent(self) -> OrganicConfig:
        if self.slate_size > self.items:
            raise ValueError(f"slate_size ({self.slate_size}) cannot exceed items ({self.items})")
        return self


class SimulatorConfig(_Frozen):
    """Size, seed and behaviour parameters of the simulated shop. See docs/simulator.md for the model."""

    world: Literal["default", "organic"] = Field(
        "default",
        description="Which world to simulate: default (the shop below) or organic (the organic-views preset, "
        "parameters in the organic section).",
    )
    users: int = Field(2000, gt=0, description="Number of users.")
    items: int = Field(1000, gt=0, description="Number of catalog items at day 0.")
    days: int = Field(14, gt=0, description="Days of traffic.")
    seed: int = Field(42, ge=0, description="Random seed; the same seed gives the same data.")
    start_date: str = Field("2026-01-05", description="First simulated day (UTC date, YYYY-MM-DD).")
    slate_size: int = Field(10, gt=0, le=100, description="Items shown per recommendation request [K].")
    categories: tuple[str, ...] = Field(
        (
            "electronics",
            "computers",
            "phones",
            "home",
            "kitchen",
            "garden",
            "fashion",
            "shoes",
            "beauty",
            "sports",
            "toys",
            "books",
        ),
        min_length=1,
        description="Product category names [C = their number].",
    )
    segments: tuple[str, ...] = Field(
        ("bargain", "mainstream", "premium", "enthusiast"),
        min_length=1,
        description="User segments; users of a segment share a mean category taste and price sensitivity.",
    )
    regions: tuple[str, ...] = Field(
        ("north", "south", "east", "west"), min_length=1, description="Region names."
    )
    devices: tuple[str, ...] = Field(
        ("desktop", "mobile", "tablet"), min_length=1, description="Device classes."
    )
    brands_per_category: int = Field(8, gt=0, description="Brands per category.")
    sessions_per_user_per_day: float = Field(
        0.35, gt=0.0, description="Mean sessions per user per day [lambda], scaled by each user's activity."
    )
    max_sessions_per_user_per_day: int = Field(6, gt=0, description="Cap on a user's sessions in one day.")
    continue_probability: float = Field(
        0.55, ge=0.0, lt=1.0, description="Probability of another request after a slate without a click [q0]."
    )
    continue_after_click: float = Field(
        0.8, ge=0.0, lt=1.0, description="Probability of another request after a slate with a click [q1]."
    )
    max_requests_per_session: int = Field(20, gt=0, description="Cap on requests (slates) in one session.")
    position_bias: float = Field(
        0.8, ge=0.0, description="Examination exponent [eta]: P(examine position k) = (k+1)^-eta."
    )
    popularity_exponent: float = Field(
        1.0, ge=0.0, description="Zipf exponent [alpha] of the items' long-tail popularity."
    )
    popularity_weight: float = Field(0.5, ge=0.0, description="Weight [rho] of standardised log-popularity.")
    preference_scale: float = Field(
        1.2,
        ge=0.0,
        description="Std [sigma_p] of the users' category-preference logits (segment + individual).",
    )
    latent_dim: int = Field(8, gt=0, description="Dimension [d] of the user/item taste factors.")
    latent_weight: float = Field(0.8, ge=0.0, description="Weight [gamma] of the user-item factor affinity.")
    quality_weight: float = Field(0.4, ge=0.0, description="Weight [kappa] of the item's latent quality.")
    price_sensitivity: float = Field(
        1.0, ge=0.0, description="Median [beta] of the users' price sensitivity (log-normal across users)."
    )
    context_strength: float = Field(
        0.5, ge=0.0, description="Std [sigma_c] of the time-of-day, weekend and device effects."
    )
    click_rate: float = Field(
        0.03,
        gt=0.0,
        lt=1.0,
        description="Mean P(click) of an examined random (user, item) pair; calibrates the click intercept.",
    )
    cart_rate: float = Field(
        0.2,
        ge=0.05,
        le=0.6,
        description="Target share of clicks that lead to add-to-cart; the measured rate stays within +-40%.",
    )
    purchase_rate: float = Field(
        0.35,
        ge=0.05,
        le=0.8,
        description="Target share of carted items that are purchased; the measured rate stays within +-40%.",
    )
    remove_rate: float = Field(
        0.3,
        ge=0.0,
        le=1.0,
        description="Probability that a carted item that is not bought is removed (else abandoned).",
    )
    extra_quantity_mean: float = Field(
        0.3,
        ge=0.0,
        description="Mean of the Poisson number of extra units in a purchase (quantity = 1 + it).",
    )
    dwell_median_s: float = Field(
        35.0, gt=0.0, description="Median dwell time (seconds) of an item-page view."
    )
    satiation_shown: float = Field(
        0.4, ge=0.0, description="Satiation added to a category by a whole slate of it being shown [phi_s]."
    )
    satiation_click: float = Field(
        0.3, ge=0.0, description="Satiation added to a category per click [phi_c]."
    )
    satiation_purchase: float = Field(
        1.0, ge=0.0, description="Satiation added to a category per purchase [phi_b]."
    )
    satiation_weight: float = Field(
        1.0, ge=0.0, description="Attraction penalty [lambda_s] per unit of satiation."
    )
    satiation_half_life_hours: float = Field(
        12.0, gt=0.0, description="Half-life of satiation in hours of simulated time."
    )
    history_length: int = Field(
        20, gt=0, description="Recent clicked item ids shown in the environment's observation."
    )
    logging_temperature: float = Field(
        0.7, gt=0.0, description="Softmax temperature [T] of the logging policy."
    )
    logging_epsilon: float = Field(
        0.1, ge=0.0, le=1.0, description="Uniform-exploration share [epsilon] mixed into the logging policy."
    )
    logging_popularity_noise: float = Field(
        0.3, ge=0.0, description="Std of the noise on the logging policy's popularity estimate."
    )
    logging_policy_id: str = Field(
        "logging-softmax-v1", min_length=1, description="policy_id of logged slates."
    )
    large_catalog_items: int | None = Field(
        60000,
        gt=0,
        description="From this catalog size (items incl. drift's new items) on, the logging policy samples "
        "slates per user segment (O(segments x items) memory) instead of from dense (users x items) Gumbel "
        "noise: the same distribution and propensities from another random stream, so a world below it keeps "
        "its exact events (60,000: above every configured world, e.g. the serving benchmark's 50,000 items); "
        "null: never.",
    )
    drift: DriftConfig = Field(DriftConfig(), description="Drift from a given day on.")
    reward: RewardConfig = Field(
        RewardConfig(), description="Reward weights of the step-by-step environment."
    )
    organic: OrganicConfig = Field(
        OrganicConfig(), description="Parameters of the organic-views world (used when world is organic)."
    )

    @field_validator("start_date", mode="before")
    @classmethod
    def _valid_date(cls, value: object) -> object:
        if isinstance(value, dt.datetime):
            value = value.date()
        if isinstance(value, dt.date):  # an unquoted YAML date
            return value.isoformat()
        if not isinstance(value, str):
            return value
        try:
            dt.date.fromisoformat(value)
        except ValueError:
            raise ValueError(f"start_date must be a date like 2026-01-05, got {value!r}") from None
        return value

    @field_validator("categories", "segments", "regions", "devices")
    @classmethod
    def _unique_names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(value)) != len(value) or any(not v for v in value):
            raise ValueError(f"names must be unique and non-empty, got {list(value)}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> SimulatorConfig:
        if self.slate_size > self.items:
            raise ValueError(f"slate_size ({self.slate_size}) cannot exceed items ({self.items})")
        unknown = sorted(set(self.drift.category_demand_shift) - set(self.categories))
        if unknown:
            raise ValueError(f"drift.category_demand_shift: unknown categories {unknown} "
                             f"(known: {list(self.categories)})")
        return self

    @property
    def start(self) -> dt.date:
        """The first simulated day as a date."""
        return dt.date.fromisoformat(self.start_date)
