"""The corrupted-log table of issue 20, planted into a copy of a simulated log.

Every kind of mess a real feed brings, one file each, beside the good files:

- a string in an integer column (events ``user_id`` written as text; one value is not a number),
- numeric strings in ``quantity`` (text that reads as an integer is kept; ``2.5`` and ``""`` are not),
- a truncated Parquet file (impressions, cut to 3,000 bytes),
- a column missing from one file (events without ``type``; named to sort first in its folder),
- a year-2200 timestamp (time travel, in a file of the contract's schema).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from features.contract import arrow_schema

NEW_IDS = 9 * 10**15  # ids of the planted rows, far above the simulator's (and test_etl's own plants)


@dataclass
class Planted:
    """What was planted: rows per readable input file, and the bad rows with their expected reason."""

    rows: dict[str, int] = field(default_factory=dict)  # table -> rows of its readable files
    bad: dict[str, dict[int, str]] = field(default_factory=dict)  # table -> {primary key: reason prefix}
    kept: dict[str, set[int]] = field(default_factory=dict)  # table -> planted rows that must stay valid
    unreadable: dict[str, str] = field(default_factory=dict)  # table -> file name


def plant_messy_files(target: Path, *, rows: int = 12, at: pd.Timestamp | None = None) -> Planted:
    """Add one file per kind of mess (``rows`` rows each) to the logs in ``target``.

    The planted events copy clicks of the log. With ``at``, they happen one second apart from
    ``at`` on, outside the feed (no impression), so they change no label and nothing before ``at``.
    """
    planted = Planted()
    for name in ("sellers", "users", "items", "impressions", "events"):
        planted.rows[name] = pq.ParquetDataset(target / name).read().num_rows
        planted.bad[name], planted.kept[name] = {}, set()
    events = pq.ParquetDataset(target / "events").read().to_pandas()
    events = events[events["type"] == "click"].head(4 * rows).reset_index(drop=True)
    events = events.assign(impression_id=events["impression_id"].astype("Int64"))
    if at is not None:
        events = events.assign(ts=at + pd.to_timedelta(1 + events.index.to_numpy(), unit="s"),
                               impression_id=pd.array([None] * len(events), dtype="Int64"))

    def take(k: int) -> pd.DataFrame:
        part = events.iloc[k * rows:(k + 1) * rows].copy()
        part["event_id"] = NEW_IDS + 1000 * k + pd.RangeIndex(rows)
        return part.reset_index(drop=True)

    # 1. a string in an integer column: the whole user_id column is text, one value is not a number
    text_ids = take(0)
    text_ids["user_id"] = text_ids["user_id"].astype(str)
    text_ids.loc[0, "user_id"] = "user-7"
    _write(pa.Table.from_pandas(text_ids, preserve_index=False), target / "events" / "part-900-text-user.parquet")
    planted.bad["events"][int(text_ids["event_id"][0])] = "user_id: wrong type, expected int64"
    planted.kept["events"] |= set(text_ids["event_id"][1:].tolist())

    # 2. numeric strings in quantity: "1" and "2" read as integers, "2.5" and "" do not
    quantity = take(1)
    quantity["quantity"] = ["1", "2"] * (rows // 2 - 1) + ["2.5", ""]
    _write(pa.Table.from_pandas(quantity, preserve_index=False), target / "events" / "part-901-text-quantity.parquet")
    for key in quantity["event_id"][-2:].tolist():
        planted.bad["events"][int(key)] = "quantity: wrong type, expected int64"
    planted.kept["events"] |= set(quantity["event_id"][:-2].tolist())

    # 3. a column missing from one file, the first file of its folder
    no_type = take(2).drop(columns=["type"])
    _write(pa.Table.from_pandas(no_type, preserve_index=False), target / "events" / "part-0-no-type.parquet")
    for key in no_type["event_id"].tolist():
        planted.bad["events"][int(key)] = "type: missing required field (column absent)"

    # 4. a year-2200 timestamp in a file of the contract's schema
    future = take(3).iloc[:1].copy()
    future["ts"] = pd.Timestamp("2200-01-01", tz="UTC")
    _write(pa.Table.from_pandas(future, schema=arrow_schema("events"), preserve_index=False),
           target / "events" / "part-902-year-2200.parquet")
    planted.bad["events"][int(future["event_id"].iloc[0])] = "ts: timestamp out of range"

    # 5. a truncated file
    source = sorted((target / "impressions").glob("*.parquet"))[0]
    (target / "impressions" / "part-903-truncated.parquet").write_bytes(source.read_bytes()[:3000])
    planted.unreadable["impressions"] = "part-903-truncated.parquet"

    planted.rows["events"] += 3 * rows + 1
    return planted


def _write(table: pa.Table, path: Path) -> None:
    pq.write_table(table, path, coerce_timestamps="us")
