"""The real-time features, declared once, and their batch definition.

Two families are computed from the live impressions and events:

- **rolling counts** (``user_rolling``, ``item_rolling``): events of one kind in the window
  ``(T - w, T]``, where ``T`` is the *watermark*, the latest event time the consumer has seen.
  The consumer keeps every entity's stored value equal to its value at the current
  watermark: it pushes an entity when one of its events arrives and again when one of its
  events leaves a window.
- **the intraday row** (``user_realtime``, the ETL's push-source view, see
  :mod:`features.derived`): ``rt_day`` is the UTC day of the user's latest activity and
  ``rt_views``, ``rt_clicks``, ``rt_carts``, ``rt_purchases`` count that day's activity;
  ``rt_last_view_us`` / ``rt_last_event_us`` are the latest impression / click-cart-purchase
  times (null without one). Its ``event_timestamp`` is the latest activity plus 1 us, as in
  ``features.aggregates.realtime_state``, so training and serving read the same row.

The batch functions here are the reference the stream must reproduce: after the consumer has
applied a set of events, every stored value equals :func:`rolling_counts` and
:func:`intraday_rows` over the same events.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from features.derived import REALTIME_INPUTS

__all__ = [
    "ALL_ROLLING",
    "INTRADAY_COLUMNS",
    "ITEM_ROLLING",
    "KIND_CODES",
    "OBS_COLUMNS",
    "RollingCount",
    "USER_ROLLING",
    "intraday_rows",
    "max_window_us",
    "observations",
    "rolling_counts",
]

SECOND_US = 1_000_000
HOUR_US = 3_600 * SECOND_US
DAY_US = 24 * HOUR_US

# Activity kinds: an impression is a view; events keep their contract type.
VIEW, CLICK, CART, PURCHASE = 0, 1, 2, 3
KIND_CODES: dict[str, int] = {"view": VIEW, "click": CLICK, "add_to_cart": CART, "purchase": PURCHASE}
_KIND_WORD = {VIEW: "views", CLICK: "clicks", CART: "carts", PURCHASE: "purchases"}

# Where a row came from (its id is unique within its source table).
SRC_IMPRESSION, SRC_EVENT = 0, 1

#: Columns of an observation frame: one row per impression or event.
OBS_COLUMNS: tuple[str, ...] = ("src", "id", "kind", "ts_us", "user_id", "item_id")

#: Columns of the intraday row: the ``user_realtime`` view's features as the ETL writes them.
INTRADAY_COLUMNS: tuple[str, ...] = REALTIME_INPUTS


@dataclass(frozen=True)
class RollingCount:
    """A count of one kind of activity of an entity over a sliding window.

    Parameters
    ----------
    entity : {"user", "item"}
    kind : int
        One of :data:`KIND_CODES`' values.
    window_s : int
        Window length in seconds; the name ends in ``_<n>h``.
    """

    entity: str
    kind: int
    window_s: int

    def __post_init__(self) -> None:
        if self.entity not in ("user", "item"):
            raise ValueError(f"entity must be 'user' or 'item', got {self.entity!r}")
        if self.kind not in _KIND_WORD:
            raise ValueError(f"kind must be one of {sorted(_KIND_WORD)}, got {self.kind!r}")
        if self.window_s <= 0 or self.window_s % 3600:
            raise ValueError(f"window_s must be a positive whole number of hours, got {self.window_s!r}")

    @property
    def name(self) -> str:
        """Feature name, e.g. ``f_user_views_1h``."""
        return f"f_{self.entity}_{_KIND_WORD[self.kind]}_{self.window_s // 3600}h"

    @property
    def window_us(self) -> int:
        return self.window_s * SECOND_US


USER_ROLLING: tuple[RollingCount, ...] = tuple(
    RollingCount("user", kind, window) for kind in (VIEW, CLICK, CART) for window in (3600, 86400))
ITEM_ROLLING: tuple[RollingCount, ...] = (
    RollingCount("item", VIEW, 3600), RollingCount("item", VIEW, 86400), RollingCount("item", CLICK, 3600),
    RollingCount("item", PURCHASE, 3600), RollingCount("item", PURCHASE, 86400),
)
ALL_ROLLING: tuple[RollingCount, ...] = USER_ROLLING + ITEM_ROLLING


def max_window_us() -> int:
    """The longest rolling window (the intraday row never needs more than a day either)."""
    return max(max(f.window_us for f in ALL_ROLLING), DAY_US)


def observations(impressions: pd.DataFrame | None, events: pd.DataFrame | None) -> pd.DataFrame:
    """Valid contract rows of impressions and events as one observation frame.

    Parameters
    ----------
    impressions : DataFrame with ``impression_id, ts, user_id, item_id``, optional
    events : DataFrame with ``event_id, ts, user_id, item_id, type``, optional
        Rows that passed :func:`features.validation.validate_table` (``ts`` is a UTC timestamp).

    Returns
    -------
    DataFrame with :data:`OBS_COLUMNS` (all int64).
    """
    parts = []
    if impressions is not None and len(impressions):
        parts.append(pd.DataFrame({
            "src": np.full(len(impressions), SRC_IMPRESSION, dtype=np.int64),
            "id": impressions["impression_id"].to_numpy(dtype=np.int64),
            "kind": np.full(len(impressions), VIEW, dtype=np.int64),
            "ts_us": _micros(impressions["ts"]),
            "user_id": impressions["user_id"].to_numpy(dtype=np.int64),
            "item_id": impressions["item_id"].to_numpy(dtype=np.int64),
        }))
    if events is not None and len(events):
        parts.append(pd.DataFrame({
            "src": np.full(len(events), SRC_EVENT, dtype=np.int64),
            "id": events["event_id"].to_numpy(dtype=np.int64),
            "kind": events["type"].map(KIND_CODES).to_numpy(dtype=np.int64),
            "ts_us": _micros(events["ts"]),
            "user_id": events["user_id"].to_numpy(dtype=np.int64),
            "item_id": events["item_id"].to_numpy(dtype=np.int64),
        }))
    if not parts:
        return pd.DataFrame({c: np.empty(0, dtype=np.int64) for c in OBS_COLUMNS})
    return pd.concat(parts, ignore_index=True)


def _micros(ts: pd.Series) -> np.ndarray:
    return pd.to_datetime(ts, utc=True).astype("datetime64[us, UTC]").astype("int64").to_numpy()


def rolling_counts(obs: pd.DataFrame, entity: str, as_of_us: int) -> pd.DataFrame:
    """Batch definition of the rolling counts of every entity with activity in the longest window.

    ``value = #{rows of the entity and kind with as_of - window < ts_us <= as_of}``, after
    dropping repeated ``(src, id)`` rows.

    Parameters
    ----------
    obs : DataFrame with :data:`OBS_COLUMNS`
    entity : {"user", "item"}
    as_of_us : int
        The reference time ``T`` (microseconds since the epoch).

    Returns
    -------
    DataFrame indexed by ``<entity>_id`` (sorted) with one int64 column per feature of the entity.
    """
    feats = USER_ROLLING if entity == "user" else ITEM_ROLLING if entity == "item" else None
    if feats is None:
        raise ValueError(f"entity must be 'user' or 'item', got {entity!r}")
    key = f"{entity}_id"
    rows = obs.drop_duplicates(["src", "id"])
    longest = max(f.window_us for f in feats)
    rows = rows[(rows["ts_us"] > as_of_us - longest) & (rows["ts_us"] <= as_of_us)]
    out = pd.DataFrame(index=pd.Index(np.unique(rows[key].to_numpy()), name=key))
    for f in feats:
        hit = rows[(rows["kind"] == f.kind) & (rows["ts_us"] > as_of_us - f.window_us)]
        out[f.name] = hit.groupby(key).size().reindex(out.index, fill_value=0).astype(np.int64)
    return out


def intraday_rows(obs: pd.DataFrame) -> pd.DataFrame:
    """Batch definition of every user's intraday row after all of ``obs``.

    Returns
    -------
    DataFrame indexed by ``user_id`` (sorted) with ``event_timestamp_us`` (latest activity + 1)
    and :data:`INTRADAY_COLUMNS`; ``rt_last_view_us`` / ``rt_last_event_us`` are nullable Int64.
    """
    rows = obs.drop_duplicates(["src", "id"])
    by_user = rows.groupby("user_id")
    last_ts = by_user["ts_us"].max()
    day = last_ts // DAY_US
    rows = rows.assign(_day=rows["ts_us"] // DAY_US)
    today = rows[rows["_day"].to_numpy() == day.reindex(rows["user_id"]).to_numpy()]
    out = pd.DataFrame(index=last_ts.index)
    out["event_timestamp_us"] = (last_ts + 1).astype(np.int64)
    out["rt_day"] = day.astype(np.int64)
    for kind, col in ((VIEW, "rt_views"), (CLICK, "rt_clicks"), (CART, "rt_carts"), (PURCHASE, "rt_purchases")):
        out[col] = today[today["kind"] == kind].groupby("user_id").size().reindex(out.index, fill_value=0) \
            .astype(np.int64)
    views = rows[rows["kind"] == VIEW].groupby("user_id")["ts_us"].max()
    acts = rows[rows["kind"] != VIEW].groupby("user_id")["ts_us"].max()
    out["rt_last_view_us"] = views.reindex(out.index).astype("Int64")
    out["rt_last_event_us"] = acts.reindex(out.index).astype("Int64")
    return out[["event_timestamp_us", *INTRADAY_COLUMNS]]
