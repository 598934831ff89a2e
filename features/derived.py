"""Request-time features: user x item, context, and the user's intraday state, each formula once.

These features depend on the moment of the request, so they cannot be stored per entity:
the ETL computes them for every training row by calling :func:`derived_features` on
batches of joined rows (through Spark's ``mapInPandas``), and serving calls the very same
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
  ``item_created_us``, ``f_item_price``.

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
- ``f_ctx_hour`` (UTC hour 0-23), ``f_ctx_dow`` (0 = Monday), ``f_ctx_weekend``, ``f_ctx_device``
  (code in :data:`DEVICE_CODES`, :data:`OTHER_DEVICE` for any other value, null when unknown)
"""

from __future__ import annotations

import re

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
    "user_inputs",
]

DAY_US = 86_400 * 1_000_000
HOUR_US = 3_600 * 1_000_000
DEVICE_CODES: dict[str, int] = {"mobile": 0, "desktop": 1, "tablet": 2}
OTHER_DEVICE = 3

REQUEST_INPUTS: tuple[str, ...] = ("ts_us", "device")
REALTIME_INPUTS: tuple[str, ...] = ("rt_day", "rt_views", "rt_clicks", "rt_carts", "rt_purchases",
                                    "rt_last_view_us", "rt_last_event_us")
ITEM_INPUTS: tuple[str, ...] = ("item_id", "item_category_id", "item_seller_id", "item_created_us", "f_item_price")
_USER_SCALARS: tuple[str, ...] = ("user_signup_us", "f_user_purchase_price_mean_30d", "f_user_click_price_mean_30d")
_TOP_LISTS: tuple[tuple[str, str], ...] = (("top_cat_id", "top_cat_w"), ("top_seller_id", "top_seller_n"),
                                           ("top_item_id", "top_item_n"))

DERIVED_FEATURES: tuple[str, ...] = (
    "f_user_tenure_days", "f_user_views_today", "f_user_clicks_today", "f_user_carts_today",
    "f_user_purchases_today", "f_user_hours_since_view", "f_user_hours_since_event",
    "f_item_age_days",
    "f_ui_cat_affinity", "f_ui_cat_is_top", "f_ui_seller_interactions", "f_ui_item_interactions",
    "f_ui_price_to_purchase_mean", "f_ui_price_to_click_mean",
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


def _ids(frame: pd.DataFrame, name: str) -> np.ndarray:
    """Ids as int64 with -1 for null (contract ids are >= 0)."""
    values = frame[name]
    if values.dtype.kind in "iu":  # numpy ints, or nullable Int64 as Spark hands them over
        return values.to_numpy(dtype=np.int64, na_value=-1)
    as_float = _float(frame, name)
    out = np.full(len(as_float), -1, dtype=np.int64)
    ok = ~np.isnan(as_float)
    out[ok] = as_float[ok].astype(np.int64)
    return out


def _list_width(frame: pd.DataFrame, prefix: str) -> int:
    pattern = re.compile(rf"^{prefix}_(\d+)$")
    ks = sorted(int(m.group(1)) for c in frame.columns if (m := pattern.match(str(c))))
    if ks != list(range(1, len(ks) + 1)) or not ks:
        raise ValueError(f"frame must hold {prefix}_1..{prefix}_K for some K >= 1, got indices {ks}")
    return len(ks)


def _lookup(frame: pd.DataFrame, ids_prefix: str, values_prefix: str, key: np.ndarray) -> np.ndarray:
    """For each row, the value paired with ``key`` in the row's top-K list (0 if absent)."""
    k = _list_width(frame, ids_prefix)
    ids = np.column_stack([_ids(frame, f"{ids_prefix}_{i}") for i in range(1, k + 1)])
    values = np.column_stack([_float(frame, f"{values_prefix}_{i}") for i in range(1, k + 1)])
    hit = (ids == key[:, None]) & (key[:, None] >= 0)
    return np.where(hit, np.nan_to_num(values), 0.0).sum(axis=1)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / den, np.nan)


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
    ts_us = ts.to_numpy(dtype=np.int64)
    today = ts_us // DAY_US
    out: dict[str, np.ndarray] = {}

    out["f_user_tenure_days"] = (ts_us - _float(frame, "user_signup_us")) / DAY_US
    rt_day = _float(frame, "rt_day")
    same_day = rt_day == today
    for name in ("views", "clicks", "carts", "purchases"):
        out[f"f_user_{name}_today"] = np.where(same_day, np.nan_to_num(_float(frame, f"rt_{name}")), 0.0)
    out["f_user_hours_since_view"] = (ts_us - _float(frame, "rt_last_view_us")) / HOUR_US
    out["f_user_hours_since_event"] = (ts_us - _float(frame, "rt_last_event_us")) / HOUR_US
    out["f_item_age_days"] = (ts_us - _float(frame, "item_created_us")) / DAY_US

    category = _ids(frame, "item_category_id")
    out["f_ui_cat_affinity"] = _lookup(frame, "top_cat_id", "top_cat_w", category)
    top1 = _ids(frame, "top_cat_id_1")
    out["f_ui_cat_is_top"] = ((top1 == category) & (category >= 0)).astype(np.float64)
    out["f_ui_seller_interactions"] = _lookup(frame, "top_seller_id", "top_seller_n", _ids(frame, "item_seller_id"))
    out["f_ui_item_interactions"] = _lookup(frame, "top_item_id", "top_item_n", _ids(frame, "item_id"))
    price = _float(frame, "f_item_price")
    out["f_ui_price_to_purchase_mean"] = _ratio(price, _float(frame, "f_user_purchase_price_mean_30d"))
    out["f_ui_price_to_click_mean"] = _ratio(price, _float(frame, "f_user_click_price_mean_30d"))

    hour = (ts_us // HOUR_US) % 24
    dow = (today + 3) % 7  # 1970-01-01 was a Thursday (3 with Monday = 0)
    out["f_ctx_hour"] = hour.astype(np.float64)
    out["f_ctx_dow"] = dow.astype(np.float64)
    out["f_ctx_weekend"] = (dow >= 5).astype(np.float64)
    device = frame["device"]
    codes = device.map(DEVICE_CODES).astype("float64").to_numpy(na_value=np.nan)
    known = device.notna().to_numpy()
    out["f_ctx_device"] = np.where(known & np.isnan(codes), float(OTHER_DEVICE), codes)

    return pd.DataFrame({name: out[name].astype(np.float64) for name in DERIVED_FEATURES}, index=frame.index)
