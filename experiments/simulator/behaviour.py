"""How simulated buyers respond: the ground truth every model is judged against.

A position-based model. A buyer examines slot ``p`` (0-based) with probability
``e(p) = (p + 1) ** -eta``; an examined item is clicked with its attractiveness
``a(u, i, c)``; a click becomes an add-to-cart with ``q_cart(u, i)`` and a cart a
purchase with ``q_buy(u, i)`` (zero when the item is out of stock)::

    P(click | u, i, c, p)    = e(p) * a(u, i, c)
    P(purchase | u, i, c, p) = e(p) * a(u, i, c) * q_cart(u, i) * q_buy(u, i)

    logit a      = b0 + b_taste * log(C * taste[u, cat(i)]) + b_latent * sqrt(D) * <z_u, z_i>
                   + b_quality * quality(i) + b_discount * discount(i) + b_context * ctx(device, hour)
    logit q_cart = c0 + c_taste * log(C * taste[u, cat(i)]) + c_price * fit(u, i) + c_quality * quality(i)
    logit q_buy  = d0 + d_price * fit(u, i) + d_seller * seller_quality(i) + d_discount * discount(i)
    fit(u, i)    = -gamma(band(u)) * max(0, log(price(i) / budget(u, cat(i))))

where ``budget`` is the category's median price scaled by the buyer's spend band, and
``gamma`` is the band's price sensitivity.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from experiments.simulator.world import LATENT_DIM, World

__all__ = ["BehaviourParams", "examination", "attractiveness", "cart_given_click", "buy_given_cart",
           "purchase_given_examined", "expected_quantity"]


@dataclass(frozen=True)
class BehaviourParams:
    """Coefficients of the buyer model (see the module docstring for the formulas)."""

    click_base: float = -3.0
    click_taste: float = 0.6
    click_latent: float = 1.2
    click_quality: float = 0.4
    click_discount: float = 0.8
    click_context: float = 0.15
    cart_base: float = -1.2
    cart_taste: float = 0.3
    cart_price: float = 1.0
    cart_quality: float = 0.3
    buy_base: float = -0.5
    buy_price: float = 0.8
    buy_seller: float = 0.5
    buy_discount: float = 0.5
    budget_multiplier: tuple[float, float, float] = (0.6, 1.0, 1.8)
    price_sensitivity: tuple[float, float, float] = (2.0, 1.2, 0.6)
    extra_quantity_rate: float = 0.15  # quantity of a purchase is 1 + Poisson(rate)


DEFAULT_PARAMS = BehaviourParams()


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def examination(positions: np.ndarray, eta: float) -> np.ndarray:
    """Probability that a buyer examines each 0-based position: ``(p + 1) ** -eta``."""
    return (np.asarray(positions, dtype=np.float64) + 1.0) ** -eta


def _taste_affinity(world: World, users: np.ndarray, items: np.ndarray) -> np.ndarray:
    n_c = world.user_taste.shape[1]
    taste = world.user_taste[users, world.item_category[items]].astype(np.float64)
    return np.clip(np.log(n_c * taste), -4.0, 3.0)


def _context(devices: np.ndarray, hours: np.ndarray) -> np.ndarray:
    """+1 for mobile in the evening, +0.7 for desktop in office hours, 0 otherwise."""
    evening = (hours >= 18) & (hours <= 23)
    office = (hours >= 9) & (hours <= 17)
    return np.where((devices == 0) & evening, 1.0, np.where((devices == 1) & office, 0.7, 0.0))


def _price_fit(world: World, users: np.ndarray, items: np.ndarray, params: BehaviourParams) -> np.ndarray:
    band = world.user_band[users]
    budget = world.category_median_price[world.item_category[items]] * np.asarray(params.budget_multiplier)[band]
    overpay = np.maximum(0.0, np.log(world.item_price[items] / budget))
    return -np.asarray(params.price_sensitivity)[band] * overpay


def attractiveness(world: World, users: np.ndarray, items: np.ndarray, devices: np.ndarray, hours: np.ndarray,
                   params: BehaviourParams = DEFAULT_PARAMS) -> np.ndarray:
    """P(click | examined) for each (user, item, device, hour) row."""
    latent = np.einsum("nd,nd->n", world.user_latent[users], world.item_latent[items]).astype(np.float64)
    logit = (params.click_base + params.click_taste * _taste_affinity(world, users, items)
             + params.click_latent * np.sqrt(LATENT_DIM) * latent  # <z_u, z_i> scaled to unit variance
             + params.click_quality * world.item_quality[items]
             + params.click_discount * world.item_discount[items]
             + params.click_context * _context(devices, hours))
    return _sigmoid(logit)


def cart_given_click(world: World, users: np.ndarray, items: np.ndarray,
                     params: BehaviourParams = DEFAULT_PARAMS) -> np.ndarray:
    """P(add to cart | click); zero for items out of stock."""
    logit = (params.cart_base + params.cart_taste * _taste_affinity(world, users, items)
             + params.cart_price * _price_fit(world, users, items, params)
             + params.cart_quality * world.item_quality[items])
    return _sigmoid(logit) * world.item_in_stock[items]


def buy_given_cart(world: World, users: np.ndarray, items: np.ndarray,
                   params: BehaviourParams = DEFAULT_PARAMS) -> np.ndarray:
    """P(purchase | add to cart); zero for items out of stock."""
    logit = (params.buy_base + params.buy_price * _price_fit(world, users, items, params)
             + params.buy_seller * world.seller_quality[world.item_seller[items]]
             + params.buy_discount * world.item_discount[items])
    return _sigmoid(logit) * world.item_in_stock[items]


def purchase_given_examined(world: World, users: np.ndarray, items: np.ndarray, devices: np.ndarray,
                            hours: np.ndarray, params: BehaviourParams = DEFAULT_PARAMS) -> np.ndarray:
    """P(purchase | examined) = a * q_cart * q_buy."""
    return (attractiveness(world, users, items, devices, hours, params)
            * cart_given_click(world, users, items, params) * buy_given_cart(world, users, items, params))


def expected_quantity(params: BehaviourParams = DEFAULT_PARAMS) -> float:
    """Mean units in a purchase."""
    return 1.0 + params.extra_quantity_rate
