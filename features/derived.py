"""Request-time features: user x item, context, and the user's intraday state, each formula once.

These features depend on the moment of the request, so they cannot be stored per entity:
the ETL computes them for every training row by calling :func:`derived_features` on
batches of joined rows (in Spark's Python workers, :mod:`features.assemble`), and serving calls the very same
function on the user's online row, the candidate items' rows and the request. One
implementation means no training/serving skew.

Inputs (one row per (request, item) pair; missing entity rows are all-null):

- request: ``ts_us`` (int64 microseconds since the epoch, UTC), ``device`` (str or null);
- user snapshot row (``user_features``): ``user_signup_us``, ``f_user_purchase_price_mean_30d``,
  ``f_user_click_price_mean_30d`` and the top-K lists ``top_cat_id_k``/``top_cat_w_k``,
  ``top_seller_id_k``/``top_seller_n_k``, ``top_item_id_k``/``top_item_n_k`` (k = 1..K);
- user intraday row (``user_realtime``, the push-source view): ``rt_day`` (UTC days since the
  epoch of the row), ``rt_views``, ``rt_clicks``, ``rt_carts``, ``rt_purchases`` (counts of that
  day so far), ``rt_last_view_us``, ``rt_last_event_us``;
- item row (``item_features``): ``item_id``, ``item_category_id``, ``item_seller_id``,
  ``item_created_us``, ``f_item_price``, ``f_item_price_to_cat_median``.

Formulas (``day = 86_400 s``; ``today = ts_us // day``):

- ``f_user_tenure_days = (ts - user_signup) / day``; ``f_item_age_days = (ts - item_created) / day``
- ``f_user_<x>_today = rt_<x> if rt_day == today else 0`` for views, clicks, carts, purchases
- ``f_user_hours_since_view = (ts - rt_last_view) / 1 h`` (null without one), same for ``_event``
- ``f_ui_cat_affinity = sum_k top_cat_w_k * [top_cat_id_k == item_category_id]`` (weights are
  shares of the user's 30-day interaction weight, so 0 <= affinity <= 1)
- ``f_ui_cat_is_top = [top_cat_id_1 == item_category_id]``
- ``f_ui_seller_interactions = top_seller_n_k`` for the k whose id is the item's seller, else 0;
  ``f_ui_item_interactions`` likewise with the item itself
- ``f_ui_price_to_purchase_mean = f_item_price / f_user_purchase_price_mean_30d`` (null without
  purchases), ``f_ui_price_to_click_mean`` likewise with clicked prices
- ``f_ui_rel_price_gap = log(f_item_price_to_cat_median) - f_user_rel_price_30d``: how far the
  item's price sits above the buyer's usual level *relative to each category's median* (the
  user's mean log relative price of what they carted or bought; null without such events)
- ``f_ctx_hour`` (UTC hour 0-23), ``f_ctx_dow`` (0 = Monday), ``f_ctx_weekend``, ``f_ctx_device``
  (code in :data:`DEVICE_CODES`, :data:`OTHER_DEVICE` for any other value, null when unknown)
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "DERIVED_FEATURES",
    "DEVICE_CODES",
    "ITEM_INPUTS",
    "OTHER_DEVICE",
    "REALTIME_INPUTS",
    "REQUEST_INPUTS",
    "derived_features",
    "derived_matrix",
    "device_code",
    "user_inputs",
]

DAY_US = 86_400 * 1_000_000
HOUR_US = 3_600 * 1_000_000
DEVICE_CODES: dict[str, int] = {"mobile": 0, "desktop": 1, "tablet": 2}
OTHER_DEVICE = 3

REQUEST_INPUTS: tuple[str, ...] = ("ts_us", "device")
REALTIME_INPUTS: tuple[str, ...] = ("rt_day", "rt_views", "rt_clicks", "rt_carts", "rt_purchases",
                                    "rt_last_view_us", "rt_last_event_us")
ITEM_INPUTS: tuple[str, ...] = ("item_id", "item_category_id", "item_seller_id", "item_created_us", "f_item_price",
                                "f_item_price_to_cat_median")
_USER_SCALARS: tuple[str, ...] = ("user_signup_us", "f_user_purchase_price_mean_30d", "f_user_click_price_mean_30d",
                                  "f_user_rel_price_30d")
_TOP_LISTS: tuple[tuple[str, str], ...] = (("top_cat_id", "top_cat_w"), ("top_seller_id", "top_seller_n"),
                                           ("top_item_id", "top_item_n"))

# Inputs added after the first feature set: a row (or a bundle) without them gives null features.
OPTIONAL_INPUTS: frozenset[str] = frozenset({"f_item_price_to_cat_median", "f_user_rel_price_30d"})

DERIVED_FEATURES: tuple[str, ...] = (
    "f_user_tenure_days", "f_user_views_today", "f_user_clicks_today", "f_user_carts_today",
    "f_user_purchases_today", "f_user_hours_since_view", "f_user_hours_since_event",
    "f_item_age_days",
    "f_ui_cat_affinity", "f_ui_cat_is_top", "f_ui_seller_interactions", "f_ui_item_interactions",
    "f_ui_price_to_purchase_mean", "f_ui_price_to_click_mean", "f_ui_rel_price_gap",
    "f_ctx_hour", "f_ctx_dow", "f_ctx_weekend", "f_ctx_device",
)


def user_inputs(top_categories: int, top_sellers: int, top_items: int) -> tuple[str, ...]:
    """The user-snapshot columns :func:`derived_features` reads, for the given top-K sizes."""
    cols = list(_USER_SCALARS)
    for (ids, weights), k in zip(_TOP_LISTS, (top_categories, top_sellers, top_items), strict=True):
        cols += [f"{ids}_{i}" for i in range(1, k + 1)] + [f"{weights}_{i}" for i in range(1, k + 1)]
    return tuple(cols)


def _float(frame: pd.DataFrame, name: str) -> np.ndarray:
    values = frame[name]
    if values.dtype.kind not in "iufb" and not isinstance(values.dtype, pd.api.extensions.ExtensionDtype):
        values = pd.to_numeric(values, errors="raise")
    return values.to_numpy(dtype=np.float64, na_value=np.nan)


def _list_width(names: Sequence[str], prefix: str) -> int:
    pattern = re.compile(rf"^{prefix}_(\d+)$")
    ks = sorted(int(m.group(1)) for c in names if (m := pattern.match(str(c))))
    if ks != list(range(1, len(ks) + 1)) or not ks:
        raise ValueError(f"inputs must hold {prefix}_1..{prefix}_K for some K >= 1, got indices {ks}")
    return len(ks)


@functools.lru_cache(maxsize=64)
def _list_widths(names: tuple[str, ...]) -> dict[str, int]:
    """:func:`_list_width` of every top-K list for one set of input names (serving asks per request)."""
    return {prefix: _list_width(names, prefix) for prefix, _ in _TOP_LISTS}


def _nan_to_num(value: Any) -> Any:
    """``np.nan_to_num``, with a fast path for the scalars serving passes (the generic function
    costs ~15 us per call, a few hundred microseconds per request)."""
    if isinstance(value, float):  # np.float64 included
        if value != value:
            return 0.0
        if value in (np.inf, -np.inf):
            return float(np.nan_to_num(value))
        return value
    return np.nan_to_num(value)


def _lookup(inputs: Mapping[str, Any], ids_prefix: str, values_prefix: str, key: np.ndarray) -> np.ndarray:
    """For each row, the value paired with ``key`` in the row's top-K list (0 if absent)."""
    total = np.zeros(np.shape(key))
    for i in range(1, _list_widths(tuple(inputs))[ids_prefix] + 1):
        # ids are floats with NaN for null, and NaN equals nothing
        total = total + np.where(inputs[f"{ids_prefix}_{i}"] == key, _nan_to_num(inputs[f"{values_prefix}_{i}"]), 0.0)
    return total


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / den, np.nan)


