"""The Spark validator quarantines exactly the rows, with exactly the reasons, of the pandas validator."""

from __future__ import annotations

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from features.config import ValidationConfig
from features.contract import TABLES
from features.quarantine import flag_logs
from features.validation import REASON_COLUMN, validate_logs

T0 = pd.Timestamp("2026-01-05 12:00", tz="UTC")
DAY = pd.Timedelta(days=1)


def bad_logs() -> dict[str, pd.DataFrame]:
    """Small tables with one planted problem per id (and cascades: rows pointing at quarantined rows)."""
    sellers = pd.DataFrame({"seller_id": [1, 2, 3], "created_ts": [T0 - 300 * DAY] * 3,
                            "rating": ["4.5", None, "n/a"]})  # stored as text: seller 3 is not a number
    users = pd.DataFrame({"user_id": [10, 11, 12, 13, 10], "signup_ts": [T0 - 30 * DAY] * 3
                          + [pd.Timestamp("1990-01-01", tz="UTC"), T0 - 30 * DAY],
                          "country": ["DE", "FR", None, "DE", "DE"], "device": ["mobile"] * 5})
    items = pd.DataFrame({
        "item_id": [100, 101, 102, 103, 104, 105, 106],
        "seller_id": [1, 2, 1, 1, 99, 3, 1], "category_id": [3, 4, 3, 3, 3, 3, 3],
        "price": [10.0, 25.5, -1.0, 10.0, 10.0, 10.0, 10.0],
        "list_price": [12.0, None, None, 8.0, None, None, None],
        "margin_rate": [0.2, None, 0.2, 0.2, 0.2, 0.2, 1.5],
        "created_ts": [T0 - 10 * DAY] * 7, "in_stock": [True] * 7, "stock_qty": [5, 0, 1, 1, 1, 1, 1]})
    imp_ids = [1000, 1001, 1002, 1003, 1004, 1005, 1000, 1007]
    impressions = pd.DataFrame({
        "impression_id": imp_ids, "request_id": [7] * 8, "ts": [T0] * 8,
        "user_id": [10, 10, 12, 10, 10, 10, 10, 10], "item_id": [100, 101, 100, 102, 100, 100, 100, 101],
        "position": pd.array([0, 1, 2, 3, -1, 5, 0, 7], dtype="Int32"),
        "policy": ["random"] * 7 + [None], "randomized": [True] * 8,
        "propensity": [0.5, 0.5, 0.5, 0.5, 0.5, 0.0, 0.5, 0.5], "device": ["mobile"] * 8})
    later = T0 + pd.Timedelta(seconds=5)
    events = pd.DataFrame({
        "event_id": [1, 2, 3, 4, 5, 6, 7, 1],
        "ts": [later, later, later, T0 - pd.Timedelta(seconds=1), later, later, later, later],
        "user_id": [10, 10, 10, 10, 11, 10, 10, 10], "item_id": [100, 100, 100, 101, 101, 100, 100, 100],
        "type": ["click", "purchase", "view", "click", "click", "click", "click", "click"],
        "impression_id": pd.array([1000, 1000, 1000, 1001, 1001, 9999, 1000, 1000], dtype="Int64"),
        "quantity": [1, 1, 1, 1, 1, 1, 0, 1], "price_paid": [None, None, None, None, None, None, None, None]})
    events["price_paid"] = events["price_paid"].astype("float64")
    return {"sellers": sellers, "users": users, "items": items, "impressions": impressions, "events": events}


NESTED = "day=1/part +1.parquet"  # the last three events, in a subfolder, under a name Spark's URIs encode


def _write(tables: dict[str, pd.DataFrame], root) -> dict[str, pa.Table]:
    arrow = {}
    for name, frame in tables.items():
        (root / name).mkdir(parents=True)
        arrow[name] = pa.Table.from_pandas(frame, preserve_index=False)
        split = len(frame) - 3 if name == "events" else len(frame)
        pq.write_table(arrow[name].slice(0, split), root / name / "part-0.parquet", coerce_timestamps="us")
        if split < len(frame):
            (root / name / NESTED).parent.mkdir()
            pq.write_table(arrow[name].slice(split), root / name / NESTED, coerce_timestamps="us")
    return arrow


@pytest.fixture(scope="module")
def flagged(spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("badlogs")
    arrow = _write(bad_logs(), root)
    expected = validate_logs(arrow, config=ValidationConfig())
    got = flag_logs(spark, str(root), config=ValidationConfig(), work=str(root / "_work"))
    return expected, got


def _reasons(frame: pd.DataFrame, table: str) -> list[tuple[int, str]]:
    pk = TABLES[table].primary_key
    return sorted((int(k), str(r)) for k, r in zip(frame[pk], frame[REASON_COLUMN], strict=True))


@pytest.mark.parametrize("table", list(TABLES))
def test_same_rows_same_reasons_as_pandas(flagged, table):
    expected, got = flagged
    spark_rows = got[table].quarantined.toPandas()
    assert _reasons(spark_rows, table) == _reasons(expected[table].quarantined, table)
    assert got[table].valid.count() == len(expected[table].valid)


def test_every_input_row_is_accounted_for(flagged):
    expected, got = flagged
    for table, res in expected.items():
        assert got[table].valid.count() + got[table].quarantined.count() == res.n_input


def test_reasons_cover_every_kind_planted(flagged):
    _, got = flagged
    text = " | ".join(r for t in got.values() for r in t.quarantined.toPandas()[REASON_COLUMN])
    for reason in ("rating: wrong type, expected float64", "country: missing required field",
                   "signup_ts: timestamp out of range", "price: must be > 0", "list_price: below price",
                   "seller_id: unknown seller id", "margin_rate: must be <= 1", "user_id: unknown user id",
                   "item_id: unknown item id", "position: must be >= 0", "propensity: must be > 0",
                   "policy: missing required field", "impression_id: duplicate primary key",
                   "type: must be one of", "price_paid: missing for a purchase", "ts: event before its impression",
                   "user_id: differs from its impression's", "impression_id: unknown impression id",
                   "quantity: must be >= 1", "event_id: duplicate primary key", "user_id: duplicate primary key"):
        assert reason in text, reason


def test_nanosecond_timestamps_are_read_as_microseconds_and_a_missing_folder_is_named(spark, tmp_path):
    frame = bad_logs()["sellers"]
    (tmp_path / "sellers").mkdir()
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), tmp_path / "sellers" / "p.parquet")
    got = flag_logs(spark, str(tmp_path), config=ValidationConfig(), work=str(tmp_path / "_work"),
                    tables=("sellers",))["sellers"]
    assert [(p.column, p.found) for p in got.schema_problems] == [("created_ts", "timestamp[ns, tz=UTC]"),
                                                                   ("rating", "string")]
    assert got.valid.count() == 2 and got.quarantined.count() == 1  # seller 3's rating "n/a"
    with pytest.raises(FileNotFoundError, match="table users: no folder at"):
        flag_logs(spark, str(tmp_path), config=ValidationConfig(), work=str(tmp_path / "_work"), tables=("users",))


def test_quarantined_rows_name_their_file(flagged):
    _, got = flagged
    rows = got["sellers"].quarantined.toPandas()
    assert list(rows["source_file"]) == ["part-0.parquet"]
    assert list(rows["raw_rating"]) == ["n/a"]  # the value as it came in
    events = got["events"].quarantined.toPandas().set_index("event_id")
    assert events.loc[7, "source_file"] == NESTED  # its path below the table's folder, decoded
    assert set(events["source_file"]) == {"part-0.parquet", NESTED}
