"""Summaries of an event log in the contract: volumes, CTR and purchase rate by position, GMV."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.dataset as ds

__all__ = ["LogSummary", "summarize_logs"]


@dataclass(frozen=True)
class LogSummary:
    """What a person wants to know first about a log.

    Attributes
    ----------
    rows : dict of table name to row count
    by_position : DataFrame
        Index ``position``; columns ``impressions, ctr, purchase_rate`` for all traffic and
        ``ctr_randomized, impressions_randomized`` for randomized traffic alone.
    gmv, feed_gmv : float
        Sum of ``price_paid * quantity`` over all purchases, and over those from the feed.
    new_seller_item_share, new_seller_impression_share : float
        Share of catalog items, and of impressions, whose seller joined during the logged
        period (created at or after the first impression).
    """

    rows: dict[str, int]
    by_position: pd.DataFrame
    gmv: float
    feed_gmv: float
    purchases: int
    new_seller_item_share: float
    new_seller_impression_share: float

    def to_text(self, max_positions: int = 10) -> str:
        lines = ["rows: " + ", ".join(f"{k}={v:,}" for k, v in self.rows.items()),
                 f"purchases: {self.purchases:,}   GMV: {self.gmv:,.2f} (from the feed: {self.feed_gmv:,.2f})",
                 f"new-seller share: {self.new_seller_item_share:.1%} of items, "
                 f"{self.new_seller_impression_share:.1%} of impressions",
                 "CTR and purchase rate by position (randomized traffic alongside):"]
        table = self.by_position.head(max_positions).copy()
        for col in ("ctr", "purchase_rate", "ctr_randomized"):
            table[col] = table[col].map(lambda v: f"{v:.4f}")
        lines.append(table.to_string())
        return "\n".join(lines)


def _read(root: Path, table: str, columns: list[str]) -> pd.DataFrame:
    return ds.dataset(root / table, format="parquet").to_table(columns=columns).to_pandas()


def summarize_logs(log_dir: str | os.PathLike[str]) -> LogSummary:
    """Summarize the contract tables under ``log_dir``."""
    root = Path(log_dir)
    for table in ("items", "sellers", "impressions", "events"):
        if not (root / table).is_dir():
            raise FileNotFoundError(f"{root / table} not found: {log_dir} does not hold contract tables")
    rows = {t: ds.dataset(root / t, format="parquet").count_rows()
            for t in ("users", "sellers", "items", "impressions", "events") if (root / t).is_dir()}
    imp = _read(root, "impressions", ["impression_id", "ts", "item_id", "position", "randomized"])
    ev = _read(root, "events", ["type", "impression_id", "quantity", "price_paid"])
    items = _read(root, "items", ["item_id", "seller_id"])
    sellers = _read(root, "sellers", ["seller_id", "created_ts"])

    clicked = imp["impression_id"].isin(ev.loc[ev["type"] == "click", "impression_id"].dropna())
    bought = imp["impression_id"].isin(ev.loc[ev["type"] == "purchase", "impression_id"].dropna())
    frame = pd.DataFrame({"position": imp["position"], "click": clicked, "buy": bought, "rand": imp["randomized"]})
    grouped = frame.groupby("position")
    by_pos = pd.DataFrame({"impressions": grouped.size(), "ctr": grouped["click"].mean(),
                           "purchase_rate": grouped["buy"].mean()})
    rand = frame[frame["rand"]].groupby("position")
    by_pos["impressions_randomized"] = rand.size().reindex(by_pos.index).fillna(0).astype(int)
    by_pos["ctr_randomized"] = rand["click"].mean().reindex(by_pos.index)

    purchases = ev[ev["type"] == "purchase"]
    gmv = purchases["price_paid"] * purchases["quantity"]
    period_start = imp["ts"].min()
    new_sellers = sellers.loc[sellers["created_ts"] >= period_start, "seller_id"]
    item_new = items["seller_id"].isin(new_sellers)
    new_item_ids = items.loc[item_new, "item_id"]
    return LogSummary(
        rows=rows, by_position=by_pos, gmv=float(gmv.sum()),
        feed_gmv=float(gmv[purchases["impression_id"].notna()].sum()), purchases=len(purchases),
        new_seller_item_share=float(item_new.mean()) if len(items) else float("nan"),
        new_seller_impression_share=float(np.mean(imp["item_id"].isin(new_item_ids))) if len(imp) else float("nan"),
    )
