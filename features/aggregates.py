"""Point-in-time entity features in Spark: daily snapshots and the user's intraday state.

How leakage is prevented, and why this shape
--------------------------------------------
Every feature a training row sees comes from one of two tables, both keyed so that Feast's
point-in-time join (latest row with ``event_timestamp <= ts``) can only find the past:

1. **Daily snapshots** (``user_features``, ``item_features``, ``seller_features``). The row of
   snapshot day D has ``event_timestamp = D 00:00 UTC`` and is computed only from events and
   impressions with ``ts < D 00:00``: a daily row of day d feeds snapshot D iff
   ``1 <= D - d <= w`` for a w-day window, i.e. the windows are ``[D - w, D)``. Impressions on
   day D therefore see yesterday's closing state, never anything of their own day.
2. **The user's intraday state** (``user_realtime``, the push-source view). One row per user
   and moment of activity t (a feed request or an event), holding the counts of that UTC day
   up to and including t, with ``event_timestamp = t + 1 µs``. A point-in-time join at an
   impression's ``ts`` finds the row of the last activity with ``t + 1 µs <= ts``, i.e.
   ``t < ts`` strictly: events in the same microsecond as the impression (and the impression's
   own request) are not seen. :func:`realtime_state` also derives, for every request, that very
   row (the previous activity's state, dropped past the view's TTL exactly as Feast drops it),
   which the ETL joins to the training rows by ``(user_id, ts)``.

Why daily snapshots plus intraday rows rather than per-impression range windows: 10M
impressions with 1/7/30-day range windows per user and per item would sort and scan the
full impression table once per entity kind on 2 cores, and the result could not be served:
a feature store holds rows per entity, not per impression. Aggregating to (entity, day)
first shrinks the work 20-100x (10M impressions become ~0.7M item-days and ~0.35M
user-days); each daily row is then spread to the (at most ``max window``) snapshots it
feeds and summed once per window. The same tables are what Feast serves, so training and
serving read identical values. The price is staleness: snapshot features lag by up to a day,
which the intraday user counts (and the stream consumer that pushes them live) make up for.

Item attributes (price, list price, stock) come from the items table, which the contract
defines as a snapshot at the end of the log; that is the one input not versioned in time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from features.config import EtlConfig

if TYPE_CHECKING:
    from pyspark.sql import Column as SparkColumn
    from pyspark.sql import DataFrame

__all__ = [
    "DAY_US",
    "day_of",
    "EVENT_WEIGHTS",
    "PROFILE_WINDOW_DAYS",
    "SnapshotRange",
    "daily_item",
    "daily_user",
    "item_snapshots",
    "realtime_state",
    "seller_snapshots",
    "user_snapshots",
]

DAY_US = 86_400 * 1_000_000
PROFILE_WINDOW_DAYS = 30
# Interaction weight of each event type in the user's category profile.
EVENT_WEIGHTS: dict[str, float] = {"click": 1.0, "add_to_cart": 2.0, "purchase": 3.0}


@dataclass(frozen=True)
class SnapshotRange:
    """Snapshot days ``first..last`` (UTC days since the epoch, inclusive)."""

    first: int
    last: int

    def __post_init__(self) -> None:
        if self.last < self.first:
            raise ValueError(f"last must be >= first ({self.first}), got {self.last}")

    @property
    def days(self) -> list[int]:
        return list(range(self.first, self.last + 1))


def _f():
    from pyspark.sql import functions as F

    return F


def day_of(ts_us: SparkColumn) -> SparkColumn:
    """UTC day number (days since 1970-01-01) of a microsecond timestamp column."""
    F = _f()
    return F.floor(ts_us / F.lit(DAY_US)).cast("int")


def _snapshot_frame(spark_df: DataFrame, snaps: SnapshotRange) -> DataFrame:
    F = _f()
    return spark_df.sparkSession.range(snaps.first, snaps.last + 1).select(F.col("id").cast("int").alias("snap"))


def _spread(daily: DataFrame, snaps: SnapshotRange, max_window: int) -> DataFrame:
    """Copy each daily row (column ``day``) to every snapshot ``snap`` with ``1 <= snap - day <= max_window``."""
    F = _f()
    lo = F.greatest(F.col("day") + 1, F.lit(snaps.first))
    hi = F.least(F.col("day") + max_window, F.lit(snaps.last))
    return (daily.filter(lo <= hi)
            .withColumn("snap", F.explode(F.sequence(lo, hi)))
            .withColumn("_age", F.col("snap") - F.col("day")))


def _window_sums(spread: DataFrame, key: str, metrics: dict[str, str], windows: tuple[int, ...]) -> DataFrame:
    """Sum each metric over every window: output column ``<name>_<w>d`` = sum over ``1 <= snap - day <= w``."""
    F = _f()
    aggs = [F.sum(F.when(F.col("_age") <= w, F.col(src)).otherwise(F.lit(0.0))).cast("double").alias(f"{name}_{w}d")
            for name, src in metrics.items() for w in sorted(windows)]
    return spread.groupBy(key, "snap").agg(*aggs)


def _smoothed(num: SparkColumn, den: SparkColumn, prior: SparkColumn, strength: float) -> SparkColumn:
    """``(num + a * prior) / (den + a)``: a rate shrunk towards the global rate."""
    F = _f()
    return (num + F.lit(strength) * F.coalesce(prior, F.lit(0.0))) / (den + F.lit(strength))


def _safe_div(num: SparkColumn, den: SparkColumn) -> SparkColumn:
    F = _f()
    return F.when(den > 0, num / den)


def daily_user(impressions: DataFrame, events: DataFrame) -> DataFrame:
    """Per (user_id, day): views, clicks, carts, purchases, feed clicks, spend and price sums.

    ``impressions`` needs ``user_id, day``; ``events`` needs ``user_id, day, type, impression_id,
    quantity, price_paid, item_price`` and ``cat_median_price`` (the median price of the item's
    category). Clicks, carts and purchases count every event (search traffic included);
    ``feed_clicks`` only those linked to an impression. ``rel_price_sum`` sums
    ``log(item_price / cat_median_price)`` over carts and purchases: how far above or below
    its category's usual price the buyer commits to (their spend level, comparable across
    categories whose prices differ tenfold).
    """
    F = _f()
    views = impressions.groupBy("user_id", "day").agg(F.count(F.lit(1)).cast("double").alias("views"))
    is_click, is_cart, is_buy = (F.col("type") == t for t in ("click", "add_to_cart", "purchase"))
    ev = events.groupBy("user_id", "day").agg(
        F.sum(is_click.cast("double")).alias("clicks"),
        F.sum(is_cart.cast("double")).alias("carts"),
        F.sum(is_buy.cast("double")).alias("purchases"),
        F.sum((is_click & F.col("impression_id").isNotNull()).cast("double")).alias("feed_clicks"),
        F.sum(F.when(is_buy, F.col("price_paid") * F.col("quantity")).otherwise(0.0)).alias("spend"),
        F.sum(F.when(is_buy, F.col("price_paid")).otherwise(0.0)).alias("purchase_price_sum"),
        F.sum(F.when(is_click, F.col("item_price")).otherwise(0.0)).alias("click_price_sum"),
        F.sum(F.when((is_cart | is_buy) & (F.col("cat_median_price") > 0) & (F.col("item_price") > 0),
                     F.log(F.col("item_price") / F.col("cat_median_price"))).otherwise(0.0)).alias("rel_price_sum"),
        F.sum(F.when((is_cart | is_buy) & (F.col("cat_median_price") > 0) & (F.col("item_price") > 0), 1.0)
              .otherwise(0.0)).alias("rel_price_n"),
    )
    out = views.join(ev, ["user_id", "day"], "full_outer").na.fill(0.0)
    return out.withColumn("active", F.lit(1.0))


def daily_item(impressions: DataFrame, events: DataFrame) -> DataFrame:
    """Per (item_id, day): views, feed clicks, feed purchases (linked to an impression), all purchases, GMV."""
    F = _f()
    views = impressions.groupBy("item_id", "day").agg(F.count(F.lit(1)).cast("double").alias("views"))
    linked = F.col("impression_id").isNotNull()
    is_buy = F.col("type") == "purchase"
    ev = events.groupBy("item_id", "day").agg(
        F.sum(((F.col("type") == "click") & linked).cast("double")).alias("feed_clicks"),
        F.sum((is_buy & linked).cast("double")).alias("feed_purchases"),
        F.sum(is_buy.cast("double")).alias("purchases"),
        F.sum(F.when(is_buy, F.col("price_paid") * F.col("quantity")).otherwise(0.0)).alias("gmv"),
    )
    return views.join(ev, ["item_id", "day"], "full_outer").na.fill(0.0)


def _profiles(events: DataFrame, snaps: SnapshotRange, cfg: EtlConfig) -> DataFrame:
    """Per (user_id, snap): the user's top categories, sellers and items over the last 30 days.

    Categories are ranked by interaction weight (:data:`EVENT_WEIGHTS`) and carry their share
    of the user's total weight (``top_cat_id_k``, ``top_cat_w_k``); sellers and items are ranked
    by number of interactions (``top_seller_id_k``/``top_seller_n_k``, ``top_item_id_k``/
    ``top_item_n_k``). Ties go to the smaller id; slots past the user's last key are null.
    Also ``f_user_top_cat_share_30d`` and ``f_user_n_categories_30d``. All three lists come
    out of one aggregation and one ranking pass.
    """
    from pyspark.sql import Window

    F = _f()
    weight = F.lit(0.0)
    for event_type, w in EVENT_WEIGHTS.items():
        weight = F.when(F.col("type") == event_type, F.lit(w)).otherwise(weight)
    kinds = (("cat", "category_id", weight, cfg.top_categories, "top_cat_id", "top_cat_w"),
             ("seller", "seller_id", F.lit(1.0), cfg.top_sellers, "top_seller_id", "top_seller_n"),
             ("item", "item_id", F.lit(1.0), cfg.top_items, "top_item_id", "top_item_n"))
    keyed = events.select("user_id", "day", F.explode(F.array(*[
        F.struct(F.lit(i).alias("kind"), F.col(col).cast("long").alias("key"), value.cast("double").alias("v"))
        for i, (_, col, value, _, _, _) in enumerate(kinds)])).alias("e")).select("user_id", "day", "e.*")
    daily = keyed.groupBy("user_id", "day", "kind", "key").agg(F.sum("v").alias("v"))
    per_key = (_spread(daily, snaps, PROFILE_WINDOW_DAYS)
               .groupBy("user_id", "snap", "kind", "key").agg(F.sum("v").alias("v")))
    part = Window.partitionBy("user_id", "snap", "kind")
    limit = F.lit(0)
    for i, (_, _, _, k, _, _) in enumerate(kinds):
        limit = F.when(F.col("kind") == i, F.lit(k)).otherwise(limit)
    ranked = (per_key.withColumn("_rank", F.row_number().over(part.orderBy(F.col("v").desc(), F.col("key").asc())))
              .withColumn("_total", F.sum("v").over(part))
              .withColumn("_n_keys", F.count(F.lit(1)).over(part))
              .filter(F.col("_rank") <= limit))
    aggs = []
    for i, (name, _, _, k, ids, values) in enumerate(kinds):
        mine = F.col("kind") == i
        value = F.col("v") / F.col("_total") if name == "cat" else F.col("v")
        aggs += [F.max(F.when(mine & (F.col("_rank") == r), F.col("key"))).alias(f"{ids}_{r}") for r in range(1, k + 1)]
        aggs += [F.max(F.when(mine & (F.col("_rank") == r), value)).alias(f"{values}_{r}") for r in range(1, k + 1)]
    aggs.append(F.max(F.when(F.col("kind") == 0, F.col("_n_keys"))).cast("double").alias("f_user_n_categories_30d"))
    out = ranked.groupBy("user_id", "snap").agg(*aggs)
    return out.withColumn("f_user_top_cat_share_30d", F.col("top_cat_w_1"))


def user_snapshots(users: DataFrame, daily: DataFrame, events: DataFrame, snaps: SnapshotRange,
                   cfg: EtlConfig) -> DataFrame:
    """One row per (user, snapshot day) for users signed up by the end of that day.

    Columns: ``user_id, snap``, the ``f_user_*`` features of
    :func:`features.outputs.user_feature_names` and the derived-feature inputs
    (``user_signup_us`` and the top-K lists). Counts are 0 and means null without history;
    ``f_user_ctr_30d`` is then the global rate.
    """
    F = _f()
    windows = tuple(sorted(set(cfg.windows_days)))
    base = (users.select("user_id", F.unix_micros("signup_ts").alias("user_signup_us"))
            .crossJoin(_snapshot_frame(users, snaps))
            .filter(F.col("user_signup_us") < (F.col("snap") + 1) * F.lit(DAY_US)))
    metrics = {"f_user_views": "views", "f_user_clicks": "clicks", "f_user_carts": "carts",
               "f_user_purchases": "purchases", "_feed_clicks": "feed_clicks", "_active": "active",
               "_spend": "spend", "_pp_sum": "purchase_price_sum", "_cp_sum": "click_price_sum",
               "_rp_sum": "rel_price_sum", "_rp_n": "rel_price_n"}
    sums = _window_sums(_spread(daily, snaps, max(windows)), "user_id", metrics, windows)
    prior = sums.groupBy("snap").agg((F.sum("_feed_clicks_30d") / F.greatest(F.sum("f_user_views_30d"), F.lit(1.0)))
                                     .alias("_prior_ctr"))
    out = (base.join(sums, ["user_id", "snap"], "left")
           .na.fill(0.0, subset=[c for c in sums.columns if c not in ("user_id", "snap")])
           .join(prior, "snap", "left")
           .join(_profiles(events, snaps, cfg), ["user_id", "snap"], "left")
           .na.fill(0.0, subset=["f_user_n_categories_30d"]))
    out = out.select(
        "user_id", "snap", "user_signup_us",
        *[c for c in out.columns if c.startswith("f_user_") or c.startswith("top_")],
        _smoothed(F.col("_feed_clicks_30d"), F.col("f_user_views_30d"), F.col("_prior_ctr"), cfg.prior_strength)
        .alias("f_user_ctr_30d"),
        F.col("_active_30d").alias("f_user_active_days_30d"),
        F.col("_spend_30d").alias("f_user_spend_30d"),
        _safe_div(F.col("_pp_sum_30d"), F.col("f_user_purchases_30d")).alias("f_user_purchase_price_mean_30d"),
        _safe_div(F.col("_cp_sum_30d"), F.col("f_user_clicks_30d")).alias("f_user_click_price_mean_30d"),
        _safe_div(F.col("_rp_sum_30d"), F.col("_rp_n_30d")).alias("f_user_rel_price_30d"),
    )
    return _with_spend_band(out)


def category_median_prices(items: DataFrame) -> DataFrame:
    """``category_id, cat_median_price``: the median listed price of each category (items table)."""
    F = _f()
    return items.groupBy("category_id").agg(F.percentile("price", 0.5).alias("cat_median_price"))


def _with_spend_band(frame: DataFrame) -> DataFrame:
    """``f_user_spend_band``: 0 without purchases in 30 days, else 1-3 by tercile of spend among that day's buyers."""
    from pyspark.sql import Window

    F = _f()
    buyers = frame.filter(F.col("f_user_spend_30d") > 0).select("user_id", "snap", "f_user_spend_30d")
    ranked = buyers.withColumn("_pr", F.percent_rank().over(Window.partitionBy("snap").orderBy("f_user_spend_30d")))
    band = ranked.select("user_id", "snap",
                         F.least(F.lit(3.0), F.floor(F.col("_pr") * 3) + 1).cast("double").alias("f_user_spend_band"))
    return frame.join(band, ["user_id", "snap"], "left").na.fill(0.0, subset=["f_user_spend_band"])


