"""The wire format: encoding contract rows, and decoding with the contract's validator."""

from __future__ import annotations

import json

import pandas as pd
import pyarrow as pa
import pytest

from features.config import ValidationConfig
from features.contract import arrow_schema
from features.stream.messages import decode_messages, encode_rows

NOW_US = 1_767_700_000_000_000  # 2026-01-06T11:46:40Z


def _events(n: int = 3) -> pd.DataFrame:
    return pd.DataFrame({
        "event_id": range(10, 10 + n), "ts": pd.to_datetime([NOW_US - 5_000_000] * n, unit="us", utc=True),
        "user_id": [7] * n, "item_id": range(100, 100 + n), "type": ["click", "add_to_cart", "purchase"][:n],
        "impression_id": pd.array([4, None, 6][:n], dtype="Int64"), "quantity": [1] * n,
        "price_paid": [None, None, 12.5][:n]})


def _decode(table: str, values: list[bytes | None], **kwargs):
    kwargs.setdefault("max_future_s", 300.0)
    return decode_messages(table, values, validation=ValidationConfig(), now_us=NOW_US, **kwargs)


def test_events_round_trip_through_the_wire_format() -> None:
    rows = _events()
    messages = encode_rows("events", rows)
    assert [k for k, _ in messages] == [b"7", b"7", b"7"]
    first = json.loads(messages[0][1])
    assert first == {"event_id": 10, "ts": "2026-01-06T11:46:35.000000Z", "user_id": 7, "item_id": 100,
                     "type": "click", "impression_id": 4, "quantity": 1, "price_paid": None}
    assert b" " not in messages[0][1]  # compact
    decoded = _decode("events", [v for _, v in messages])
    assert decoded.rejected == [] and decoded.repeats == 0
    pd.testing.assert_frame_equal(decoded.valid.drop(columns="msg"), rows.astype(decoded.valid.dtypes.drop("msg")))


def test_arrow_rows_with_nullable_ints_stay_ints() -> None:
    table = pa.Table.from_pandas(_events(), schema=arrow_schema("events"), preserve_index=False)
    values = [json.loads(v) for _, v in encode_rows("events", table)]
    assert [v["impression_id"] for v in values] == [4, None, 6]


@pytest.mark.parametrize(("value", "reason"), [
    (b"{oops", "value: not valid JSON"),
    (b"[1, 2]", "value: expected a JSON object, got list"),
    (b"\xff\xfe", "value: not valid JSON"),
    (None, "value: empty message"),
    (b'{"event_id": 1, "ts": "2026-01-06T10:00:00Z", "user_id": 7, "item_id": 1, "type": "like", "quantity": 1}',
     "type: must be one of"),
    (b'{"event_id": 1, "ts": "2026-01-06T10:00:00Z", "user_id": 7, "item_id": 1, "type": "purchase", '
     b'"quantity": 1}', "price_paid: missing for a purchase"),
    (b'{"event_id": 1, "ts": "yesterday", "user_id": 7, "item_id": 1, "type": "click", "quantity": 1}',
     "ts: wrong type"),
    (b'{"event_id": 1, "ts": "2026-01-06T10:00:00Z", "user_id": -3, "item_id": 1, "type": "click", "quantity": 1}',
     "user_id: must be >= 0"),
    (b'{"event_id": 1, "ts": "2026-01-06T12:00:00Z", "user_id": 7, "item_id": 1, "type": "click", "quantity": 1}',
     "ts: more than 300 s ahead of the wall clock"),
    (b'{"event_id": 1, "ts": "2026-01-06T10:00:00Z", "user_id": 1180591620717411303424, "item_id": 1, '
     b'"type": "click", "quantity": 1}', "user_id: wrong type, expected int64"),  # 2**70
    (b'{"event_id": 1, "ts": "2026-01-06T10:00:00Z", "user_id": 7, "item_id": 1, "type": ["click"], '
     b'"quantity": {"n": 1}}', "type: wrong type, expected string; quantity: wrong type, expected int64"),
    (b"{}", "event_id: missing required field; ts: missing required field"),
    (b"[" * 100_000, "value: not valid JSON (RecursionError"),
])
def test_malformed_messages_are_rejected_with_their_reason(value: bytes | None, reason: str) -> None:
    good = encode_rows("events", _events(1))[0][1]
    decoded = _decode("events", [good, value, good.replace(b'"event_id":10', b'"event_id":11')])
    assert [i for i, _ in decoded.rejected] == [1]
    assert reason in decoded.rejected[0][1]
    assert decoded.valid["msg"].tolist() == [0, 2]


