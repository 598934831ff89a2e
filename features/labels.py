"""Attribution of events to impressions, and the graded label of every impression.

An event is attributed to the impression its ``impression_id`` names (the validator has
already checked that the impression exists, is earlier, and is for the same user and item),
when it falls inside its type's window after the impression:

- click: within the session (``session_minutes``, default 30 min);
- add-to-cart: within ``cart_hours`` (default 24 h);
- purchase: within ``purchase_short_hours`` (``purchased_24h``) and within ``purchase_days``
  (``purchased_7d``, ``gmv_7d = sum(price_paid * quantity)``).

Events without an impression (search, direct links) are user history, not labels.
``label = 3 if purchased_7d else 2 if carted else 1 if clicked else 0``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from features.config import EtlConfig

if TYPE_CHECKING:
    from pyspark.sql import Column as SparkColumn
    from pyspark.sql import DataFrame

__all__ = ["LABEL_COLUMNS", "attribute", "graded_label"]

LABEL_COLUMNS: tuple[str, ...] = ("label", "clicked", "carted", "purchased_24h", "purchased_7d", "gmv_7d")


def attribute(events: DataFrame, cfg: EtlConfig) -> DataFrame:
    """Per impression with at least one linked event: the attributed flags and GMV.

    Parameters
    ----------
    events : DataFrame
        Valid events with ``impression_id, impression_ts, ts, type, quantity, price_paid``.
    cfg : EtlConfig

    Returns
    -------
    DataFrame
        ``impression_id, clicked, carted, purchased_24h, purchased_7d, gmv_7d``.
    """
    from pyspark.sql import functions as F

    delta = F.unix_micros("ts") - F.unix_micros("impression_ts")
    us = 1_000_000
    click = (F.col("type") == "click") & (delta <= F.lit(int(cfg.session_minutes * 60 * us)))
    cart = (F.col("type") == "add_to_cart") & (delta <= F.lit(int(cfg.cart_hours * 3600 * us)))
    buy = F.col("type") == "purchase"
    buy_short = buy & (delta <= F.lit(int(cfg.purchase_short_hours * 3600 * us)))
    buy_long = buy & (delta <= F.lit(int(cfg.purchase_days * 86_400 * us)))
    return (events.filter(F.col("impression_id").isNotNull())
            .groupBy("impression_id")
            .agg(F.max(click).alias("clicked"), F.max(cart).alias("carted"),
                 F.max(buy_short).alias("purchased_24h"), F.max(buy_long).alias("purchased_7d"),
                 F.sum(F.when(buy_long, F.col("price_paid") * F.col("quantity")).otherwise(F.lit(0.0)))
                 .alias("gmv_7d")))


def graded_label(clicked: SparkColumn, carted: SparkColumn, purchased_7d: SparkColumn) -> SparkColumn:
    """purchase (3) > add-to-cart (2) > click (1) > none (0), as int32."""
    from pyspark.sql import functions as F

    return (F.when(purchased_7d, 3).when(carted, 2).when(clicked, 1).otherwise(0)).cast("int")
