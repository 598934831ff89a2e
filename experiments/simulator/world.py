"""The simulated marketplace's fixed state: users, sellers, items and their latent truth.

Everything here is drawn once from the seed. Observable attributes go into the event
log; latent ones (tastes, quality, spend band) stay inside the simulator and drive the
buyers in :mod:`experiments.simulator.behaviour`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from experiments.config import SimulatorConfig

__all__ = ["COUNTRIES", "DEVICES", "LATENT_DIM", "World", "build_world"]

COUNTRIES: tuple[str, ...] = ("DE", "FR", "GB", "ES", "IT", "NL", "PL", "SE")
DEVICES: tuple[str, ...] = ("mobile", "desktop", "tablet")
LATENT_DIM = 8
DAY_US = 86_400 * 1_000_000

_COUNTRY_P = np.array([0.25, 0.18, 0.17, 0.12, 0.12, 0.06, 0.06, 0.04])
_DEVICE_P = np.array([0.62, 0.32, 0.06])
_BAND_P = np.array([0.45, 0.4, 0.15])  # low, mid, high spenders


@dataclass(frozen=True)
class World:
    """Arrays indexed by id: user ``u`` is row ``u`` of every ``user_*`` array, and so on.

    Times are microseconds since the epoch (UTC). ``seller_rating`` is NaN for sellers
    without a published rating. ``item_log_popularity`` is what the logging policy knows
    about an item (historical sales rank); it correlates with, but is not, the truth.
    """

    # users
    user_signup_us: np.ndarray
    user_country: np.ndarray  # index into COUNTRIES
    user_device: np.ndarray  # index into DEVICES
    user_band: np.ndarray  # 0 low, 1 mid, 2 high spender
    user_activity: np.ndarray
    user_taste: np.ndarray  # (U, C) category preferences, rows sum to 1
    user_latent: np.ndarray  # (U, LATENT_DIM)
    # sellers
    seller_created_us: np.ndarray
    seller_quality: np.ndarray
    seller_rating: np.ndarray
    seller_is_new: np.ndarray  # joined during the simulated period
    # items
    item_seller: np.ndarray
    item_category: np.ndarray
    item_price: np.ndarray
    item_list_price: np.ndarray
    item_margin: np.ndarray
    item_created_us: np.ndarray
    item_in_stock: np.ndarray
    item_stock_qty: np.ndarray
    item_quality: np.ndarray
    item_latent: np.ndarray  # (I, LATENT_DIM)
    item_log_popularity: np.ndarray
    # categories
    category_median_price: np.ndarray
    category_popularity: np.ndarray

    @property
    def n_users(self) -> int:
        return len(self.user_signup_us)

    @property
    def n_items(self) -> int:
        return len(self.item_price)

    @property
    def n_sellers(self) -> int:
        return len(self.seller_created_us)

    @property
    def item_is_new_seller(self) -> np.ndarray:
        """Whether each item's seller joined during the simulated period."""
        return self.seller_is_new[self.item_seller]

    @property
    def item_discount(self) -> np.ndarray:
        return 1.0 - self.item_price / self.item_list_price


