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

Rows that cannot be mapped are quarantined with a reason, never dropped: lines without
exactly five fields (the file's last line is cut off), fields that are not integers,
unknown behaviours, and timestamps outside the collection period (by default
2017-11-25 00:00 to 2017-12-04 00:00, UTC+8). They go to ``_quarantine/taobao.parquet``
(line number, raw line, reason).
"""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from features.config import check, parse_utc
from features.contract import TABLE_ORDER
from features.validation import validate_logs

__all__ = ["BEHAVIOUR_EVENTS", "IMPUTATIONS", "IMPUTED_PRICE", "TaobaoConfig", "TaobaoReport", "adapt_taobao"]

logger = logging.getLogger(__name__)

IMPUTED_PRICE = 1.0
BEHAVIOUR_EVENTS: dict[str, str] = {"fav": "click", "cart": "add_to_cart", "buy": "purchase"}
PAGE_VIEW = "pv"
POLICY = "taobao-pv"
_COLUMNS = ("user_id", "item_id", "category_id", "behavior", "unix_ts")
IMPUTATIONS: dict[str, str] = {
    "impressions": "each pv row; same user and second = one request; position, propensity, device null",
    "events": "fav -> click, cart -> add_to_cart, buy -> purchase (quantity 1), linked to the latest pv of the "
              "same user and item at or before it",
    "items.price": f"unknown: placeholder {IMPUTED_PRICE} for every item (GMV counts units)",
    "items.list_price": "unknown: null",
    "items.margin_rate": "unknown: null",
    "items.seller_id": "unknown: one placeholder seller (0) for every item",
    "items.created_ts": "first appearance in the log",
    "items.in_stock": "true; stock_qty null",
    "users.signup_ts": "first appearance in the log",
    "users.country": "CN",
    "users.device": "unknown",
    "sellers.rating": "unknown: null",
}
# Contract columns this source never logs (the ETL's null-rate check skips features built on them).
UNLOGGED_COLUMNS: tuple[str, ...] = ("items.list_price", "items.margin_rate", "items.stock_qty", "sellers.rating",
                                     "impressions.position", "impressions.propensity", "impressions.device")


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


@dataclass(frozen=True)
class TaobaoReport:
    """Counts of one adaptation: rows read, mapped per behaviour, quarantined per reason, rows per table."""

    source: str
    out_dir: str
    lines: int
    behaviours: dict[str, int]
    quarantined: int
    reasons: dict[str, int]
    tables: dict[str, int]
    imputations: dict[str, str] = field(default_factory=lambda: dict(IMPUTATIONS))


def _parse(path: Path, config: TaobaoConfig) -> tuple[pd.DataFrame, pd.DataFrame, int]:
    """Split the CSV into parsed rows (with their line numbers) and quarantined lines with reasons."""
    lo = int(parse_utc(config.period_start, "period_start").timestamp())
    hi = int(parse_utc(config.period_end, "period_end").timestamp())
    good: dict[str, list[int | str]] = {c: [] for c in ("line", *_COLUMNS)}
    bad: list[tuple[int, str, str]] = []
    allowed = (PAGE_VIEW, *BEHAVIOUR_EVENTS)
    line_no = 0
    with path.open(newline="") as fh:
        for line_no, fields in enumerate(csv.reader(fh), start=1):
            raw = ",".join(fields)
            if len(fields) != len(_COLUMNS):
                bad.append((line_no, raw, f"row: expected {len(_COLUMNS)} fields, got {len(fields)}"))
                continue
            reasons: list[str] = []
            values: list[int | str] = []
            for name, value in zip(_COLUMNS, fields, strict=True):
                if name == "behavior":
                    if value not in allowed:
                        reasons.append(f"behavior: must be one of {list(allowed)}")
                    values.append(value)
                    continue
                try:
                    number = int(value)
                except ValueError:
                    reasons.append(f"{name}: not an integer")
                    values.append(0)
                    continue
                if number < 0:
                    reasons.append(f"{name}: must be >= 0")
                values.append(number)
            if not reasons and not lo <= int(values[4]) < hi:
                reasons.append(f"unix_ts: outside the period [{config.period_start}, {config.period_end})")
            if reasons:
                bad.append((line_no, raw, "; ".join(reasons)))
                continue
            good["line"].append(line_no)
            for column, parsed in zip(_COLUMNS, values, strict=True):
                good[column].append(parsed)
    rows = pd.DataFrame(good).astype({c: "int64" for c in ("line", "user_id", "item_id", "category_id", "unix_ts")})
    quarantine = pd.DataFrame(bad, columns=["line", "raw_line", "reason"]).astype({"line": "int64"})
    return rows, quarantine, line_no


def _contract_tables(rows: pd.DataFrame, config: TaobaoConfig) -> dict[str, pd.DataFrame]:
    ts = pd.to_datetime(rows["unix_ts"], unit="s", utc=True).astype("datetime64[us, UTC]")
    rows = rows.assign(ts=ts)
    first_user = rows.groupby("user_id")["ts"].min()
    users = pd.DataFrame({"user_id": first_user.index.to_numpy(), "signup_ts": first_user.to_numpy(),
                          "country": "CN", "device": "unknown"})
    by_item = rows.groupby("item_id")
    categories = (rows.groupby(["item_id", "category_id"]).size().rename("n").reset_index()
                  .sort_values(["item_id", "n", "category_id"], ascending=[True, False, True])
                  .drop_duplicates("item_id").set_index("item_id")["category_id"])
    first_item = by_item["ts"].min()
    items = pd.DataFrame({"item_id": first_item.index.to_numpy(), "seller_id": 0,
                          "category_id": categories.reindex(first_item.index).to_numpy(),
                          "price": config.imputed_price, "list_price": np.nan, "margin_rate": np.nan,
                          "created_ts": first_item.to_numpy(), "in_stock": True, "stock_qty": pd.NA})
    sellers = pd.DataFrame({"seller_id": [0], "created_ts": [pd.Timestamp(config.period_start).tz_convert("UTC")],
                            "rating": [np.nan]})
    views = rows[rows["behavior"] == PAGE_VIEW].sort_values(["ts", "line"])
    request = views.groupby(["user_id", "ts"])["line"].transform("min")
    impressions = pd.DataFrame({
        "impression_id": views["line"].to_numpy(), "request_id": request.to_numpy(), "ts": views["ts"].to_numpy(),
        "user_id": views["user_id"].to_numpy(), "item_id": views["item_id"].to_numpy(),
        "position": pd.array([pd.NA] * len(views), dtype="Int32"), "policy": POLICY, "randomized": False,
        "propensity": np.nan, "device": None})
    acts = rows[rows["behavior"] != PAGE_VIEW].sort_values(["ts", "line"])
    linked = pd.merge_asof(acts[["ts", "line", "user_id", "item_id"]],
                           views[["ts", "line", "user_id", "item_id"]].rename(columns={"line": "pv_line"}),
                           on="ts", by=["user_id", "item_id"], direction="backward", allow_exact_matches=True)
    event_type = acts["behavior"].map(BEHAVIOUR_EVENTS).to_numpy()
    events = pd.DataFrame({
        "event_id": acts["line"].to_numpy(), "ts": acts["ts"].to_numpy(), "user_id": acts["user_id"].to_numpy(),
        "item_id": acts["item_id"].to_numpy(), "type": event_type,
        "impression_id": pd.array(linked["pv_line"].to_numpy(), dtype="Int64"), "quantity": 1,
        "price_paid": np.where(event_type == "purchase", config.imputed_price, np.nan)})
    return {"users": users, "sellers": sellers, "items": items, "impressions": impressions, "events": events}


def adapt_taobao(source: str | os.PathLike[str], out_dir: str | os.PathLike[str], *,
                 config: TaobaoConfig | None = None) -> TaobaoReport:
    """Map the Taobao CSV at ``source`` into the five contract tables under ``out_dir``.

    Writes ``<out_dir>/<table>/part-00000.parquet`` for each table, the quarantined source
    lines to ``<out_dir>/_quarantine/taobao.parquet`` (line, raw_line, reason), and
    ``<out_dir>/_source.json`` (the report, the imputations and the unlogged columns). The
    folder is written as ``<out_dir>.partial`` and moved into place at the end.

    Raises
    ------
    FileNotFoundError
        If ``source`` does not exist.
    """
    config = config or TaobaoConfig()
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"source {path} not found")
    rows, quarantine, lines = _parse(path, config)
    tables = _contract_tables(rows, config)
    results = validate_logs(tables)
    for name, res in results.items():  # the mapping should always satisfy the contract; keep any exception
        if len(res.quarantined):
            q = res.quarantined
            ids = q["impression_id"] if name == "impressions" else q["event_id"] if name == "events" else None
            extra = pd.DataFrame({"line": ids.astype("int64") if ids is not None else -1,
                                  "raw_line": q.drop(columns=["quarantine_reason"]).astype(str).agg(",".join, axis=1),
                                  "reason": f"{name}: " + q["quarantine_reason"]})
            quarantine = pd.concat([quarantine, extra], ignore_index=True)
    out = Path(out_dir)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    counts: dict[str, int] = {}
    for name in TABLE_ORDER:
        (tmp / name).mkdir(parents=True)
        table = results[name].valid_arrow()
        pq.write_table(table, tmp / name / "part-00000.parquet")
        counts[name] = table.num_rows
    (tmp / "_quarantine").mkdir()
    quarantine = quarantine.sort_values("line", kind="stable").reset_index(drop=True)
    pq.write_table(pa.Table.from_pandas(quarantine, preserve_index=False), tmp / "_quarantine" / "taobao.parquet")
    reasons = Counter(quarantine["reason"])
    report = TaobaoReport(source=str(path), out_dir=str(out), lines=lines, behaviours=dict(Counter(rows["behavior"])),
                          quarantined=len(quarantine), reasons=dict(reasons.most_common()), tables=counts)
    meta = {"source": "taobao", "report": asdict(report), "config": asdict(config),
            "unlogged_columns": list(UNLOGGED_COLUMNS)}
    (tmp / "_source.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    logger.info("taobao: %d lines -> %s; %d quarantined (%s)", report.lines, counts, report.quarantined,
                dict(reasons.most_common(3)))
    return report
