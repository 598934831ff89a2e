"""Adapter: any interaction log (CSV or Parquet, one row per user-item interaction) into the contract.

A log with a user column, an item column and either a timestamp or an order column becomes
the five contract tables (:mod:`features.contract`); everything else is optional and, when
absent, filled in a documented way (:func:`imputations` lists every fill and is written
beside the tables, ``_source.json``):

- **Events and impressions**: the event column's raw values are mapped (``event_map``) to
  ``view`` (an impression: the user saw the item page, as Taobao's ``pv``), ``click``,
  ``add_to_cart`` or ``purchase``; without an event column every row is ``default_event``.
  Views of one user at the same instant form one request; ``position``, ``propensity`` and
  ``device`` are null, ``randomized`` false, ``policy`` the configured name. Every other
  event is linked to the user's latest view of the same item at or before it, else unlinked.
- **Time**: a ``timestamp`` column in seconds, milliseconds or microseconds since the epoch
  (``timestamp_unit``), or ISO-8601 text (naive times are UTC). A log with only an order
  (``order``: any sortable number, global or per user) gets *synthetic* timestamps:
  ``order_origin`` plus the dense rank of the order value in microseconds, so the log keeps
  its order and spans well under an hour; hour-of-day and age features carry no information
  then, and ``_source.json`` says ``"time": "order"`` so evaluations pick leave-last-out.
- **Prices**: the row's price (unit price; the item's price is its latest non-null one) or
  the placeholder ``imputed_price`` for every item when the log has none; GMV then counts units.
- **Quantity**: the row's quantity, else 1. **Category, seller**: the item's most frequent
  value, else one placeholder category (0) and one placeholder seller (0, no rating).
- **Users and items**: ``signup_ts`` and ``created_ts`` are the first appearance in the log,
  country and device the configured placeholders; items are in stock with unknown quantity.

Ids must be non-negative integers unless ``map_ids`` is set: then every distinct value of the
user, item, category and seller columns gets a dense integer id, in order of first
appearance, and the mapping is written to ``_id_maps/<column>.parquet`` (source, id).

Rows that do not fit are quarantined with their record number (1-based, the header counts as
record 1), raw text and reason, never dropped: rows with the wrong number of fields, ids that
are not non-negative integers, unparsable or out-of-period times, event values outside the
mapping, prices <= 0, quantities < 1. They go to ``_quarantine/<name>.parquet``.
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
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from features.config import check, parse_utc
from features.contract import EVENT_TYPES, TABLE_ORDER
from features.validation import validate_logs

__all__ = ["INTERACTION_TYPES", "InteractionsConfig", "InteractionsReport", "adapt_interactions", "imputations",
           "parse_event_map"]

logger = logging.getLogger(__name__)

VIEW = "view"
#: What a raw event value may map to: a page view (an impression) or one of the contract's event types.
INTERACTION_TYPES: tuple[str, ...] = (VIEW, *EVENT_TYPES)
_TIME_UNITS = {"s": 1_000_000, "ms": 1_000, "us": 1}
# Contract columns an interaction log never has (the ETL's null-rate check skips features built on them).
UNLOGGED_COLUMNS: tuple[str, ...] = ("items.list_price", "items.margin_rate", "items.stock_qty", "sellers.rating",
                                     "impressions.position", "impressions.propensity", "impressions.device")


def parse_event_map(text: str) -> tuple[tuple[str, str], ...]:
    """``"pv=view,fav=click,cart=add_to_cart,buy=purchase"`` as ``(("pv", "view"), ...)``.

    Raises
    ------
    ValueError
        An entry is not ``RAW=TYPE``.
    """
    pairs = []
    for entry in (e.strip() for e in text.split(",")):
        raw, sep, target = entry.partition("=")
        if not sep or not raw.strip() or not target.strip():
            raise ValueError(f"event_map: each entry must be RAW=TYPE, got {entry!r} in {text!r}")
        pairs.append((raw.strip(), target.strip()))
    return tuple(pairs)


@dataclass(frozen=True)
class InteractionsConfig:
    """Which source column holds what, and how missing contract fields are filled.

    Parameters
    ----------
    user, item : str
        Id columns (required).
    timestamp : str or None
        Time column; exactly one of ``timestamp`` and ``order`` is given.
    timestamp_unit : {"s", "ms", "us", "iso"}
        Numbers since the epoch in that unit, or ISO-8601 text (naive = UTC).
    order : str or None
        Sortable numeric column giving the order of interactions when there are no timestamps.
    order_origin : str
        ISO-8601 time of the first synthetic timestamp (order logs only).
    event : str or None
        Event-type column; None: every row is ``default_event``.
    event_map : tuple of (raw, type) pairs
        Raw event value -> one of :data:`INTERACTION_TYPES`; raw values not listed are quarantined.
        Empty: the raw values must already be interaction types.
    default_event : str
        The type of every row when there is no event column.
    price, quantity, category, seller : str or None
        Optional columns.
    imputed_price : float
        Price of an item whose price is unknown (> 0).
    map_ids : bool
        Map any id values (strings too) to dense integers and write the mapping.
    columns : tuple of str
        Names of a headerless CSV's columns (empty: the first line is the header).
    delimiter : str
        CSV field separator.
    period_start, period_end : str
        Optional ISO-8601 collection period ``[start, end)``; rows outside are quarantined.
    country, device : str
        Placeholders for every user.
    policy : str
        ``impressions.policy`` of the views.
    name : str
        Source name: the quarantine file's name and ``_source.json``'s ``source``.
    """

    user: str = "user_id"
    item: str = "item_id"
    timestamp: str | None = "timestamp"
    timestamp_unit: str = "s"
    order: str | None = None
    order_origin: str = "2020-01-01T00:00:00+00:00"
    event: str | None = None
    event_map: tuple[tuple[str, str], ...] = ()
    default_event: str = "click"
    price: str | None = None
    quantity: str | None = None
    category: str | None = None
    seller: str | None = None
    imputed_price: float = 1.0
    map_ids: bool = False
    columns: tuple[str, ...] = ()
    delimiter: str = ","
    period_start: str = ""
    period_end: str = ""
    country: str = "unknown"
    device: str = "unknown"
    policy: str = "source-view"
    name: str = "interactions"

    def __post_init__(self) -> None:
        check(bool(self.user) and bool(self.item), "user/item", "column names", (self.user, self.item))
        check((self.timestamp is None) != (self.order is None), "timestamp/order",
              "exactly one of a timestamp column and an order column", (self.timestamp, self.order))
        check(self.timestamp_unit in (*_TIME_UNITS, "iso"), "timestamp_unit", f"one of {[*_TIME_UNITS, 'iso']}",
              self.timestamp_unit)
        parse_utc(self.order_origin, "order_origin")
        targets = [t for _, t in self.event_map]
        check(all(t in INTERACTION_TYPES for t in targets), "event_map", f"targets in {list(INTERACTION_TYPES)}",
              self.event_map)
        raws = [r for r, _ in self.event_map]
        check(len(set(raws)) == len(raws), "event_map", "each raw value once", self.event_map)
        check(self.event is not None or not self.event_map, "event_map", "an event column to map", self.event)
        check(self.default_event in EVENT_TYPES, "default_event", f"one of {list(EVENT_TYPES)}", self.default_event)
        check(self.imputed_price > 0, "imputed_price", "> 0", self.imputed_price)
        check(len(self.delimiter) == 1, "delimiter", "one character", self.delimiter)
        if self.period_start or self.period_end:
            start, end = parse_utc(self.period_start, "period_start"), parse_utc(self.period_end, "period_end")
            check(start < end, "period_end", f"after period_start ({self.period_start})", self.period_end)
        named = [c for c in self.source_columns if c]
        check(len(set(named)) == len(named), "columns", "each source column used once", named)
        if self.columns:
            missing = sorted(set(named) - set(self.columns))
            check(not missing, "columns", f"to name every mapped column (missing {missing})", self.columns)

    @property
    def source_columns(self) -> tuple[str, ...]:
        """The source columns this configuration reads (None entries left out)."""
        names = (self.user, self.item, self.timestamp, self.order, self.event, self.price, self.quantity,
                 self.category, self.seller)
        return tuple(n for n in names if n)

    @property
    def types(self) -> dict[str, str]:
        """Raw event value -> interaction type (the identity on :data:`INTERACTION_TYPES` when unmapped)."""
        return dict(self.event_map) if self.event_map else {t: t for t in INTERACTION_TYPES}


@dataclass(frozen=True)
class InteractionsReport:
    """Counts of one adaptation: records read, mapped per raw event value, quarantined per reason, rows per table."""

    source: str
    out_dir: str
    lines: int
    behaviours: dict[str, int]
    quarantined: int
    reasons: dict[str, int]
    tables: dict[str, int]
    imputations: dict[str, str] = field(default_factory=dict)


def imputations(config: InteractionsConfig) -> dict[str, str]:
    """How each contract field is filled under ``config`` (written to ``_source.json``)."""
    kinds = ", ".join(f"{r} -> {t}" for r, t in config.event_map) if config.event_map else \
        (f"the event column's values ({', '.join(INTERACTION_TYPES)})" if config.event else
         f"every row is a {config.default_event}")
    time = (f"{config.timestamp} ({config.timestamp_unit})" if config.timestamp else
            f"synthetic: {config.order_origin} + dense rank of {config.order} in microseconds (order only)")
    out = {
        "impressions": f"each view row; same user and instant = one request; position, propensity, device null; "
                       f"policy {config.policy!r}",
        "events": f"{kinds}; linked to the latest view of the same user and item at or before it",
        "ts": time,
        "events.quantity": f"from {config.quantity}, 1 where null" if config.quantity else "1",
        "items.price": (f"the item's latest {config.price}; {config.imputed_price} where never known"
                        if config.price else f"unknown: placeholder {config.imputed_price} for every item "
                                             "(GMV counts units)"),
        "events.price_paid": (f"purchases: {config.price}, else the item's price" if config.price else
                              f"purchases: the placeholder {config.imputed_price}"),
        "items.category_id": (f"the item's most frequent {config.category}" if config.category else
                              "unknown: one placeholder category (0)"),
        "items.seller_id": (f"the item's most frequent {config.seller}" if config.seller else
                            "unknown: one placeholder seller (0) for every item"),
        "items.list_price": "unknown: null",
        "items.margin_rate": "unknown: null",
        "items.created_ts": "first appearance in the log",
        "items.in_stock": "true; stock_qty null",
        "users.signup_ts": "first appearance in the log",
        "users.country": config.country,
        "users.device": config.device,
        "sellers.created_ts": "first appearance of the seller's items",
        "sellers.rating": "unknown: null",
    }
    if config.map_ids:
        out["ids"] = "source values mapped to dense integers in order of first appearance (_id_maps/)"
    return out


# ------------------------------------------------------------------------------------------- reading
def _read(path: Path, config: InteractionsConfig) -> tuple[pd.DataFrame, pd.DataFrame, int]:
    """Source rows as strings with their record numbers, the malformed records, and the record count."""
    wanted = list(dict.fromkeys(config.source_columns))
    if path.suffix.lower() in (".parquet", ".pq") or path.is_dir():
        table = pq.read_table(path)
        missing = sorted(set(wanted) - set(table.column_names))
        if missing:
            raise ValueError(f"source {path}: columns {missing} not found (has {table.column_names})")
        frame = table.select(wanted).to_pandas()
        frame = frame.astype({c: "string" for c in wanted})
        frame.insert(0, "line", np.arange(1, len(frame) + 1, dtype=np.int64))
        return frame, pd.DataFrame({"line": pd.Series([], dtype="int64"), "raw_line": [], "reason": []}), len(frame)
    bad: list[tuple[int, str, str]] = []

    def invalid(row) -> str:  # pyarrow hands every malformed record here; quarantine it instead of failing
        bad.append((int(row.number) if row.number is not None else -1, str(row.text),
                    f"row: expected {row.expected_columns} fields, got {row.actual_columns}"))
        return "skip"

    names = list(config.columns) or None
    header = 0 if names else 1
    read = pacsv.ReadOptions(use_threads=False, column_names=names, autogenerate_column_names=False)
    parse = pacsv.ParseOptions(delimiter=config.delimiter, invalid_row_handler=invalid, newlines_in_values=True)
    if names:
        all_names = names
    else:
        with path.open(newline="") as fh:
            all_names = next(csv.reader(fh, delimiter=config.delimiter), [])
    missing = sorted(set(wanted) - set(all_names))
    if missing:
        raise ValueError(f"source {path}: columns {missing} not found (has {all_names})")
    convert = pacsv.ConvertOptions(column_types={c: pa.string() for c in all_names}, include_columns=all_names,
                                   strings_can_be_null=True)
    table = pacsv.read_csv(path, read_options=read, parse_options=parse, convert_options=convert)
    # Record numbers of the rows pyarrow kept: every number not taken by a malformed record.
    total = table.num_rows + len(bad) + header
    taken = np.zeros(total + 1, dtype=bool)
    taken[:header + 1] = True  # record 0 does not exist; record 1 is the header when there is one
    for number, _, _ in bad:
        if 0 <= number <= total:
            taken[number] = True
    lines = np.flatnonzero(~taken)[:table.num_rows]
    frame = table.to_pandas().astype("string")
    raw = frame[all_names].fillna("").agg(config.delimiter.join, axis=1) if len(frame) else pd.Series([], dtype=str)
    frame = frame[wanted].assign(raw_line=raw.to_numpy())
    frame.insert(0, "line", lines.astype(np.int64))
    quarantine = pd.DataFrame(bad, columns=["line", "raw_line", "reason"]).astype({"line": "int64"})
    return frame, quarantine, total


class _Problems:
    """Reasons per row, joined with "; " (the validator's convention)."""

    def __init__(self, n: int) -> None:
        self.reasons: list[list[str]] = [[] for _ in range(n)]

    def add(self, mask: np.ndarray, reason: str) -> None:
        for i in np.flatnonzero(mask):
            self.reasons[i].append(reason)

    def bad(self) -> np.ndarray:
        return np.array([bool(r) for r in self.reasons], dtype=bool)

    def text(self, mask: np.ndarray) -> list[str]:
        return ["; ".join(self.reasons[i]) for i in np.flatnonzero(mask)]


def _ids(values: pd.Series, name: str, config: InteractionsConfig, problems: _Problems,
         maps: dict[str, pd.DataFrame], *, required: bool = True) -> np.ndarray:
    """Integer ids of a source column; -1 where missing (quarantined when ``required``)."""
    present = values.notna().to_numpy()
    if required:
        problems.add(~present, f"{name}: missing")
    if config.map_ids:
        codes, uniques = pd.factorize(values, sort=False)  # missing values get -1
        maps[name] = pd.DataFrame({"source": pd.array(uniques, dtype="string"), "id": np.arange(len(uniques))})
        return codes.astype(np.int64)
    parsed = pd.to_numeric(values, errors="coerce")
    integer = parsed.notna().to_numpy() & (parsed.fillna(0) % 1 == 0).to_numpy()
    problems.add(present & ~integer, f"{name}: not an integer")
    number = np.where(integer, parsed.fillna(0), -1).astype(np.int64)
    problems.add(integer & (number < 0), f"{name}: must be >= 0")
    return np.where(present, number, -1)


def _times(frame: pd.DataFrame, config: InteractionsConfig, problems: _Problems) -> np.ndarray:
    """Microseconds since the epoch of every row (0 where the row is quarantined)."""
    if config.order is not None:
        order = pd.to_numeric(frame[config.order], errors="coerce")
        bad = order.isna().to_numpy()
        problems.add(bad, f"{config.order}: not a number")
        rank = order.rank(method="dense").fillna(1).to_numpy(dtype=np.int64) - 1
        origin = int(parse_utc(config.order_origin, "order_origin").timestamp() * 1_000_000)
        return origin + rank
    name = config.timestamp
    assert name is not None
    raw = frame[name]
    if config.timestamp_unit == "iso":
        ts = pd.to_datetime(raw, utc=True, errors="coerce", format="ISO8601")
        bad = ts.isna().to_numpy()
        problems.add(bad, f"{name}: not an ISO-8601 time")
        us = np.where(bad, 0, ts.dt.tz_localize(None).to_numpy(dtype="datetime64[us]").astype(np.int64))
    else:
        number = pd.to_numeric(raw, errors="coerce")
        bad = number.isna().to_numpy()
        problems.add(bad, f"{name}: not a number")
        us = np.round(number.fillna(0).to_numpy(dtype=np.float64) * _TIME_UNITS[config.timestamp_unit])
        us = us.astype(np.int64)
    if config.period_start:
        lo = int(parse_utc(config.period_start, "period_start").timestamp() * 1_000_000)
        hi = int(parse_utc(config.period_end, "period_end").timestamp() * 1_000_000)
        problems.add(~bad & ((us < lo) | (us >= hi)),
                     f"{name}: outside the period [{config.period_start}, {config.period_end})")
    return np.asarray(us, dtype=np.int64)


def _parse(frame: pd.DataFrame, config: InteractionsConfig) -> tuple[pd.DataFrame, pd.DataFrame,
                                                                      dict[str, pd.DataFrame]]:
    """Typed rows (line, user_id, item_id, ts_us, kind, raw_event, price, quantity, category_id, seller_id)
    and the rows that do not fit, with reasons."""
    n = len(frame)
    problems = _Problems(n)
    maps: dict[str, pd.DataFrame] = {}
    out = pd.DataFrame({"line": frame["line"].to_numpy()})
    out["user_id"] = _ids(frame[config.user], config.user, config, problems, maps)
    out["item_id"] = _ids(frame[config.item], config.item, config, problems, maps)
    for column, target in ((config.category, "category_id"), (config.seller, "seller_id")):
        # a missing category or seller is filled from the item's other rows, not quarantined
        out[target] = _ids(frame[column], column, config, problems, maps, required=False) if column else -1
    out["ts_us"] = _times(frame, config, problems)
    if config.event:
        raw_event = frame[config.event].fillna("").to_numpy(dtype=object).astype(str)
        types = config.types
        kind = np.array([types.get(v, "") for v in raw_event], dtype=object)
        problems.add(kind == "", f"{config.event}: must be one of {list(types)}")
    else:
        raw_event = np.full(n, config.default_event, dtype=object)
        kind = raw_event.copy()
    out["raw_event"], out["kind"] = raw_event, kind
    if config.price:
        price = pd.to_numeric(frame[config.price], errors="coerce")
        given = frame[config.price].notna().to_numpy()
        problems.add(given & price.isna().to_numpy(), f"{config.price}: not a number")
        problems.add(given & (price.fillna(1.0) <= 0).to_numpy(), f"{config.price}: must be > 0")
        out["price"] = price.to_numpy(dtype=np.float64)
    else:
        out["price"] = np.nan
    if config.quantity:
        quantity = pd.to_numeric(frame[config.quantity], errors="coerce")
        given = frame[config.quantity].notna().to_numpy()
        problems.add(given & (quantity.isna() | (quantity % 1 != 0)).to_numpy(), f"{config.quantity}: not an integer")
        problems.add(given & (quantity.fillna(1) < 1).to_numpy(), f"{config.quantity}: must be >= 1")
        out["quantity"] = quantity.fillna(1).clip(lower=1).round().to_numpy(dtype=np.int64)
    else:
        out["quantity"] = 1
    bad = problems.bad()
    raw = frame["raw_line"] if "raw_line" in frame else frame[list(config.source_columns)].fillna("").agg(
        config.delimiter.join, axis=1)
    quarantine = pd.DataFrame({"line": frame["line"].to_numpy()[bad], "raw_line": np.asarray(raw)[bad],
                               "reason": problems.text(bad)})
    return out[~bad].reset_index(drop=True), quarantine.astype({"line": "int64"}), maps


# ------------------------------------------------------------------------------------------- mapping
def _most_frequent(rows: pd.DataFrame, column: str) -> pd.Series:
    """Per item, its most frequent known value of ``column`` (ties to the smallest); 0 where never known."""
    known = rows[rows[column] >= 0]
    top = (known.groupby(["item_id", column]).size().rename("n").reset_index()
           .sort_values(["item_id", "n", column], ascending=[True, False, True])
           .drop_duplicates("item_id").set_index("item_id")[column])
    return top


def contract_tables(rows: pd.DataFrame, config: InteractionsConfig) -> dict[str, pd.DataFrame]:
    """The five contract tables of parsed rows (see :func:`_parse` for their columns)."""
    ts = pd.to_datetime(rows["ts_us"], unit="us", utc=True).astype("datetime64[us, UTC]")
    rows = rows.assign(ts=ts)
    first_user = rows.groupby("user_id")["ts"].min()
    users = pd.DataFrame({"user_id": first_user.index.to_numpy(), "signup_ts": first_user.to_numpy(),
                          "country": config.country, "device": config.device})
    first_item = rows.groupby("item_id")["ts"].min()
    item_ids = first_item.index
    category = _most_frequent(rows, "category_id").reindex(item_ids).fillna(0).to_numpy(dtype=np.int64)
    seller = _most_frequent(rows, "seller_id").reindex(item_ids).fillna(0).to_numpy(dtype=np.int64)
    priced = rows.dropna(subset=["price"]).sort_values(["ts_us", "line"])
    price = priced.groupby("item_id")["price"].last().reindex(item_ids).fillna(config.imputed_price)
    items = pd.DataFrame({"item_id": item_ids.to_numpy(), "seller_id": seller, "category_id": category,
                          "price": price.to_numpy(dtype=np.float64), "list_price": np.nan, "margin_rate": np.nan,
                          "created_ts": first_item.to_numpy(), "in_stock": True, "stock_qty": pd.NA})
    seller_first = pd.Series(first_item.to_numpy(), index=seller).groupby(level=0).min()
    sellers = pd.DataFrame({"seller_id": seller_first.index.to_numpy(dtype=np.int64),
                            "created_ts": seller_first.to_numpy(), "rating": np.nan})
    views = rows[rows["kind"] == VIEW].sort_values(["ts_us", "line"])
    request = views.groupby(["user_id", "ts_us"])["line"].transform("min")
    impressions = pd.DataFrame({
        "impression_id": views["line"].to_numpy(), "request_id": request.to_numpy(), "ts": views["ts"].to_numpy(),
        "user_id": views["user_id"].to_numpy(), "item_id": views["item_id"].to_numpy(),
        "position": pd.array([pd.NA] * len(views), dtype="Int32"), "policy": config.policy, "randomized": False,
        "propensity": np.nan, "device": None})
    acts = rows[rows["kind"] != VIEW].sort_values(["ts_us", "line"])
    linked = pd.merge_asof(acts[["ts_us", "line", "user_id", "item_id"]],
                           views[["ts_us", "line", "user_id", "item_id"]].rename(columns={"line": "pv_line"}),
                           on="ts_us", by=["user_id", "item_id"], direction="backward", allow_exact_matches=True)
    event_type = acts["kind"].to_numpy(dtype=object)
    item_price = pd.Series(items["price"].to_numpy(), index=items["item_id"].to_numpy())
    paid = acts["price"].fillna(pd.Series(item_price.reindex(acts["item_id"]).to_numpy(), index=acts.index))
    events = pd.DataFrame({
        "event_id": acts["line"].to_numpy(), "ts": acts["ts"].to_numpy(), "user_id": acts["user_id"].to_numpy(),
        "item_id": acts["item_id"].to_numpy(), "type": event_type,
        "impression_id": pd.array(linked["pv_line"].to_numpy(), dtype="Int64"),
        "quantity": acts["quantity"].to_numpy(dtype=np.int64),
        "price_paid": np.where(event_type == "purchase", paid.to_numpy(dtype=np.float64), np.nan)})
    return {"users": users, "sellers": sellers, "items": items, "impressions": impressions, "events": events}


def adapt_interactions(source: str | os.PathLike[str], out_dir: str | os.PathLike[str],
                       config: InteractionsConfig) -> InteractionsReport:
    """Map the interaction log at ``source`` (CSV, or Parquet file or folder) into the contract under ``out_dir``.

    Writes ``<out_dir>/<table>/part-00000.parquet`` for each table, the quarantined records to
    ``<out_dir>/_quarantine/<config.name>.parquet`` (line, raw_line, reason), id mappings to
    ``<out_dir>/_id_maps/`` when ``config.map_ids``, and ``<out_dir>/_source.json`` (the report, the
    configuration, the fills and the unlogged columns). The folder is written as
    ``<out_dir>.partial`` and moved into place at the end.

    Raises
    ------
    FileNotFoundError
        If ``source`` does not exist.
    ValueError
        If a configured column is not in the source.
    """
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"source {path} not found")
    frame, quarantine, lines = _read(path, config)
    rows, rejected, maps = _parse(frame, config)
    quarantine = pd.concat([quarantine, rejected], ignore_index=True)
    tables = contract_tables(rows, config)
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
    pq.write_table(pa.Table.from_pandas(quarantine.astype({"raw_line": str, "reason": str}), preserve_index=False),
                   tmp / "_quarantine" / f"{config.name}.parquet")
    if maps:
        (tmp / "_id_maps").mkdir()
        for column, mapping in maps.items():
            pq.write_table(pa.Table.from_pandas(mapping, preserve_index=False), tmp / "_id_maps" / f"{column}.parquet")
    reasons = Counter(quarantine["reason"])
    report = InteractionsReport(source=str(path), out_dir=str(out), lines=lines,
                                behaviours=dict(Counter(rows["raw_event"])), quarantined=len(quarantine),
                                reasons=dict(reasons.most_common()), tables=counts, imputations=imputations(config))
    meta = {"source": config.name, "report": asdict(report), "config": asdict(config),
            "time": "order" if config.order else "timestamp", "unlogged_columns": list(UNLOGGED_COLUMNS)}
    (tmp / "_source.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    logger.info("%s: %d records -> %s; %d quarantined (%s)", config.name, report.lines, counts, report.quarantined,
                dict(reasons.most_common(3)))
    return report
