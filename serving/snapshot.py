"""The in-memory item snapshot serving reads instead of the online store.

DESIGN.md measured Feast's Python online read of 500 items at 50-80 ms against 0.13 ms for
gathering the same rows from an in-memory array, so item attributes and item features are
held here, as arrays indexed by row, refreshed on reload; only the user's row is read online.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from features.popularity import popularity_counts

__all__ = ["ItemSnapshot", "snapshot_from_tables"]


@dataclass(frozen=True)
class ItemSnapshot:
    """Item attributes and features, row ``r`` describing item ``item_ids[r]``.

    Attributes
    ----------
    item_ids, seller_ids, category_ids : ndarray of int64, shape (N,)
    price, margin_rate : ndarray of float64, shape (N,)  (margin NaN where unknown)
    in_stock, is_new_seller : ndarray of bool, shape (N,)
    popularity : ndarray of float64, shape (N,)
        Recent purchases + clicks (or any non-negative popularity), for cold start and padding.
    features : DataFrame, shape (N, F)
        Item and seller feature columns (``f_item_*``, ``f_seller_*``) in row order.
    """

    item_ids: np.ndarray
    seller_ids: np.ndarray
    category_ids: np.ndarray
    price: np.ndarray
    margin_rate: np.ndarray
    in_stock: np.ndarray
    is_new_seller: np.ndarray
    popularity: np.ndarray
    features: pd.DataFrame
    loaded_at: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))

    def __post_init__(self) -> None:
        n = len(self.item_ids)
        for name in ("seller_ids", "category_ids", "price", "margin_rate", "in_stock", "is_new_seller",
                     "popularity"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"{name} must have one entry per item ({n}), got {len(getattr(self, name))}")
        if len(self.features) != n:
            raise ValueError(f"features must have one row per item ({n}), got {len(self.features)}")
        order = np.argsort(self.item_ids, kind="stable")
        object.__setattr__(self, "_sorted_ids", self.item_ids[order])
        object.__setattr__(self, "_sorted_rows", order)

    def __len__(self) -> int:
        return len(self.item_ids)

    def rows(self, item_ids: np.ndarray) -> np.ndarray:
        """Row of each id; -1 for ids not in the snapshot."""
        ids = np.asarray(item_ids, dtype=np.int64)
        sorted_ids: np.ndarray = self._sorted_ids  # type: ignore[attr-defined]
        if len(sorted_ids) == 0:
            return np.full(len(ids), -1)
        pos = np.clip(np.searchsorted(sorted_ids, ids), 0, len(sorted_ids) - 1)
        found = sorted_ids[pos] == ids
        return np.where(found, self._sorted_rows[pos], -1)  # type: ignore[attr-defined]

    def popular_rows(self, n: int, *, exclude_rows: np.ndarray | None = None) -> np.ndarray:
        """The ``n`` most popular in-stock rows, most popular first, skipping ``exclude_rows``."""
        ok = self.in_stock.copy()
        if exclude_rows is not None and len(exclude_rows):
            ok[exclude_rows[exclude_rows >= 0]] = False
        rows = np.flatnonzero(ok)
        if len(rows) > n:
            rows = rows[np.argpartition(-self.popularity[rows], n - 1)[:n]]
        return rows[np.argsort(-self.popularity[rows], kind="stable")]


def snapshot_from_tables(items: pd.DataFrame, sellers: pd.DataFrame, events: pd.DataFrame, *,
                         as_of: pd.Timestamp, new_seller_days: float = 30.0, popularity_days: float = 7.0,
                         features: pd.DataFrame | None = None) -> ItemSnapshot:
    """Build a snapshot from contract tables as of ``as_of``.

    Popularity is :func:`features.popularity.popularity_counts` (the platform's one weighted event
    count) over the ``popularity_days`` before ``as_of``; a
    seller is new when created within ``new_seller_days`` before ``as_of``. ``features``, if
    given, is indexed by item_id and holds the feature columns (missing items get NaN).
    """
    items = items.sort_values("item_id").reset_index(drop=True)
    as_of = pd.Timestamp(as_of)
    created = sellers.set_index("seller_id")["created_ts"].reindex(items["seller_id"])
    new_seller = (created >= as_of - pd.Timedelta(days=new_seller_days)).to_numpy()
    recent = events[(events["ts"] < as_of) & (events["ts"] >= as_of - pd.Timedelta(days=popularity_days))]
    pop = popularity_counts(recent["item_id"].to_numpy(), recent["type"].to_numpy())
    popularity = pop.reindex(items["item_id"]).fillna(0.0).to_numpy()
    feats = (features.reindex(items["item_id"]).reset_index(drop=True) if features is not None
             else pd.DataFrame(index=range(len(items))))
    margin = items["margin_rate"].astype("float64").to_numpy() if "margin_rate" in items else np.full(len(items), np.nan)
    return ItemSnapshot(
        item_ids=items["item_id"].to_numpy(np.int64), seller_ids=items["seller_id"].to_numpy(np.int64),
        category_ids=items["category_id"].to_numpy(np.int64), price=items["price"].to_numpy(np.float64),
        margin_rate=margin, in_stock=items["in_stock"].to_numpy(bool), is_new_seller=np.asarray(new_seller, bool),
        popularity=popularity, features=feats)