def item_snapshots(items: DataFrame, sellers: DataFrame, daily: DataFrame, snaps: SnapshotRange,
                   cfg: EtlConfig) -> DataFrame:
    """One row per (item, snapshot day) for items listed by the end of that day.

    Columns: ``item_id, snap``, ``f_item_*`` (:func:`features.outputs.item_feature_names`) and
    ``item_category_id, item_seller_id, item_created_us``.
    """
    F = _f()
    windows = tuple(sorted(set(cfg.windows_days)))
    seller_cols = sellers.select(F.col("seller_id").alias("item_seller_id"), F.col("rating").alias("_rating"),
                                 F.unix_micros("created_ts").alias("_seller_created_us"))
    base = (items.select("item_id", F.col("category_id").alias("item_category_id"),
                         F.col("seller_id").alias("item_seller_id"), F.unix_micros("created_ts").alias("item_created_us"),
                         "price", "list_price", "in_stock", "stock_qty")
            .crossJoin(_snapshot_frame(items, snaps))
            .filter(F.col("item_created_us") < (F.col("snap") + 1) * F.lit(DAY_US))
            .join(seller_cols, "item_seller_id", "left"))
    snap_start = F.col("snap") * F.lit(DAY_US)
    listed = base.filter(F.col("item_created_us") < snap_start)
    medians = listed.groupBy("snap", "item_category_id").agg(F.percentile("price", 0.5).alias("_cat_median"))
    spread = _spread(daily, snaps, max(windows))
    sums = _window_sums(spread, "item_id", {"views": "views", "clicks": "feed_clicks", "fbuys": "feed_purchases",
                                            "purchases": "purchases"}, windows)
    prior_aggs = []
    for w in windows:
        views = F.greatest(F.sum(f"views_{w}d"), F.lit(1.0))
        prior_aggs += [(F.sum(f"clicks_{w}d") / views).alias(f"_pctr_{w}d"),
                       (F.sum(f"fbuys_{w}d") / views).alias(f"_pbuy_{w}d")]
    priors = sums.groupBy("snap").agg(*prior_aggs)
    out = (base.join(sums, ["item_id", "snap"], "left").na.fill(0.0, subset=[c for c in sums.columns
                                                                            if c.endswith("d")])
           .join(priors, "snap", "left")
           .join(medians, ["snap", "item_category_id"], "left"))
    new_seller = (F.col("_seller_created_us") > snap_start - F.lit(int(cfg.new_seller_days * DAY_US)))
    cols = [
        "item_id", "snap",
        F.col("price").cast("double").alias("f_item_price"),
        F.when(F.col("list_price").isNotNull(), F.lit(1.0) - F.col("price") / F.col("list_price"))
        .otherwise(F.lit(0.0)).alias("f_item_discount"),
        F.col("in_stock").cast("double").alias("f_item_in_stock"),
        F.col("stock_qty").cast("double").alias("f_item_stock_qty"),
        F.col("_rating").cast("double").alias("f_item_seller_rating"),
        new_seller.cast("double").alias("f_item_new_seller"),
        _safe_div(F.col("price"), F.col("_cat_median")).alias("f_item_price_to_cat_median"),
    ]
    for w in windows:
        cols.append(F.col(f"views_{w}d").alias(f"f_item_views_{w}d"))
    for w in windows:
        cols.append(F.col(f"purchases_{w}d").alias(f"f_item_purchases_{w}d"))
    for w in windows:
        cols.append(_smoothed(F.col(f"clicks_{w}d"), F.col(f"views_{w}d"), F.col(f"_pctr_{w}d"),
                              cfg.prior_strength).alias(f"f_item_ctr_{w}d"))
    for w in windows:
        cols.append(_smoothed(F.col(f"fbuys_{w}d"), F.col(f"views_{w}d"), F.col(f"_pbuy_{w}d"),
                              cfg.prior_strength).alias(f"f_item_purchase_rate_{w}d"))
    cols += ["item_category_id", "item_seller_id", "item_created_us"]
    return out.select(*cols)