def test_a_batch_of_empty_objects_is_rejected_message_by_message() -> None:
    decoded = _decode("events", [b"{}", b"{}"])
    assert [i for i, _ in decoded.rejected] == [0, 1] and len(decoded.valid) == 0


def test_a_validator_failure_nobody_foresaw_rejects_only_the_messages_it_fails_on(monkeypatch) -> None:
    """Fault injection: the validator raises on any batch holding event 13, as a bug would."""
    import features.stream.messages as messages

    real = messages.validate_table

    def failing(table, frame, **kwargs):
        if (frame["event_id"] == 13).any():
            raise TypeError("int() argument must be a string, a bytes-like object or a real number")
        return real(table, frame, **kwargs)

    monkeypatch.setattr(messages, "validate_table", failing)
    good = encode_rows("events", _events(1))[0][1]
    values = [good, good.replace(b'"event_id":10', b'"event_id":13'), good.replace(b'"event_id":10', b'"event_id":11')]
    decoded = _decode("events", values)
    assert decoded.rejected == [(1, "value: could not be validated (TypeError: int() argument must be a string, "
                                    "a bytes-like object or a real number)")]
    assert decoded.valid["msg"].tolist() == [0, 2] and decoded.valid["event_id"].tolist() == [10, 11]


def test_a_repeat_within_the_batch_is_not_an_error() -> None:
    value = encode_rows("events", _events(1))[0][1]
    decoded = _decode("events", [value, value])
    assert decoded.rejected == [] and decoded.repeats == 1 and decoded.valid["msg"].tolist() == [0]


def test_impressions_decode_and_missing_columns_are_reported() -> None:
    imp = pd.DataFrame({"impression_id": [1], "request_id": [2], "ts": pd.to_datetime([NOW_US], unit="us", utc=True),
                        "user_id": [3], "item_id": [4], "position": [0], "policy": ["p"], "randomized": [False],
                        "propensity": [None], "device": ["mobile"]})
    (key, value), = encode_rows("impressions", imp)
    assert key == b"3"
    decoded = _decode("impressions", [value, b'{"impression_id": 5}'])
    assert len(decoded.valid) == 1 and decoded.rejected[0][0] == 1
    assert "ts: missing required field" in decoded.rejected[0][1]


@pytest.mark.parametrize(("table", "rows", "error", "match"), [
    ("users", _events(), ValueError, "table must be one of"),
    ("events", _events().drop(columns="quantity"), ValueError, "missing \\['quantity'\\]"),
    ("events", [1, 2], TypeError, "rows must be"),
])
def test_encode_rejects_bad_input(table: str, rows, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        encode_rows(table, rows)


def test_a_serving_log_batch_encodes_its_contract_columns() -> None:
    imp = pd.DataFrame({"impression_id": [1], "request_id": [2], "ts": pd.to_datetime([NOW_US], unit="us", utc=True),
                        "user_id": [3], "item_id": [4], "position": [0], "policy": ["p"], "randomized": [False],
                        "propensity": [0.05], "device": [None], "arm": ["champion"], "score": [0.7]})
    batch = pa.RecordBatch.from_pandas(imp, preserve_index=False)
    (key, value), = encode_rows("impressions", batch)
    row = json.loads(value)
    assert key == b"3" and "arm" not in row and row["propensity"] == 0.05 and row["device"] is None
    assert _decode("impressions", [value]).rejected == []
