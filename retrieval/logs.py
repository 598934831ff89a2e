"""Read the event-log contract tables into the compact columns retrieval works with.

Timestamps become int64 microseconds since the epoch (UTC), event types become codes into
``features.contract.EVENT_TYPES``, a missing ``impression_id`` becomes -1 and a missing
device the empty string. Only the columns retrieval uses are read.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from features.contract import EVENT_TYPES

__all__ = ["EventLog", "read_event_log"]

_COLUMNS: dict[str, tuple[str, ...]] = {
    "users": ("user_id", "signup_ts", "country", "device"),
    "sellers": ("seller_id", "created_ts"),
    "items": ("item_id", "seller_id", "category_id", "price", "created_ts", "in_stock"),
    "impressions": ("impression_id", "request_id", "ts", "user_id", "item_id", "device"),
    "events": ("ts", "user_id", "item_id", "type", "impression_id"),
}
_OPTIONAL = {("impressions", "device")}
_TIMESTAMPS = {"signup_ts": "signup_us", "created_ts": "created_us", "ts": "ts_us"}


@dataclass(frozen=True)
class EventLog:
    """The five contract tables, reduced to what retrieval reads.

    Attributes
    ----------
    users : DataFrame
        user_id, signup_us, country, device
    sellers : DataFrame
        seller_id, created_us
    items : DataFrame
        item_id, seller_id, category_id, price, created_us, in_stock
    impressions : DataFrame
        impression_id, request_id, ts_us, user_id, item_id, device ("" where unknown)
    events : DataFrame
        ts_us, user_id, item_id, type (int8 code into ``EVENT_TYPES``), impression_id (-1 where none);
        sorted by time.
    """

    users: pd.DataFrame
    sellers: pd.DataFrame
    items: pd.DataFrame
    impressions: pd.DataFrame
    events: pd.DataFrame

    @classmethod
    def from_tables(cls, tables: Mapping[str, pa.Table | pd.DataFrame]) -> EventLog:
        """Build from in-memory contract tables (Arrow tables or DataFrames), keyed by table name.

        Raises
        ------
        ValueError
            A table or a required column is missing.
        TypeError
            A table is neither a ``pyarrow.Table`` nor a ``pandas.DataFrame``.
        """
        frames = {}
        for name in _COLUMNS:
            if name not in tables:
                raise ValueError(f"tables must hold the contract table {name!r}, got {sorted(tables)}")
            table = tables[name]
            if isinstance(table, pd.DataFrame):
                table = pa.Table.from_pandas(table, preserve_index=False)
            elif not isinstance(table, pa.Table):
                raise TypeError(f"tables[{name!r}] must be a pyarrow.Table or pandas.DataFrame, "
                                f"got {type(table).__name__}")
            frames[name] = _compact(name, table)
        return cls(**frames)

    @property
    def time_range_us(self) -> tuple[int, int]:
        """First and last timestamp over impressions and events."""
        ts = np.concatenate([self.impressions["ts_us"].to_numpy(), self.events["ts_us"].to_numpy()])
        if len(ts) == 0:
            raise ValueError("the event log has no impressions and no events")
        return int(ts.min()), int(ts.max())


def read_event_log(log_dir: str | os.PathLike[str]) -> EventLog:
    """Read the contract tables written as Parquet folders under ``log_dir`` (one folder per table).

    Raises
    ------
    FileNotFoundError
        ``log_dir`` or one of its table folders does not exist.
    ValueError
        A required column is missing.
    """
    root = Path(log_dir)
    tables = {}
    for name, columns in _COLUMNS.items():
        path = root / name
        if not path.exists():
            raise FileNotFoundError(f"log_dir {root} has no {name}/ table folder")
        present = set(pq.ParquetDataset(path).schema.names)
        tables[name] = pq.read_table(path, columns=[c for c in columns if c in present])
    return EventLog.from_tables(tables)


def _compact(name: str, table: pa.Table) -> pd.DataFrame:
    out: dict[str, np.ndarray] = {}
    for column in _COLUMNS[name]:
        if column not in table.column_names:
            if (name, column) in _OPTIONAL:
                out[column] = np.full(table.num_rows, "", dtype=object)
                continue
            raise ValueError(f"table {name} must have column {column!r}, got {table.column_names}")
        col = table[column]
        if column in _TIMESTAMPS:
            values = col.cast(pa.timestamp("us", tz="UTC")).cast(pa.int64())
            if values.null_count:
                raise ValueError(f"table {name}: column {column!r} has {values.null_count} null timestamps")
            out[_TIMESTAMPS[column]] = values.to_numpy()
        elif column == "type":
            codes = pc.index_in(col.cast(pa.string()), value_set=pa.array(EVENT_TYPES))
            if codes.null_count:
                raise ValueError(f"table events: column 'type' must hold {list(EVENT_TYPES)}")
            out[column] = codes.to_numpy().astype(np.int8)
        elif column == "impression_id":
            out[column] = col.cast(pa.int64()).fill_null(-1).to_numpy()
        elif column in ("device", "country"):
            out[column] = col.cast(pa.string()).fill_null("").to_numpy(zero_copy_only=False).astype(object)
        elif column == "in_stock":
            out[column] = col.cast(pa.bool_()).fill_null(False).to_numpy(zero_copy_only=False)
        elif column == "price":
            out[column] = col.cast(pa.float64()).to_numpy(zero_copy_only=False)
        else:
            values = col.cast(pa.int64())
            if values.null_count:
                raise ValueError(f"table {name}: column {column!r} has {values.null_count} null ids")
            out[column] = values.to_numpy()
    frame = pd.DataFrame(out)
    if name == "events":
        frame = frame.sort_values("ts_us", kind="stable").reset_index(drop=True)
    return frame
