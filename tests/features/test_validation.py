"""The validator: every kind of bad row gets its reason, and nothing is lost."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow.dataset as ds
import pytest

from features.config import ValidationConfig
from features.contract import TABLE_ORDER, Column
from features.validation import (
    REASON_COLUMN,
    ROW_COLUMN,
    coerce_values,
    validate_logs,
    validate_table,
)

T0 = pd.Timestamp("2026-01-05 12:00", tz="UTC")


def good_logs() -> dict[str, pd.DataFrame]:
    return {
        "sellers": pd.DataFrame({"seller_id": [1, 2], "created_ts": [T0 - pd.Timedelta(days=300)] * 2,
                                 "rating": [4.5, None]}),
        "users": pd.DataFrame({"user_id": [10, 11], "signup_ts": [T0 - pd.Timedelta(days=30)] * 2,
                               "country": ["DE", "FR"], "device": ["mobile", "desktop"]}),
        "items": pd.DataFrame({"item_id": [100, 101], "seller_id": [1, 2], "category_id": [3, 4],
                               "price": [10.0, 25.5], "list_price": [12.0, None], "margin_rate": [0.2, None],
                               "created_ts": [T0 - pd.Timedelta(days=10)] * 2, "in_stock": [True, False],
                               "stock_qty": [5, 0]}),
        "impressions": pd.DataFrame({"impression_id": [1000, 1001], "request_id": [7, 7], "ts": [T0, T0],
                                     "user_id": [10, 10], "item_id": [100, 101], "position": [0, 1],
                                     "policy": ["random", "random"], "randomized": [True, True],
                                     "propensity": [0.5, 0.5], "device": ["mobile", "mobile"]}),
        "events": pd.DataFrame({"event_id": [1, 2], "ts": [T0 + pd.Timedelta(seconds=5)] * 2, "user_id": [10, 10],
                                "item_id": [100, 100], "type": ["click", "purchase"], "impression_id": [1000, 1000],
                                "quantity": [1, 2], "price_paid": [None, 10.0]}),
    }


def _with(table: str, column: str, value, row: int = 1) -> dict[str, pd.DataFrame]:
    logs = good_logs()
    frame = logs[table].astype({column: object})
    frame.at[row, column] = value
    logs[table] = frame
    return logs


def _drop(table: str, column: str) -> dict[str, pd.DataFrame]:
    logs = good_logs()
    logs[table] = logs[table].drop(columns=[column])
    return logs


def _dup(table: str) -> dict[str, pd.DataFrame]:
    logs = good_logs()
    logs[table] = pd.concat([logs[table], logs[table].iloc[[0]]], ignore_index=True)
    return logs


# (logs, table, expected reason) — one row per kind of bad input.
CASES = [
    (_with("items", "seller_id", 99), "items", "seller_id: unknown seller id"),
    (_with("impressions", "user_id", 12345), "impressions", "user_id: unknown user id"),
    (_with("events", "item_id", 555), "events", "item_id: unknown item id"),
    (_with("events", "impression_id", 4242), "events", "impression_id: unknown impression id"),
    (_with("items", "price", -3.0), "items", "price: must be > 0"),
    (_with("items", "price", 0.0), "items", "price: must be > 0"),
    (_with("events", "price_paid", -1.0), "events", "price_paid: must be > 0"),
    (_with("items", "margin_rate", 1.5), "items", "margin_rate: must be <= 1"),
    (_with("items", "margin_rate", -0.1), "items", "margin_rate: must be >= 0"),
    (_with("events", "ts", T0 - pd.Timedelta(seconds=1)), "events", "ts: event before its impression"),
    (_with("events", "user_id", 11), "events", "user_id: differs from its impression's"),
    (_dup("users"), "users", "user_id: duplicate primary key"),
    (_dup("events"), "events", "event_id: duplicate primary key"),
    (_with("impressions", "position", "top"), "impressions", "position: wrong type, expected int32"),
    (_with("impressions", "position", 1.5), "impressions", "position: wrong type, expected int32"),
    (_with("items", "price", "cheap"), "items", "price: wrong type, expected float64"),
    (_with("items", "in_stock", "maybe"), "items", "in_stock: wrong type, expected bool"),
    (_with("users", "country", 49), "users", "country: wrong type, expected string"),
    (_with("events", "ts", "yesterday"), "events", "ts: wrong type, expected timestamp"),
    (_with("users", "device", None), "users", "device: missing required field"),
    (_with("impressions", "ts", None), "impressions", "ts: missing required field"),
    (_drop("users", "country"), "users", "country: missing required field (column absent)"),
    (_with("events", "price_paid", None), "events", "price_paid: missing for a purchase"),
    (_with("events", "type", "wishlist"), "events", "type: must be one of ['click', 'add_to_cart', 'purchase']"),
    (_with("impressions", "propensity", 0.0), "impressions", "propensity: must be > 0"),
    (_with("impressions", "propensity", 1.2), "impressions", "propensity: must be <= 1"),
    (_with("items", "list_price", 5.0, row=0), "items", "list_price: below price"),
    (_with("sellers", "rating", 7.0, row=0), "sellers", "rating: must be <= 5"),
    (_with("impressions", "ts", pd.Timestamp("1990-01-01", tz="UTC")), "impressions", "ts: timestamp out of range"),
    (_with("users", "signup_ts", "2150-01-01T00:00:00Z"), "users", "signup_ts: timestamp out of range"),
]


def test_good_logs_pass():
    results = validate_logs(good_logs())
    assert all(len(r.quarantined) == 0 for r in results.values())


@pytest.mark.parametrize(("logs", "table", "reason"), CASES, ids=[c[2] for c in CASES])
def test_each_bad_row_is_quarantined_with_its_reason(logs, table, reason):
    results = validate_logs(logs)
    res = results[table]
    assert res.n_input == len(logs[table])  # nothing lost
    assert len(res.quarantined) >= 1
    assert any(reason in r for r in res.quarantined[REASON_COLUMN]), res.quarantined[REASON_COLUMN].tolist()
    # the quarantined row keeps what came in, and where it came from
    assert set(logs[table].columns) <= set(res.quarantined.columns)
    assert res.quarantined[ROW_COLUMN].between(0, len(logs[table]) - 1).all()


def test_quarantine_cascades_through_references():
    logs = _with("sellers", "rating", 9.0, row=0)  # seller 1 is bad -> its item 100 -> impression 1000 -> events
    results = validate_logs(logs)
    assert results["items"].quarantined["item_id"].tolist() == [100]
    assert "impression_id: unknown impression id" in results["events"].reason_counts()


def test_a_row_with_two_problems_lists_both():
    logs = good_logs()
    logs["items"] = logs["items"].astype({"price": object, "margin_rate": object})
    logs["items"].at[0, "price"] = -1.0
    logs["items"].at[0, "margin_rate"] = 2.0
    reason = validate_table("items", logs["items"]).quarantined[REASON_COLUMN].iloc[0]
    assert "price: must be > 0" in reason and "margin_rate: must be <= 1" in reason


def test_duplicate_keeps_first_clean_occurrence():
    frame = good_logs()["users"]
    frame = pd.concat([frame, frame.iloc[[0]]], ignore_index=True)
    res = validate_table("users", frame)
    assert res.valid["user_id"].tolist() == [10, 11]
    assert res.quarantined[ROW_COLUMN].tolist() == [2]


def test_valid_output_has_contract_schema():
    res = validate_table("items", good_logs()["items"])
    table = res.valid_arrow()
    assert table.num_rows == 2
    assert table.schema.field("stock_qty").type.bit_width == 64


def test_configured_timestamp_window():
    cfg = ValidationConfig(ts_min="2026-01-05", ts_max="2026-01-06")
    res = validate_table("impressions", good_logs()["impressions"].assign(
        ts=[T0, T0 + pd.Timedelta(days=2)]), config=cfg)
    assert res.quarantined[REASON_COLUMN].str.contains("ts: timestamp out of range").tolist() == [True]


def test_bad_arguments():
    with pytest.raises(ValueError, match="table must be one of"):
        validate_table("orders", pd.DataFrame())
    with pytest.raises(TypeError, match="data must be"):
        validate_table("users", [1, 2])


def test_simulated_logs_pass_the_validator(small_logs):
    tables = {t: ds.dataset(small_logs / t, format="parquet").to_table() for t in TABLE_ORDER}
    results = validate_logs(tables)
    for name, res in results.items():
        assert len(res.quarantined) == 0, (name, res.reason_counts())
        assert len(res.valid) == tables[name].num_rows
    assert np.isin(results["events"].valid["type"].unique(), ["click", "add_to_cart", "purchase"]).all()


BIG = 2**62 + 1  # exact as an int, not as a float


@pytest.mark.parametrize(("dtype", "values", "expected"), [
    ("int64", [3, "3", " 4 ", 3.0, "5.0", "1e3", BIG, str(BIG)], [3, 3, 4, 3, 5, 1000, BIG, BIG]),
    ("int64", [2**63, -(2**63) - 1, 2**70, 2.5, "2.5", "", "three", True, [1], {"a": 1}, float("inf")], [None] * 11),
    ("int32", [2**31 - 1, -(2**31), 2**31, 2**40], [2**31 - 1, -(2**31), None, None]),
    ("float64", [1, "1.5", 2**70, "x", [1], False], [1.0, 1.5, float(2**70), None, None, None]),
    ("bool", [True, 0, "false", "yes", 2], [True, False, False, None, None]),
    ("string", ["a", 1, ["a"]], ["a", None, None]),
])
def test_coerce_values_reads_exact_values_and_never_raises(dtype, values, expected):
    """One definition of "reads as the contract type", for files and messages alike."""
    got, bad = coerce_values(pd.Series(values + [None], dtype=object), Column("c", dtype))
    assert [None if pd.isna(v) else v for v in got.tolist()] == expected + [None]
    assert bad.tolist() == [e is None for e in expected] + [False]  # a missing value is not a wrong type


@pytest.mark.parametrize(("dtype", "series", "expected"), [
    ("int64", pd.Series([1, BIG], dtype="int64"), [1, BIG]),
    ("int32", pd.Series([1, 2**40], dtype="int64"), [1, None]),
    ("int64", pd.Series([1.0, 2.5, np.nan]), [1, None, None]),
    ("int64", pd.Series([1, 2**64 - 1], dtype="uint64"), [1, None]),
    ("int64", pd.Series([1, None], dtype="Int64"), [1, None]),
])
def test_coerce_values_of_typed_columns(dtype, series, expected):
    got, bad = coerce_values(series, Column("c", dtype))
    assert [None if pd.isna(v) else int(v) for v in got.tolist()] == expected
    assert bad.tolist() == [e is None and pd.notna(v) for e, v in zip(expected, series.tolist(), strict=True)]


def test_rows_from_several_files_miss_a_column_only_where_their_file_lacked_it():
    frame = good_logs()["users"].assign(source_file=["a.parquet", "b.parquet"], country=[None, None],
                                        raw_device=[None, "42"], device=["mobile", None])
    res = validate_table("users", frame, absent={"country": ["a.parquet"]})
    assert res.quarantined[REASON_COLUMN].tolist() == [
        "country: missing required field (column absent)",
        "country: missing required field; device: wrong type, expected string"]
    with pytest.raises(ValueError, match="source_file"):
        validate_table("users", good_logs()["users"], absent={"country": ["a.parquet"]})