def device_code(device: str | None) -> float:
    """``f_ctx_device`` of one request: the code in :data:`DEVICE_CODES`, :data:`OTHER_DEVICE`
    for any other value, NaN when unknown."""
    if device is None or (isinstance(device, float) and np.isnan(device)):
        return np.nan
    return float(DEVICE_CODES.get(device, OTHER_DEVICE))


def derived_matrix(inputs: Mapping[str, Any], ts_us: np.ndarray | int, device: np.ndarray | float,
                   n: int) -> np.ndarray:
    """The formulas on float arrays: the core :func:`derived_features` and serving share.

    Parameters
    ----------
    inputs : mapping of column name to float64 array of shape (n,) or a float scalar
        Every input column of the module docstring except ``ts_us`` and ``device``; ids as
        floats, NaN for null. A scalar stands for the same value on every row (serving passes
        the user's and the request's values that way, and the items' columns as arrays).
    ts_us : int64 array of shape (n,) or int
        Request times, microseconds since the epoch (UTC); never null.
    device : float array of shape (n,) or float
        :func:`device_code` of each row's device.
    n : int
        The number of rows.

    Returns
    -------
    numpy.ndarray, shape (n, len(DERIVED_FEATURES)), float64, columns in :data:`DERIVED_FEATURES` order.
    """
    ts_us = np.asarray(ts_us, dtype=np.int64)
    ts = ts_us.astype(np.float64)
    today = ts_us // DAY_US
    out: dict[str, Any] = {}

    out["f_user_tenure_days"] = (ts - inputs["user_signup_us"]) / DAY_US
    same_day = inputs["rt_day"] == today
    for name in ("views", "clicks", "carts", "purchases"):
        out[f"f_user_{name}_today"] = np.where(same_day, _nan_to_num(inputs[f"rt_{name}"]), 0.0)
    out["f_user_hours_since_view"] = (ts - inputs["rt_last_view_us"]) / HOUR_US
    out["f_user_hours_since_event"] = (ts - inputs["rt_last_event_us"]) / HOUR_US
    out["f_item_age_days"] = (ts - inputs["item_created_us"]) / DAY_US

    category = inputs["item_category_id"]
    out["f_ui_cat_affinity"] = _lookup(inputs, "top_cat_id", "top_cat_w", category)
    out["f_ui_cat_is_top"] = (inputs["top_cat_id_1"] == category).astype(np.float64)
    out["f_ui_seller_interactions"] = _lookup(inputs, "top_seller_id", "top_seller_n", inputs["item_seller_id"])
    out["f_ui_item_interactions"] = _lookup(inputs, "top_item_id", "top_item_n", inputs["item_id"])
    price = inputs["f_item_price"]
    out["f_ui_price_to_purchase_mean"] = _ratio(price, inputs["f_user_purchase_price_mean_30d"])
    out["f_ui_price_to_click_mean"] = _ratio(price, inputs["f_user_click_price_mean_30d"])
    # OPTIONAL_INPUTS: a bundle built before f_ui_rel_price_gap existed does not hold them
    rel = np.asarray(inputs.get("f_item_price_to_cat_median", np.nan), dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        log_rel = np.where(rel > 0, np.log(np.where(rel > 0, rel, 1.0)), np.nan)
    out["f_ui_rel_price_gap"] = log_rel - np.asarray(inputs.get("f_user_rel_price_30d", np.nan), dtype=np.float64)

    hour = (ts_us // HOUR_US) % 24
    dow = (today + 3) % 7  # 1970-01-01 was a Thursday (3 with Monday = 0)
    out["f_ctx_hour"] = hour
    out["f_ctx_dow"] = dow
    out["f_ctx_weekend"] = dow >= 5
    out["f_ctx_device"] = device

    matrix = np.empty((n, len(DERIVED_FEATURES)), dtype=np.float64)
    for j, name in enumerate(DERIVED_FEATURES):
        matrix[:, j] = out[name]  # broadcasts the per-request constants
    return matrix


def derived_features(frame: pd.DataFrame) -> pd.DataFrame:
    """Compute every request-time feature for a batch of (request, user, item) rows.

    Parameters
    ----------
    frame : pandas.DataFrame, shape (n, ...)
        The columns listed in the module docstring (request, user snapshot, user intraday
        and item inputs); extra columns are ignored. Nulls mean "no row" or "no history".

    Returns
    -------
    pandas.DataFrame, shape (n, len(DERIVED_FEATURES))
        float64 columns named as :data:`DERIVED_FEATURES`, on ``frame``'s index.

    Raises
    ------
    KeyError
        If an input column is missing.
    ValueError
        If ``ts_us`` is null or a top-K list is not numbered 1..K.
    """
    ts = frame["ts_us"]
    if ts.isna().any():
        raise ValueError("ts_us must not be null (the request time)")
    names = [c for c in frame.columns if c not in REQUEST_INPUTS]
    widths = {p: _list_width(names, p) for p, _ in _TOP_LISTS}  # checked before any column is read
    needed = list(REALTIME_INPUTS + ITEM_INPUTS + _USER_SCALARS)
    for (ids, values), k in zip(_TOP_LISTS, widths.values(), strict=True):
        needed += [f"{ids}_{i}" for i in range(1, k + 1)] + [f"{values}_{i}" for i in range(1, k + 1)]
    inputs = {name: _float(frame, name) if name in frame.columns or name not in OPTIONAL_INPUTS
              else np.full(len(frame), np.nan) for name in needed}
    device = frame["device"]
    codes = device.map(DEVICE_CODES).astype("float64").to_numpy(na_value=np.nan)
    known = device.notna().to_numpy()
    codes = np.where(known & np.isnan(codes), float(OTHER_DEVICE), codes)
    matrix = derived_matrix(inputs, ts.to_numpy(dtype=np.int64), codes, len(frame))
    return pd.DataFrame(matrix, columns=list(DERIVED_FEATURES), index=frame.index)
