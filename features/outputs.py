"""The ETL's output tables, declared once: folder names, base columns and feature names.

``docs/training-data.md`` describes the same schema for the people who read it; the checks
(:mod:`features.checks`) verify written data against these declarations, and the Feast repo
(:mod:`features.store`) serves the feature tables named here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from features.config import EtlConfig
from features.derived import DERIVED_FEATURES, REALTIME_INPUTS, user_inputs

__all__ = [
    "FEATURE_SOURCES",
    "ITEM_AUX",
    "KEY_COLUMNS",
    "OutputLayout",
    "REALTIME_COLUMNS",
    "TRAINING_BASE",
    "item_feature_names",
    "seller_feature_names",
    "training_feature_names",
    "training_schema",
    "user_aux_names",
    "user_feature_names",
    "write_empty_feature_tables",
]

TS_TYPE = pa.timestamp("us", tz="UTC")

# (name, type, nullable) of the non-feature columns of ``training/``, in order.
TRAINING_BASE: tuple[tuple[str, pa.DataType, bool], ...] = (
    ("impression_id", pa.int64(), False),
    ("request_id", pa.int64(), False),
    ("ts", TS_TYPE, False),
    ("user_id", pa.int64(), False),
    ("item_id", pa.int64(), False),
    ("seller_id", pa.int64(), False),
    ("category_id", pa.int64(), False),
    ("position", pa.int32(), True),
    ("randomized", pa.bool_(), False),
    ("propensity", pa.float64(), True),
    ("policy", pa.string(), False),
    ("device", pa.string(), True),
    ("label", pa.int32(), False),
    ("clicked", pa.bool_(), False),
    ("carted", pa.bool_(), False),
    ("purchased_24h", pa.bool_(), False),
    ("purchased_7d", pa.bool_(), False),
    ("gmv_7d", pa.float64(), False),
    ("label_complete", pa.bool_(), False),
    ("sample_weight", pa.float64(), False),
    ("price", pa.float64(), False),
    ("margin_rate", pa.float64(), True),
)
KEY_COLUMNS: tuple[str, ...] = tuple(name for name, _, nullable in TRAINING_BASE if not nullable)

ITEM_AUX: tuple[str, ...] = ("item_category_id", "item_seller_id", "item_created_us")

# Features that are null exactly where an optional contract column is null. A source that
# declares the column unlogged (``<logs>/_source.json``, "unlogged_columns") exempts the
# feature from the null-rate check instead of failing every run.
FEATURE_SOURCES: dict[str, str] = {
    "f_item_stock_qty": "items.stock_qty",
    "f_item_seller_rating": "sellers.rating",
    "f_ctx_device": "impressions.device",
}
REALTIME_COLUMNS: tuple[str, ...] = REALTIME_INPUTS


@dataclass(frozen=True)
class OutputLayout:
    """Folder names under the ETL's output folder (each partitioned by ``date=YYYY-MM-DD``)."""

    training: str = "training"
    user_features: str = "user_features"
    item_features: str = "item_features"
    seller_features: str = "seller_features"
    user_realtime: str = "user_realtime"
    quarantine: str = "quarantine"
    reports: str = "_reports"

    @property
    def partitioned(self) -> tuple[str, ...]:
        return (self.training, self.user_features, self.item_features, self.seller_features, self.user_realtime)


def _windowed(prefix: str, names: tuple[str, ...], windows: tuple[int, ...]) -> list[str]:
    return [f"{prefix}_{n}_{w}d" for n in names for w in sorted(windows)]


def user_feature_names(cfg: EtlConfig) -> tuple[str, ...]:
    """``f_user_*`` columns of ``user_features/`` (snapshot features; see :mod:`features.aggregates`)."""
    return tuple(_windowed("f_user", ("views", "clicks", "carts", "purchases"), cfg.windows_days) + [
        "f_user_ctr_30d", "f_user_active_days_30d", "f_user_spend_30d", "f_user_spend_band",
        "f_user_purchase_price_mean_30d", "f_user_click_price_mean_30d", "f_user_top_cat_share_30d",
        "f_user_n_categories_30d", "f_user_rel_price_30d"])


def user_aux_names(cfg: EtlConfig) -> tuple[str, ...]:
    """Non-feature columns of ``user_features/`` that :func:`features.derived.derived_features` reads."""
    scalars = {"f_user_purchase_price_mean_30d", "f_user_click_price_mean_30d", "f_user_rel_price_30d"}
    return tuple(c for c in user_inputs(cfg.top_categories, cfg.top_sellers, cfg.top_items) if c not in scalars)


def item_feature_names(cfg: EtlConfig) -> tuple[str, ...]:
    """``f_item_*`` columns of ``item_features/``."""
    return tuple(["f_item_price", "f_item_discount", "f_item_in_stock", "f_item_stock_qty", "f_item_seller_rating",
                  "f_item_new_seller", "f_item_price_to_cat_median"]
                 + _windowed("f_item", ("views", "purchases", "ctr", "purchase_rate"), cfg.windows_days))


def seller_feature_names(cfg: EtlConfig) -> tuple[str, ...]:
    """``f_seller_*`` columns of ``seller_features/``."""
    return ("f_seller_n_items", "f_seller_age_days", "f_seller_ctr_30d", "f_seller_purchase_rate_30d",
            "f_seller_gmv_30d")


def training_feature_names(cfg: EtlConfig) -> tuple[str, ...]:
    """Every ``f_*`` column of ``training/``, in order: user, item, seller, then request-time ones."""
    return user_feature_names(cfg) + item_feature_names(cfg) + seller_feature_names(cfg) + DERIVED_FEATURES


def training_schema(cfg: EtlConfig) -> pa.Schema:
    """The Arrow schema of a ``training/`` partition file (the ``date`` folder adds a ``date`` column)."""
    fields = [pa.field(n, t, nullable=nullable) for n, t, nullable in TRAINING_BASE]
    fields += [pa.field(n, pa.float64()) for n in training_feature_names(cfg)]
    return pa.schema(fields)


def write_empty_feature_tables(root: str | Path, cfg: EtlConfig, *, date: str = "2026-01-05") -> None:
    """Write empty ``user_features/``, ``item_features/``, ``seller_features/`` and
    ``user_realtime/`` partitions with the ETL's columns under ``root``.

    The Feast repo takes its views' schemas from these tables, so this lets it apply before any
    ETL has run: a stream consumer or a benchmark that writes only the online store.
    """
    import pyarrow.parquet as pq

    layout = OutputLayout()
    columns = {
        layout.user_features: [("user_id", pa.int64())] + [(n, pa.float64()) for n in user_feature_names(cfg)],
        layout.item_features: [("item_id", pa.int64())] + [(n, pa.float64()) for n in item_feature_names(cfg)],
        layout.seller_features: [("seller_id", pa.int64())] + [(n, pa.float64()) for n in seller_feature_names(cfg)],
        layout.user_realtime: [("user_id", pa.int64())] + [(n, pa.int64()) for n in REALTIME_COLUMNS],
    }
    for table, fields in columns.items():
        schema = pa.schema(fields[:1] + [("event_timestamp", TS_TYPE)] + fields[1:])
        folder = Path(root) / table / f"date={date}"
        folder.mkdir(parents=True)
        pq.write_table(schema.empty_table(), folder / "part-0.parquet")
