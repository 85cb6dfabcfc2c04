"""The latent ground truth of the simulated shop: users, items, context effects and the true response model.

Everything here is drawn once, deterministically, from (config, seed). The generator and the environment only
*sample* from these probabilities; models trained on the logged data try to recover them. The equations are in
docs/simulator.md; symbols in comments refer to it.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np
import pandas as pd

from recflow.errors import ConfigError
from recflow.simulator.config import SimulatorConfig

#: Spawn keys that separate the random streams drawn from one seed (see :func:`stream`). DRIFT_STREAM holds
#: all of the drift's randomness (new items, repricing, preference shift), so a drifted world equals the no-drift
#: world of the same seed before the drift day.
WORLD_STREAM, POLICY_STREAM, TRAFFIC_STREAM, ENV_STREAM, DRIFT_STREAM = 0, 1, 2, 3, 4
#: Sub-keys of DRIFT_STREAM.
DRIFT_ITEMS, DRIFT_REPRICING, DRIFT_PREFERENCES, DRIFT_POLICY = 0, 1, 2, 3
#: Hour bins of the time-of-day effect: night 0-5, morning 6-11, afternoon 12-17, evening 18-23.
DAYPARTS: tuple[str, ...] = ("night", "morning", "afternoon", "evening")
COLORS: tuple[str, ...] = ("black", "white", "grey", "red", "blue", "green", "beige", "brown")
STYLES: tuple[str, ...] = ("classic", "modern", "sport", "basic", "premium")
MS_PER_DAY = 86_400_000


def stream(seed: int, *key: int) -> np.random.Generator:
    """An independent PCG64 generator for one purpose (and day) of one seed, via SeedSequence spawn keys.

    Keys, not a shared generator, make each day's traffic independent of how many days are generated.
    """
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed, spawn_key=key)))


def _hour_profile() -> np.ndarray:
    """Share of sessions starting in each UTC hour: a quiet night, a lunch peak and a larger evening peak."""
    h = np.arange(24, dtype=float)
    w = 0.15 + 0.8 * np.exp(-((h - 12.5) ** 2) / 8.0) + 1.3 * np.exp(-((h - 20.5) ** 2) / 6.0)
    return w / w.sum()


HOUR_PROFILE: np.ndarray = _hour_profile()


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _solve_intercept(x: np.ndarray, weights: np.ndarray, target: float) -> float:
    """The intercept b with weighted-mean sigmoid(b + x) == target (bisection; the mean is monotone in b)."""
    lo, hi = -30.0, 30.0
    wsum = weights.sum()
    for _ in range(80):
        mid = 0.5 * (lo + hi)
        if float((weights * _sigmoid(mid + x)).sum() / wsum) < target:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


@dataclass(frozen=True)
class Context:
    """The context of a batch of requests (arrays of length B): what changes behaviour besides the user."""

    hour: np.ndarray  # int, 0-23
    weekday: np.ndarray  # int, 0 = Monday
    device: np.ndarray  # int index into config.devices

    @classmethod
    def single(cls, hour: int, weekday: int, device: int) -> Context:
        """The context of one request."""
        return cls(np.array([hour]), np.array([weekday]), np.array([device]))


class World:
    """Users, items and the true response model of one simulated shop.

    Arrays are indexed by user index (0..users-1) and item index (0..items+new_items-1); ids are derived from
    indices (``u000123``, ``i000045``). Items added by drift exist from the start but are only available from
    their ``created_day``.

    The base world (users, the first ``items`` items, context effects, calibration) is drawn from WORLD_STREAM
    exactly as without drift; everything the drift adds or changes is drawn from DRIFT_STREAM. So before the
    drift day a drifted world behaves exactly like the no-drift world of the same seed.
    """

    def __init__(self, config: SimulatorConfig, seed: int | None = None) -> None:
        if config.world != "default":
            raise ConfigError(
                f"simulator.world is {config.world!r}: World, ShopEnv and simulate_log are the default world; "
                "use recflow.simulator.organic (OrganicShop, simulate_organic_log) or generate_dataset"
            )
        self.config = config
        self.seed = config.seed if seed is None else seed
        rng = stream(self.seed, WORLD_STREAM)
        c = config
        self.n_categories = len(c.categories)
        self.n_users = n_users = c.users
        self.n_base_items = c.items
        drift_day = c.drift.day
        n_new = c.drift.new_items if drift_day is not None else 0
        self.n_items = c.items + n_new
        n_items = c.items  # the base catalog, drawn from WORLD_STREAM; drift items are appended below
        self.start = c.start
        self.start_ms = int(pd.Timestamp(c.start_date, tz="UTC").value // 1_000_000)

        cat_share, cat_log_price, brand_p = self._draw_items(rng, n_items)
        seg_sd, ind_sd = self._draw_users(rng, n_users)
        self._draw_context_effects(rng)
        self._calibrate(rng)

        # --- the drift, from its own streams
        self.item_repriced = np.zeros(c.items, dtype=bool)
        self.user_preferences_drifted = self.user_preferences
        if drift_day is not None:
            self._add_drift(n_new, drift_day, cat_share, cat_log_price, brand_p, seg_sd, ind_sd)

        self.user_ids = np.array([f"u{i:06d}" for i in range(n_users)], dtype=object)
        self.item_ids = np.array([f"i{i:06d}" for i in range(self.n_items)], dtype=object)
        self._item_index = {item_id: i for i, item_id in enumerate(self.item_ids)}

    def _draw_items(self, rng: np.random.Generator, n_items: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The base catalog from WORLD_STREAM; returns the category shares, the categories' log prices and the
        brand probabilities (the drift's new items draw from them too)."""
        c, n_cat = self.config, self.n_categories
        cat_share = rng.dirichlet(np.full(n_cat, 3.0))
        self.item_category = rng.choice(n_cat, size=n_items, p=cat_share)
        cat_log_price = rng.uniform(np.log(8.0), np.log(400.0), size=n_cat)
        log_price = cat_log_price[self.item_category] + rng.normal(0.0, 0.5, size=n_items)
        self.base_price = np.maximum(np.round(np.exp(log_price)) - 0.01, 0.99)
        # Reference price of a category: the median price there; the price term uses log(price / reference).
        self.category_reference_price = np.array(
            [
                np.median(self.base_price[self.item_category == k])
                if np.any(self.item_category == k)
                else np.exp(cat_log_price[k])
                for k in range(n_cat)
            ]
        )
        brand_weights = 1.0 / np.arange(1, c.brands_per_category + 1)
        self.item_brand = rng.choice(
            c.brands_per_category, size=n_items, p=brand_weights / brand_weights.sum()
        )
        self.item_color = rng.integers(len(COLORS), size=n_items)
        self.item_style = rng.integers(len(STYLES), size=n_items)
        self.item_quality = rng.normal(0.0, 1.0, size=n_items)
        self.item_factors = rng.normal(0.0, 1.0, size=(n_items, c.latent_dim))
        # Long-tail popularity: Zipf weights over a random ranking of the items.
        ranks = rng.permutation(n_items) + 1
        self.popularity = ranks.astype(float) ** -c.popularity_exponent
        self.popularity /= self.popularity.sum()
        log_pop = np.log(self.popularity)
        sd = log_pop.std()
        self.popularity_z = (log_pop - log_pop.mean()) / sd if sd > 0 else np.zeros(n_items)
        self.item_created_day = np.zeros(n_items, dtype=np.int64)
        age_ms = (rng.uniform(1.0, 365.0, size=n_items) * MS_PER_DAY).astype(np.int64)
        self.item_created_ms = self.start_ms - age_ms
        # Draws kept so that WORLD_STREAM (and so the no-drift world) is unchanged; the drift's repricing and
        # preference shift come from DRIFT_STREAM below.
        rng.random(n_items)

        return cat_share, cat_log_price, brand_weights / brand_weights.sum()

    def _draw_users(self, rng: np.random.Generator, n_users: int) -> tuple[float, float]:
        """The users from WORLD_STREAM; returns the segment- and individual-level preference spreads."""
        c, n_cat, n_seg = self.config, self.n_categories, len(self.config.segments)
        seg_share = rng.dirichlet(np.full(n_seg, 5.0))
        self.user_segment = rng.choice(n_seg, size=n_users, p=seg_share)
        seg_sd, ind_sd = c.preference_scale * np.sqrt(0.6), c.preference_scale * np.sqrt(0.4)
        #: Mean category-preference logits of each segment (what a coarse, segment-level policy can know).
        self.segment_preferences = rng.normal(0.0, seg_sd, size=(n_seg, n_cat))
        self.user_preferences = self.segment_preferences[self.user_segment] + rng.normal(
            0.0, ind_sd, size=(n_users, n_cat)
        )
        rng.normal(0.0, seg_sd, size=(n_seg, n_cat))
        rng.normal(0.0, ind_sd, size=(n_users, n_cat))
        seg_price_offset = rng.normal(0.0, 0.4, size=n_seg)
        self.user_price_sensitivity = c.price_sensitivity * np.exp(
            seg_price_offset[self.user_segment] + rng.normal(0.0, 0.3, size=n_users)
        )
        self.user_factors = rng.normal(0.0, 1.0, size=(n_users, c.latent_dim))
        region_share = rng.dirichlet(np.full(len(c.regions), 3.0))
        self.user_region = rng.choice(len(c.regions), size=n_users, p=region_share)
        self.user_device_mix = rng.dirichlet(np.full(len(c.devices), 1.0), size=n_users)
        activity = rng.lognormal(0.0, 0.8, size=n_users)
        self.user_activity = activity / activity.mean()
        self.user_signup_ms = self.start_ms - (rng.uniform(1.0, 730.0, size=n_users) * MS_PER_DAY).astype(
            np.int64
        )

        return seg_sd, ind_sd

    def _draw_context_effects(self, rng: np.random.Generator) -> None:
        """The effects of daypart, weekend and device on interest and the funnel, from WORLD_STREAM."""
        c, n_cat = self.config, self.n_categories
        sc = c.context_strength
        self.daypart_effect = rng.normal(0.0, sc, size=(len(DAYPARTS), n_cat))
        self.weekend_effect = rng.normal(0.0, sc, size=n_cat)
        self.device_click_effect = rng.normal(0.0, sc / 2, size=len(c.devices))
        self.device_cart_effect = rng.normal(0.0, sc, size=len(c.devices))
        self.device_purchase_effect = rng.normal(0.0, sc, size=len(c.devices))
        self.weekend_purchase_effect = float(rng.normal(0.0, sc))


    def _calibrate(self, rng: np.random.Generator) -> None:
        """The funnel intercepts, calibrated on random (user, item) pairs at day 0 to the configured rates."""
        c, n_users = self.config, self.n_users
        m = 20_000
        cu = rng.integers(n_users, size=m)
        ci = rng.integers(c.items, size=m)
        x = self._static_interest(cu[:, None], ci[:, None], day=0)[:, 0]
        self.interest_mean, self.interest_sd = float(x.mean()), float(x.std() or 1.0)
        self.click_intercept = _solve_intercept(x, np.ones(m), c.click_rate)
        p_click = _sigmoid(self.click_intercept + x)
        z = (x - self.interest_mean) / self.interest_sd
        self.cart_intercept = _solve_intercept(0.4 * z, p_click, c.cart_rate)
        p_cart = _sigmoid(self.cart_intercept + 0.4 * z)
        self.purchase_intercept = _solve_intercept(0.3 * z, p_click * p_cart, c.purchase_rate)


    def _add_drift(
        self,
        n_new: int,
        drift_day: int,
        cat_share: np.ndarray,
        cat_log_price: np.ndarray,
        brand_p: np.ndarray,
        seg_sd: float,
        ind_sd: float,
    ) -> None:
        """Append the drift's new items and draw its repricing and preference shift, all from DRIFT_STREAM.

        New items follow the base catalog's distributions (category shares, price levels, brands, quality,
        factors); their popularity is that of a random rank of the base catalog's Zipf ranking, standardised
        like the base items', so the base items' popularity (and every draw before the drift) is unchanged.
        """
        c = self.config
        rng = stream(self.seed, DRIFT_STREAM, DRIFT_ITEMS)
        cat = rng.choice(self.n_categories, size=n_new, p=cat_share)
        log_price = cat_log_price[cat] + rng.normal(0.0, 0.5, size=n_new)
        ranks = rng.integers(1, c.items + 1, size=n_new).astype(float)
        log_pop = np.log(self.popularity)
        zipf_total = (np.arange(1, c.items + 1, dtype=float) ** -c.popularity_exponent).sum()
        new_pop = ranks**-c.popularity_exponent / zipf_total
        sd = log_pop.std()
        new_z = (np.log(new_pop) - log_pop.mean()) / sd if sd > 0 else np.zeros(n_new)
        self.item_category = np.concatenate([self.item_category, cat])
        new_price = np.maximum(np.round(np.exp(log_price)) - 0.01, 0.99)
        self.base_price = np.concatenate([self.base_price, new_price])
        self.item_brand = np.concatenate(
            [self.item_brand, rng.choice(c.brands_per_category, size=n_new, p=brand_p)]
        )
        self.item_color = np.concatenate([self.item_color, rng.integers(len(COLORS), size=n_new)])
        self.item_style = np.concatenate([self.item_style, rng.integers(len(STYLES), size=n_new)])
        self.item_quality = np.concatenate([self.item_quality, rng.normal(0.0, 1.0, size=n_new)])
        new_factors = rng.normal(0.0, 1.0, size=(n_new, c.latent_dim))
        self.item_factors = np.concatenate([self.item_factors, new_factors])
        self.popularity = np.concatenate([self.popularity, new_pop])
        self.popularity_z = np.concatenate([self.popularity_z, new_z])
        new_days = np.full(n_new, drift_day, dtype=np.int64)
        self.item_created_day = np.concatenate([self.item_created_day, new_days])
        self.item_created_ms = np.concatenate(
            [self.item_created_ms, np.full(n_new, self.start_ms + drift_day * MS_PER_DAY, dtype=np.int64)]
        )
        reprice_draw = stream(self.seed, DRIFT_STREAM, DRIFT_REPRICING).random(c.items)
        repriced = reprice_draw < c.drift.price_change_share
        self.item_repriced = np.concatenate([repriced, np.zeros(n_new, dtype=bool)])
        prefs = stream(self.seed, DRIFT_STREAM, DRIFT_PREFERENCES)
        new_seg = prefs.normal(0.0, seg_sd, size=(len(c.segments), self.n_categories))
        individual = prefs.normal(0.0, ind_sd, size=(self.n_users, self.n_categories))
        new_pref = new_seg[self.user_segment] + individual
        s = c.drift.preference_shift
        drifted = np.sqrt(1.0 - s * s) * self.user_preferences + s * new_pref
        for name, shift in c.drift.category_demand_shift.items():
            drifted[:, c.categories.index(name)] += shift
        self.user_preferences_drifted = drifted

    # ------------------------------------------------------------------ time-dependent ground truth
    def drifted(self, day: int) -> bool:
        """Whether the drift applies on ``day``."""
        return self.config.drift.day is not None and day >= self.config.drift.day

    def prices(self, day: int) -> np.ndarray:
        """Every item's price on ``day`` (repriced items change on the drift day)."""
        if self.drifted(day):
            return np.where(
                self.item_repriced, self.base_price * self.config.drift.price_change_factor, self.base_price
            ).round(2)
        return self.base_price

    def preferences(self, day: int) -> np.ndarray:
        """The users' category-preference logits on ``day`` (users x categories)."""
        return self.user_preferences_drifted if self.drifted(day) else self.user_preferences

    def available_items(self, day: int) -> np.ndarray:
        """Indices of the items in the catalog on ``day``."""
        return np.flatnonzero(self.item_created_day <= day)

    def item_index(self, item_ids: list[str] | tuple[str, ...]) -> np.ndarray:
        """Item indices of item id strings; raises KeyError naming the first unknown id."""
        try:
            return np.array([self._item_index[i] for i in item_ids], dtype=np.int64)
        except KeyError as exc:
            raise KeyError(f"unknown item id {exc.args[0]!r}") from None

    @staticmethod
    def examination(positions: np.ndarray | int, position_bias: float) -> np.ndarray:
        """P(a user examines 0-based position k) = (k + 1) ** -eta."""
        return (np.asarray(positions, dtype=float) + 1.0) ** -position_bias

    # ------------------------------------------------------------------ the response model
    def _static_interest(self, users: np.ndarray, items: np.ndarray, day: int) -> np.ndarray:
        """x_ui: taste + factor affinity + quality + popularity - price term (no context, no satiation)."""
        c = self.config
        cat = self.item_category[items]
        pref = self.preferences(day)[users, cat]
        affinity = np.einsum("...d,...d->...", self.user_factors[users], self.item_factors[items])
        affinity = affinity / np.sqrt(c.latent_dim)
        log_price_ratio = np.log(self.prices(day)[items] / self.category_reference_price[cat])
        return (
            pref
            + c.latent_weight * affinity
            + c.quality_weight * self.item_quality[items]
            + c.popularity_weight * self.popularity_z[items]
            - self.user_price_sensitivity[users] * log_price_ratio
        )

    def attraction_logits(
        self,
        user_idx: np.ndarray,
        item_idx_matrix: np.ndarray,
        context: Context,
        day: int,
        satiation: np.ndarray | None = None,
    ) -> np.ndarray:
        """Logit of P(click | examined) for users (B,) and items (B, K); ``satiation`` is (B, categories)."""
        users = np.asarray(user_idx)[:, None]
        items = np.asarray(item_idx_matrix)
        cat = self.item_category[items]
        daypart = np.asarray(context.hour) // 6
        weekend = (np.asarray(context.weekday) >= 5)[:, None]
        logit = (
            self.click_intercept
            + self._static_interest(users, items, day)
            + self.daypart_effect[daypart[:, None], cat]
            + np.where(weekend, self.weekend_effect[cat], 0.0)
            + self.device_click_effect[np.asarray(context.device)][:, None]
        )
        if satiation is not None:
            logit = logit - self.config.satiation_weight * np.take_along_axis(satiation, cat, axis=1)
        return logit

    def click_probabilities(
        self,
        user_idx: np.ndarray,
        item_idx_matrix: np.ndarray,
        positions: np.ndarray,
        context: Context,
        day: int,
        satiation: np.ndarray | None = None,
    ) -> np.ndarray:
        """P(click) of each shown item (B, K): examination(position) x attraction (position-based model)."""
        exam = self.examination(positions, self.config.position_bias)
        return exam * _sigmoid(self.attraction_logits(user_idx, item_idx_matrix, context, day, satiation))

    def funnel_probabilities(
        self, user_idx: np.ndarray, item_idx_matrix: np.ndarray, context: Context, day: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """(P(add to cart | click), P(purchase | carted)) of each item (B, K)."""
        users = np.asarray(user_idx)[:, None]
        items = np.asarray(item_idx_matrix)
        z = (self._static_interest(users, items, day) - self.interest_mean) / self.interest_sd
        device = np.asarray(context.device)[:, None]
        weekend = (np.asarray(context.weekday) >= 5)[:, None]
        p_cart = _sigmoid(self.cart_intercept + 0.4 * z + self.device_cart_effect[device])
        p_buy = _sigmoid(
            self.purchase_intercept
            + 0.3 * z
            + self.device_purchase_effect[device]
            + np.where(weekend, self.weekend_purchase_effect, 0.0)
        )
        return p_cart, p_buy

    def item_values(
        self,
        user_idx: np.ndarray,
        item_idx_matrix: np.ndarray,
        context: Context,
        day: int,
        satiation: np.ndarray | None,
        weights: tuple[float, float, float, float],
    ) -> np.ndarray:
        """Expected reward of each item if examined (B, K) for weights (click, cart, purchase, revenue)."""
        w_click, w_cart, w_buy, w_rev = weights
        attract = _sigmoid(self.attraction_logits(user_idx, item_idx_matrix, context, day, satiation))
        p_cart, p_buy = self.funnel_probabilities(user_idx, item_idx_matrix, context, day)
        order_value = self.prices(day)[np.asarray(item_idx_matrix)] * (1.0 + self.config.extra_quantity_mean)
        return attract * (w_click + p_cart * (w_cart + p_buy * (w_buy + w_rev * order_value)))

    # ------------------------------------------------------------------ tables in the recflow schema
    def items_frame(self, day: int | None = None) -> pd.DataFrame:
        """The catalog in the recflow ``items`` schema, with prices as of ``day`` (default: the last day).

        Items added by drift are included; their ``created_at`` is the drift day.
        """
        c = self.config
        day = c.days - 1 if day is None else day
        cats = np.array(c.categories, dtype=object)
        brand = [f"{cats[k]}-brand-{b:02d}" for k, b in zip(self.item_category, self.item_brand, strict=True)]
        attributes = [
            f"color={COLORS[a]};style={STYLES[b]}"
            for a, b in zip(self.item_color, self.item_style, strict=True)
        ]
        return pd.DataFrame(
            {
                "item_id": self.item_ids,
                "category": cats[self.item_category],
                "price": self.prices(day),
                "brand": brand,
                "attributes": attributes,
                "created_at": pd.to_datetime(self.item_created_ms, unit="ms", utc=True),
            }
        )

    def users_frame(self) -> pd.DataFrame:
        """The users in the recflow ``users`` schema (observable attributes only)."""
        c = self.config
        return pd.DataFrame(
            {
                "user_id": self.user_ids,
                "segment": np.array(c.segments, dtype=object)[self.user_segment],
                "region": np.array(c.regions, dtype=object)[self.user_region],
                "signup_at": pd.to_datetime(self.user_signup_ms, unit="ms", utc=True),
            }
        )

    def date(self, day: int) -> dt.date:
        """The calendar date of simulated ``day``."""
        return self.start + dt.timedelta(days=day)

    def weekday(self, day: int) -> int:
        """Weekday of simulated ``day`` (0 = Monday)."""
        return self.date(day).weekday()