def seller_snapshots(sellers: DataFrame, items: DataFrame, daily_items: DataFrame, snaps: SnapshotRange,
                     cfg: EtlConfig) -> DataFrame:
    """One row per (seller, snapshot day) for sellers created by the end of that day: ``f_seller_*``."""
    F = _f()
    snap_start = F.col("snap") * F.lit(DAY_US)
    base = (sellers.select("seller_id", F.unix_micros("created_ts").alias("_created_us"))
            .crossJoin(_snapshot_frame(sellers, snaps))
            .filter(F.col("_created_us") < (F.col("snap") + 1) * F.lit(DAY_US)))
    listed = (items.select("seller_id", F.unix_micros("created_ts").alias("_item_created_us"))
              .crossJoin(_snapshot_frame(items, snaps))
              .filter(F.col("_item_created_us") < snap_start)
              .groupBy("seller_id", "snap").agg(F.count(F.lit(1)).cast("double").alias("f_seller_n_items")))
    daily = (daily_items.join(items.select("item_id", "seller_id"), "item_id")
             .groupBy("seller_id", "day").agg(*[F.sum(c).alias(c) for c in ("views", "feed_clicks", "feed_purchases",
                                                                             "gmv")]))
    sums = _window_sums(_spread(daily, snaps, PROFILE_WINDOW_DAYS), "seller_id",
                        {"views": "views", "clicks": "feed_clicks", "fbuys": "feed_purchases", "gmv": "gmv"},
                        (PROFILE_WINDOW_DAYS,))
    views = F.greatest(F.sum("views_30d"), F.lit(1.0))
    priors = sums.groupBy("snap").agg((F.sum("clicks_30d") / views).alias("_pctr"),
                                      (F.sum("fbuys_30d") / views).alias("_pbuy"))
    out = (base.join(listed, ["seller_id", "snap"], "left")
           .join(sums, ["seller_id", "snap"], "left")
           .na.fill(0.0, subset=["f_seller_n_items", "views_30d", "clicks_30d", "fbuys_30d", "gmv_30d"])
           .join(priors, "snap", "left"))
    return out.select(
        "seller_id", "snap", "f_seller_n_items",
        F.greatest(F.lit(0.0), (snap_start - F.col("_created_us")) / F.lit(float(DAY_US))).alias("f_seller_age_days"),
        _smoothed(F.col("clicks_30d"), F.col("views_30d"), F.col("_pctr"), cfg.prior_strength)
        .alias("f_seller_ctr_30d"),
        _smoothed(F.col("fbuys_30d"), F.col("views_30d"), F.col("_pbuy"), cfg.prior_strength)
        .alias("f_seller_purchase_rate_30d"),
        F.col("gmv_30d").alias("f_seller_gmv_30d"),
    )


