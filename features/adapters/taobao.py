"""Adapter: Alibaba's Taobao UserBehavior log (Tianchi dataset 649) into the event-log contract.

The source is a headerless CSV ``user_id,item_id,category_id,behavior,unix_ts`` with
``behavior`` in pv (item page view), fav, cart, buy. It has no prices, no sellers, no
devices, no feed requests and no positions, so the adapter has to decide how each
contract field is filled; every decision is listed in :data:`IMPUTATIONS` and written
beside the tables (``_source.json``):

- **Impressions**: every ``pv`` row is an impression of that item to that user (the page
  view is the exposure we can see). Page views of one user in the same second form one
  request. ``position`` is null (the log has no slots), ``propensity`` null, ``randomized``
  false, ``policy`` ``"taobao-pv"``, ``device`` null. Position-bias estimation and IPS
  weights therefore have nothing to work with on this source; models must not read
  ``position`` for it.
- **Events**: ``fav`` plays the click (the weakest engagement beyond the view), ``cart``
  the add-to-cart, ``buy`` the purchase (quantity 1). Each is linked to the user's latest
  ``pv`` of the same item at or before it (``impression_id``), or left unlinked (search-like
  history) when there is none; the ETL's windows then decide whether it labels that view.
- **Prices are unknown**: every item gets the placeholder price :data:`IMPUTED_PRICE` (1.0)
  and purchases pay it, so GMV counts units bought; ``list_price`` and ``margin_rate`` are
  null. Price features (``f_item_price``, price ratios, spend) are constant or unit counts
  on this source and carry no price information.
- **Sellers are unknown**: all items belong to one placeholder seller (id 0, no rating);
  seller features are therefore marketplace-wide and ``f_item_seller_rating`` is null.
- **Dates**: ``signup_ts`` of a user and ``created_ts`` of an item are the first time they
  appear in the log; country is ``"CN"``, the user's device ``"unknown"``; items are in
  stock with an unknown quantity.

The adapter is a configuration of the generic one (:func:`taobao_interactions` for
:mod:`features.adapters.interactions`). Rows that cannot be mapped are quarantined with a
reason, never dropped: lines without exactly five fields (the file's last line is cut off), fields that are not integers,
unknown behaviours, and timestamps outside the collection period (by default
2017-11-25 00:00 to 2017-12-04 00:00, UTC+8). They go to ``_quarantine/taobao.parquet``
(line number, raw line, reason).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from features.adapters.interactions import (
    UNLOGGED_COLUMNS,
    InteractionsConfig,
    InteractionsReport,
    adapt_interactions,
    imputations,
)
from features.config import check, parse_utc

__all__ = ["BEHAVIOUR_EVENTS", "IMPUTATIONS", "IMPUTED_PRICE", "UNLOGGED_COLUMNS", "TaobaoConfig", "TaobaoReport",
           "adapt_taobao", "taobao_interactions"]

IMPUTED_PRICE = 1.0
BEHAVIOUR_EVENTS: dict[str, str] = {"fav": "click", "cart": "add_to_cart", "buy": "purchase"}
PAGE_VIEW = "pv"
POLICY = "taobao-pv"
_COLUMNS = ("user_id", "item_id", "category_id", "behavior", "unix_ts")
# The report type of the generic adapter (kept under the name callers know).
TaobaoReport = InteractionsReport


@dataclass(frozen=True)
class TaobaoConfig:
    """How the adapter reads the source.

    Parameters
    ----------
    period_start, period_end : str
        ISO-8601 collection period ``[start, end)``; rows outside it are quarantined.
    imputed_price : float
        Placeholder unit price of every item (> 0).
    """

    period_start: str = "2017-11-25T00:00:00+08:00"
    period_end: str = "2017-12-04T00:00:00+08:00"
    imputed_price: float = IMPUTED_PRICE

    def __post_init__(self) -> None:
        start, end = parse_utc(self.period_start, "period_start"), parse_utc(self.period_end, "period_end")
        check(start < end, "period_end", f"after period_start ({self.period_start})", self.period_end)
        check(self.imputed_price > 0, "imputed_price", "> 0", self.imputed_price)


def taobao_interactions(config: TaobaoConfig | None = None) -> InteractionsConfig:
    """The generic adapter's configuration that reads the Taobao UserBehavior CSV."""
    config = config or TaobaoConfig()
    return InteractionsConfig(
        user="user_id", item="item_id", category="category_id", event="behavior", timestamp="unix_ts",
        timestamp_unit="s", event_map=((PAGE_VIEW, "view"), *BEHAVIOUR_EVENTS.items()), columns=_COLUMNS,
        period_start=config.period_start, period_end=config.period_end, imputed_price=config.imputed_price,
        country="CN", device="unknown", policy=POLICY, name="taobao")


IMPUTATIONS: dict[str, str] = imputations(taobao_interactions())


def adapt_taobao(source: str | os.PathLike[str], out_dir: str | os.PathLike[str], *,
                 config: TaobaoConfig | None = None) -> TaobaoReport:
    """Map the Taobao CSV at ``source`` into the five contract tables under ``out_dir``.

    Writes ``<out_dir>/<table>/part-00000.parquet`` for each table, the quarantined source
    lines to ``<out_dir>/_quarantine/taobao.parquet`` (line, raw_line, reason), and
    ``<out_dir>/_source.json`` (the report, the imputations and the unlogged columns); see
    :func:`features.adapters.interactions.adapt_interactions`.

    Raises
    ------
    FileNotFoundError
        If ``source`` does not exist.
    """
    return adapt_interactions(source, out_dir, taobao_interactions(config))