def build_world(config: SimulatorConfig) -> World:
    """Draw the marketplace for ``config`` (deterministic in ``config.seed``)."""
    rng = np.random.default_rng([config.seed, 7919])
    start, end = config.start_us, config.end_us
    n_u, n_s, n_i, n_c = config.users, config.sellers, config.items, config.categories

    cat_pop = rng.dirichlet(np.full(n_c, 2.0))
    cat_median = np.exp(rng.normal(np.log(30.0), 0.8, n_c))

    # Users: tastes concentrate on a few categories, biased to the popular ones.
    new_user = rng.random(n_u) < config.new_user_share
    signup = np.where(new_user, rng.integers(start, end, n_u),
                      start - rng.integers(DAY_US, 720 * DAY_US, n_u))
    taste = rng.dirichlet(config.taste_concentration * n_c * cat_pop + 1e-3, size=n_u)
    taste = np.clip(taste, 1e-9, None)
    taste = (taste / taste.sum(axis=1, keepdims=True)).astype(np.float32)
    user_latent = rng.normal(0.0, 1.0 / np.sqrt(LATENT_DIM), (n_u, LATENT_DIM)).astype(np.float32)

    # Sellers: some join during the period; they have no rating yet.
    seller_new = rng.random(n_s) < config.new_seller_share
    seller_created = np.where(seller_new, rng.integers(start, end - DAY_US // 2 if end - start > DAY_US else end, n_s),
                              start - rng.integers(30 * DAY_US, 1500 * DAY_US, n_s))
    seller_quality = rng.normal(0.0, 1.0, n_s)
    rating = np.clip(4.2 + 0.35 * seller_quality + rng.normal(0, 0.15, n_s), 1.0, 5.0).round(2)
    rating = np.where(seller_new, np.nan, rating)
    seller_main_cat = rng.choice(n_c, size=n_s, p=cat_pop)
    # Established sellers list more items; new sellers start with a handful.
    seller_weight = np.where(seller_new, 0.3, rng.lognormal(0.0, 1.0, n_s))

    # Items: every seller gets at least one.
    item_seller = np.concatenate([np.arange(n_s), rng.choice(n_s, n_i - n_s, p=seller_weight / seller_weight.sum())])
    item_seller = rng.permutation(item_seller)
    own_cat = rng.random(n_i) < 0.7
    item_cat = np.where(own_cat, seller_main_cat[item_seller], rng.choice(n_c, n_i, p=cat_pop))
    price = np.round(cat_median[item_cat] * np.exp(rng.normal(0.0, 0.5, n_i)), 2).clip(0.5, None)
    discounted = rng.random(n_i) < 0.3
    discount = np.where(discounted, rng.uniform(0.05, 0.5, n_i), 0.0)
    list_price = np.round(price / (1.0 - discount), 2).clip(price, None)
    cat_margin = rng.uniform(0.05, 0.35, n_c)
    margin = np.clip(cat_margin[item_cat] + rng.normal(0, 0.03, n_i), 0.01, 0.9).round(3)
    sc = seller_created[item_seller]
    item_created = np.where(seller_new[item_seller],
                            np.minimum(sc + rng.integers(0, DAY_US // 2, n_i), end - 1),
                            np.maximum(start - rng.integers(DAY_US, 365 * DAY_US, n_i), sc))
    in_stock = rng.random(n_i) >= config.out_of_stock_share
    stock_qty = np.where(in_stock, rng.geometric(0.02, n_i), 0)
    quality = 0.5 * seller_quality[item_seller] + rng.normal(0.0, 0.8, n_i)
    item_latent = rng.normal(0.0, 1.0 / np.sqrt(LATENT_DIM), (n_i, LATENT_DIM)).astype(np.float32)
    # What the logging policy believes: sales history favours good, established, popular-category items.
    log_pop = (0.8 * quality + np.log(cat_pop[item_cat] * n_c) + rng.normal(0, 0.5, n_i)
               - 1.5 * seller_new[item_seller])

    return World(
        user_signup_us=signup.astype(np.int64),
        user_country=rng.choice(len(COUNTRIES), n_u, p=_COUNTRY_P).astype(np.int8),
        user_device=rng.choice(len(DEVICES), n_u, p=_DEVICE_P).astype(np.int8),
        user_band=rng.choice(3, n_u, p=_BAND_P).astype(np.int8),
        user_activity=rng.lognormal(-0.32, 0.8, n_u),
        user_taste=taste,
        user_latent=user_latent,
        seller_created_us=seller_created.astype(np.int64),
        seller_quality=seller_quality,
        seller_rating=rating,
        seller_is_new=seller_new,
        item_seller=item_seller.astype(np.int64),
        item_category=item_cat.astype(np.int64),
        item_price=price,
        item_list_price=list_price,
        item_margin=margin,
        item_created_us=item_created.astype(np.int64),
        item_in_stock=in_stock,
        item_stock_qty=stock_qty.astype(np.int64),
        item_quality=quality,
        item_latent=item_latent,
        item_log_popularity=log_pop,
        category_median_price=cat_median,
        category_popularity=cat_pop,
    )