def realtime_state(impressions: DataFrame, events: DataFrame, cfg: EtlConfig) -> tuple[DataFrame, DataFrame]:
    """The user's intraday rows, and the row each feed request sees.

    Parameters
    ----------
    impressions : DataFrame with ``user_id, ts_us``
    events : DataFrame with ``user_id, ts_us, type``
    cfg : EtlConfig
        ``realtime_ttl_days`` is the Feast TTL of the view.

    Returns
    -------
    rows : DataFrame
        ``user_id, ts_us, rt_day, rt_views, rt_clicks, rt_carts, rt_purchases, rt_last_view_us,
        rt_last_event_us``: the state after all activity at ``ts_us`` (its ``event_timestamp`` is
        ``ts_us + 1``); the ``user_realtime`` table.
    seen : DataFrame
        ``user_id, ts_us`` of every request and the ``rt_*`` columns of the row a point-in-time
        join at ``ts_us`` returns: the previous activity's row, or nulls when there is none
        within the TTL (Feast keeps a row iff ``event_timestamp >= ts - ttl``).
    """
    from pyspark.sql import Window

    F = _f()
    views = impressions.groupBy("user_id", "ts_us").agg(F.count(F.lit(1)).cast("long").alias("_views"))
    ev = events.groupBy("user_id", "ts_us").agg(
        *[F.sum((F.col("type") == t).cast("long")).alias(f"_{name}")
          for t, name in (("click", "clicks"), ("add_to_cart", "carts"), ("purchase", "purchases"))])
    act = (views.join(ev, ["user_id", "ts_us"], "full_outer").na.fill(0)
           .withColumn("rt_day", day_of(F.col("ts_us")).cast("long")))
    by_day = Window.partitionBy("user_id", "rt_day").orderBy("ts_us").rowsBetween(Window.unboundedPreceding,
                                                                                  Window.currentRow)
    by_user = Window.partitionBy("user_id").orderBy("ts_us")
    rows = act.select(
        "user_id", "ts_us", "rt_day",
        *[F.sum(f"_{n}").over(by_day).alias(f"rt_{n}") for n in ("views", "clicks", "carts", "purchases")],
        F.max(F.when(F.col("_views") > 0, F.col("ts_us"))).over(by_user.rowsBetween(Window.unboundedPreceding,
                                                                                    Window.currentRow))
        .alias("rt_last_view_us"),
        F.max(F.when(F.col("_clicks") + F.col("_carts") + F.col("_purchases") > 0, F.col("ts_us")))
        .over(by_user.rowsBetween(Window.unboundedPreceding, Window.currentRow)).alias("rt_last_event_us"),
        F.col("_views"),
    )
    ttl_us = int(cfg.realtime_ttl_days * DAY_US)
    prev_ts = F.lag("ts_us").over(by_user)
    rt_cols = ["rt_day", "rt_views", "rt_clicks", "rt_carts", "rt_purchases", "rt_last_view_us", "rt_last_event_us"]
    with_prev = rows.select("user_id", "ts_us", "_views", prev_ts.alias("_prev_ts"),
                            *[F.lag(c).over(by_user).alias(c) for c in rt_cols])
    alive = F.col("_prev_ts").isNotNull() & (F.col("ts_us") - F.col("_prev_ts") - 1 <= F.lit(ttl_us))
    seen = with_prev.filter(F.col("_views") > 0).select(
        "user_id", "ts_us", *[F.when(alive, F.col(c)).alias(c) for c in rt_cols])
    return rows.drop("_views"), seen
