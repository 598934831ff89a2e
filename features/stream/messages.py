"""The wire format of live events: one compact JSON object per contract row, keyed by user id.

A message on the impressions topic is an ``impressions`` row, one on the events topic an
``events`` row, with the contract's column names; timestamps are ISO-8601 UTC strings with
microseconds, nulls are JSON ``null``::

    {"event_id":42,"ts":"2026-01-05T10:00:00.123456Z","user_id":7,"item_id":9,"type":"click",
     "impression_id":1024,"quantity":1,"price_paid":null}

Decoding validates a whole poll's messages at once with :func:`features.validation.validate_table`
(the same rules as the batch ETL); a message that is not a JSON object, breaks a rule, or lies
more than ``max_future_s`` ahead of the wall clock is rejected with its reason. Decoding never
raises on a message's content: should the validator fail on a batch in a way nobody foresaw,
the messages are validated one by one and those it still fails on are rejected with the error
as their reason, so one message can never hold up the others.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa

from features.config import ValidationConfig
from features.contract import TABLES
from features.validation import REASON_COLUMN, ROW_COLUMN, ValidationResult, validate_table

__all__ = ["DecodedBatch", "STREAM_TABLES", "decode_messages", "encode_rows"]

logger = logging.getLogger(__name__)

#: The contract tables that travel as live events.
STREAM_TABLES: tuple[str, ...] = ("impressions", "events")

_SEPARATORS = (",", ":")


def _check_table(table: str) -> None:
    if table not in STREAM_TABLES:
        raise ValueError(f"table must be one of {list(STREAM_TABLES)}, got {table!r}")


def encode_rows(table: str, rows: pd.DataFrame | pa.Table | pa.RecordBatch) -> list[tuple[bytes, bytes]]:
    """Encode contract rows as ``(key, value)`` messages.

    Parameters
    ----------
    table : {"impressions", "events"}
    rows : DataFrame, Arrow table or record batch with the table's contract columns (extra columns
        are dropped)

    Returns
    -------
    list of (bytes, bytes)
        The user id as ASCII digits, and the row as compact JSON.

    Raises
    ------
    ValueError
        If ``table`` is not a stream table or ``rows`` lacks a contract column.
    """
    _check_table(table)
    frame = rows.to_pandas() if isinstance(rows, pa.Table | pa.RecordBatch) else rows
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"rows must be a pandas.DataFrame, pyarrow.Table or pyarrow.RecordBatch, "
                        f"got {type(rows).__name__}")
    names = TABLES[table].column_names
    missing = [c for c in names if c not in frame.columns]
    if missing:
        raise ValueError(f"rows must hold every {table} column, missing {missing}")
    out = frame.loc[:, list(names)].copy()
    for col in TABLES[table].columns:
        if col.dtype in ("int64", "int32"):  # nullable ints come from Arrow as floats
            out[col.name] = out[col.name].astype("Int64")
    out["ts"] = pd.to_datetime(out["ts"], utc=True).dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    records = out.astype(object).where(out.notna(), None).to_dict("records")
    keys = out["user_id"].astype("int64").astype(str).tolist()
    return [(k.encode(), json.dumps(r, separators=_SEPARATORS, default=_native).encode())
            for k, r in zip(keys, records, strict=True)]


def _native(value: object) -> object:
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.bool_):
        return bool(value)
    raise TypeError(f"cannot encode {type(value).__name__} as JSON")


@dataclass(frozen=True)
class DecodedBatch:
    """The outcome of decoding one table's messages of a poll.

    Attributes
    ----------
    valid : DataFrame
        Contract columns and types of the rows that passed, plus ``msg`` (the message's index
        in the input). A row repeated within the batch appears once.
    rejected : list of (int, str)
        Message index and reason of every message that failed.
    repeats : int
        Messages dropped as repeats of an earlier message of the batch (not errors: the
        at-least-once producer and consumer both repeat messages).
    """

    valid: pd.DataFrame
    rejected: list[tuple[int, str]]
    repeats: int


def decode_messages(table: str, values: Sequence[bytes | None], *, validation: ValidationConfig,
                    now_us: int, max_future_s: float) -> DecodedBatch:
    """Parse and validate the message values of one topic's share of a poll.

    Parameters
    ----------
    table : {"impressions", "events"}
    values : sequence of bytes or None
        Message values in topic order.
    validation : ValidationConfig
        Timestamp bounds of the contract validator.
    now_us : int
        The wall clock (microseconds since the epoch).
    max_future_s : float
        Rows later than ``now_us + max_future_s`` are rejected.

    Returns
    -------
    DecodedBatch
    """
    _check_table(table)
    rejected: list[tuple[int, str]] = []
    parsed: list[dict] = []
    index: list[int] = []
    for i, value in enumerate(values):
        if value is None:
            rejected.append((i, "value: empty message"))
            continue
        try:
            obj = json.loads(value)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            rejected.append((i, f"value: not valid JSON ({exc})"))
            continue
        except Exception as exc:  # noqa: BLE001 - e.g. RecursionError on deeply nested arrays
            rejected.append((i, f"value: not valid JSON ({_describe(exc)})"))
            continue
        if not isinstance(obj, dict):
            rejected.append((i, f"value: expected a JSON object, got {type(obj).__name__}"))
            continue
        parsed.append(obj)
        index.append(i)
    spec = TABLES[table]
    # every contract column, even when no message has it: an empty object is a row of nulls
    frame = pd.DataFrame.from_records(parsed, columns=list(spec.column_names), index=pd.RangeIndex(len(parsed)))
    pos = np.asarray(index, dtype=np.int64)
    repeat_reason = f"{spec.primary_key}: duplicate primary key"
    repeats = 0
    valid_parts: list[pd.DataFrame] = []
    for rows, result in _validate(table, frame, validation, rejected, pos):
        for row, reasons in zip(result.quarantined[ROW_COLUMN], result.quarantined[REASON_COLUMN], strict=True):
            if reasons == repeat_reason:
                repeats += 1
            else:
                rejected.append((int(pos[rows[row]]), reasons))
        ok_rows = np.setdiff1d(np.arange(len(rows)), result.quarantined[ROW_COLUMN].to_numpy(dtype=np.int64))
        valid_parts.append(result.valid.assign(msg=pos[rows[ok_rows]]))
    valid = pd.concat(valid_parts, ignore_index=True) if len(valid_parts) > 1 else valid_parts[0]
    if len(valid):
        ts_us = valid["ts"].astype("int64").to_numpy()
        future = ts_us > now_us + int(max_future_s * 1_000_000)
        for m in valid["msg"].to_numpy()[future]:
            rejected.append((int(m), f"ts: more than {max_future_s:g} s ahead of the wall clock"))
        valid = valid[~future].reset_index(drop=True)
    rejected.sort()
    return DecodedBatch(valid=valid, rejected=rejected, repeats=repeats)


def _describe(exc: BaseException, limit: int = 300) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= limit else text[:limit] + "..."


def _validate(table: str, frame: pd.DataFrame, validation: ValidationConfig, rejected: list[tuple[int, str]],
              pos: np.ndarray) -> list[tuple[np.ndarray, ValidationResult]]:
    """Validate the batch; where the validator raises, each message alone, rejecting those it still fails on.

    Returns (rows of ``frame``, their result) pairs; ``source_row`` of a result indexes its rows.
    """
    try:
        return [(np.arange(len(frame)), validate_table(table, frame, config=validation))]
    except Exception as exc:  # noqa: BLE001 - a validator bug must not stall the stream
        logger.warning("stream: the validator failed on a batch of %d %s messages (%s); validating them one by one",
                       len(frame), table, _describe(exc))
    out: list[tuple[np.ndarray, ValidationResult]] = []
    for row in range(len(frame)):
        try:
            out.append((np.array([row]), validate_table(table, frame.iloc[[row]], config=validation)))
        except Exception as exc:  # noqa: BLE001
            rejected.append((int(pos[row]), f"value: could not be validated ({_describe(exc)})"))
    if not out:  # keep the shape of a result: no valid rows
        out.append((np.zeros(0, dtype=np.int64), validate_table(table, frame.iloc[:0], config=validation)))
    return out
