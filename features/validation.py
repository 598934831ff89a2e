"""Split any batch of an event-log table into valid rows and quarantined rows.

Every input row ends up in exactly one of the two outputs (valid + quarantined = input),
and each quarantined row carries every reason it failed, as ``"<column>: <reason>"``
strings joined by ``"; "``. Rules come from the declarations in :mod:`features.contract`:

- wrong types (a value that cannot be read as the column's type),
- missing required fields (null, or the column absent altogether),
- values out of range (zero or negative prices, margins outside [0, 1], ...),
- timestamps outside the configured window,
- unknown ids (foreign keys not among the *valid* rows of the referenced table),
- an event before its impression, or for another user or item than its impression,
- duplicate primary keys: among rows that pass every other rule, the first occurrence is
  kept and later ones are quarantined.

This is the pandas validator for batches (adapters, tests, the stream consumer); the
Spark ETL applies the same declarations with Spark expressions.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa

from features.config import ValidationConfig
from features.contract import TABLE_ORDER, TABLES, Column, TableSpec, arrow_schema

__all__ = ["ValidationResult", "validate_table", "validate_logs", "REASON_COLUMN", "ROW_COLUMN"]

logger = logging.getLogger(__name__)

REASON_COLUMN = "quarantine_reason"
ROW_COLUMN = "source_row"


@dataclass(frozen=True)
class ValidationResult:
    """The outcome of validating one batch of one table.

    Attributes
    ----------
    table : str
    valid : pandas.DataFrame
        The contract columns, in contract order and types, of every row that passed.
    quarantined : pandas.DataFrame
        The failing rows as they came in, plus ``source_row`` (their index in the batch)
        and ``quarantine_reason``.
    """

    table: str
    valid: pd.DataFrame
    quarantined: pd.DataFrame

    @property
    def n_input(self) -> int:
        return len(self.valid) + len(self.quarantined)

    def reason_counts(self) -> dict[str, int]:
        """How many rows failed each reason (a row with two reasons counts for both)."""
        counts: Counter[str] = Counter()
        for reasons in self.quarantined[REASON_COLUMN]:
            counts.update(reasons.split("; "))
        return dict(counts.most_common())

    def valid_arrow(self) -> pa.Table:
        """The valid rows as an Arrow table with the contract schema."""
        return pa.Table.from_pandas(self.valid, schema=arrow_schema(self.table), preserve_index=False)


class _Problems:
    """Collects (mask, reason) pairs and renders per-row reason strings at the end."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.any = np.zeros(n, dtype=bool)
        self._found: list[tuple[np.ndarray, str]] = []

    def add(self, mask: np.ndarray, reason: str) -> None:
        mask = np.asarray(mask, dtype=bool)
        if mask.any():
            self.any |= mask
            self._found.append((mask, reason))

    def reasons(self) -> np.ndarray:
        out = np.empty(self.n, dtype=object)
        rows = np.flatnonzero(self.any)
        parts: dict[int, list[str]] = {int(r): [] for r in rows.tolist()}
        for mask, reason in self._found:
            for r in np.flatnonzero(mask).tolist():
                parts[r].append(reason)
        for row, found in parts.items():
            out[row] = "; ".join(found)
        return out


def _as_bool(value: object) -> object:
    """True/False, 0/1 and their spellings as text; anything else is not a bool (NA)."""
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, int | np.integer) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
        return value.lower() in ("true", "1")
    return pd.NA


def _coerce(series: pd.Series, col: Column) -> tuple[pd.Series, np.ndarray]:
    """Read ``series`` as ``col.dtype``; return the values and a mask of unreadable entries."""
    present = series.notna().to_numpy()
    if col.dtype in ("int64", "int32"):
        if pd.api.types.is_bool_dtype(series.dtype):
            return pd.Series(pd.NA, index=series.index, dtype="Int64"), present
        num = pd.to_numeric(series, errors="coerce")
        num_f = num.astype("float64")
        bad = present & (num_f.isna().to_numpy() | ~np.isfinite(num_f.fillna(0).to_numpy())
                         | (num_f.fillna(0).to_numpy() % 1 != 0))
        values = num_f.where(~bad).astype("Int64")
        return values, bad
    if col.dtype == "float64":
        if pd.api.types.is_bool_dtype(series.dtype):
            return pd.Series(np.nan, index=series.index), present
        num = pd.to_numeric(series, errors="coerce").astype("float64")
        bad = present & num.isna().to_numpy()
        return num, bad
    if col.dtype == "bool":
        if pd.api.types.is_bool_dtype(series.dtype):
            return series.astype("boolean"), np.zeros(len(series), dtype=bool)
        values = series.map(_as_bool)
        bad = present & values.isna().to_numpy()
        return values.astype("boolean"), bad
    if col.dtype == "string":
        is_str = series.map(lambda v: isinstance(v, str)).to_numpy(dtype=bool)
        bad = present & ~is_str
        return series.where(is_str, None).astype(object), bad
    # timestamp
    if pd.api.types.is_datetime64_any_dtype(series.dtype):
        ts = series if getattr(series.dt, "tz", None) is not None else series.dt.tz_localize("UTC")
        return ts.dt.tz_convert("UTC").astype("datetime64[us, UTC]"), np.zeros(len(series), dtype=bool)
    is_text = series.map(lambda v: isinstance(v, str | pd.Timestamp)).to_numpy(dtype=bool)
    parsed = pd.to_datetime(series.where(is_text), utc=True, errors="coerce", format="ISO8601")
    bad = present & (~is_text | parsed.isna().to_numpy())
    return parsed.astype("datetime64[us, UTC]"), bad


def _range_reasons(values: pd.Series, col: Column, ok: np.ndarray, config: ValidationConfig,
                   problems: _Problems) -> None:
    if col.dtype == "timestamp":
        micros = np.where(ok, values.fillna(pd.Timestamp(0, tz="UTC")).astype("int64").to_numpy(), 0)
        out = ok & ((micros < config.ts_min_us) | (micros >= config.ts_max_us))
        problems.add(out, f"{col.name}: timestamp out of range [{config.ts_min}, {config.ts_max})")
        return
    if col.allowed is not None:
        problems.add(ok & ~values.isin(col.allowed).to_numpy(), f"{col.name}: must be one of {list(col.allowed)}")
    if col.min_value is None and col.max_value is None:
        return
    num = values.astype("float64").fillna(0.0).to_numpy()
    if col.dtype == "float64":
        problems.add(ok & ~np.isfinite(num), f"{col.name}: must be finite")
    if col.min_value is not None:
        if col.min_exclusive:
            problems.add(ok & (num <= col.min_value), f"{col.name}: must be > {col.min_value:g}")
        else:
            problems.add(ok & (num < col.min_value), f"{col.name}: must be >= {col.min_value:g}")
    if col.max_value is not None:
        problems.add(ok & (num > col.max_value), f"{col.name}: must be <= {col.max_value:g}")


def _to_frame(data: pd.DataFrame | pa.Table) -> pd.DataFrame:
    if isinstance(data, pa.Table):
        return data.to_pandas()
    if isinstance(data, pd.DataFrame):
        return data.reset_index(drop=True)
    raise TypeError(f"data must be a pandas.DataFrame or pyarrow.Table, got {type(data).__name__}")


def validate_table(
    table: str,
    data: pd.DataFrame | pa.Table,
    *,
    config: ValidationConfig | None = None,
    known_ids: Mapping[str, np.ndarray] | None = None,
    impressions: pd.DataFrame | None = None,
) -> ValidationResult:
    """Validate one batch of a contract table.

    Parameters
    ----------
    table : str
        One of ``features.contract.TABLES``.
    data : pandas.DataFrame or pyarrow.Table
        The batch, with any column types; columns outside the contract are ignored.
    config : ValidationConfig, optional
        Timestamp bounds; defaults to ``ValidationConfig()``.
    known_ids : mapping of table name to array of ids, optional
        Valid primary keys of referenced tables. A foreign key whose table is absent
        here is not checked.
    impressions : pandas.DataFrame, optional
        Valid impressions (``impression_id, ts, user_id, item_id``); for events, enables
        the unknown-impression and event-before-impression rules.

    Returns
    -------
    ValidationResult

    Raises
    ------
    ValueError
        If ``table`` is not a contract table.
    TypeError
        If ``data`` is neither a DataFrame nor an Arrow table.
    """
    if table not in TABLES:
        raise ValueError(f"table must be one of {list(TABLES)}, got {table!r}")
    spec: TableSpec = TABLES[table]
    config = config or ValidationConfig()
    known_ids = dict(known_ids or {})
    if impressions is not None and table == "events":
        known_ids["impressions"] = impressions["impression_id"].to_numpy()
    df = _to_frame(data)
    n = len(df)
    problems = _Problems(n)
    extra = [c for c in df.columns if c not in spec.column_names]
    if extra:
        logger.warning("%s: ignoring columns outside the contract: %s", table, extra)

    columns: dict[str, pd.Series] = {}
    for col in spec.columns:
        if col.name not in df.columns:
            values = pd.Series([None] * n, dtype=object)
            if col.required:
                problems.add(np.ones(n, dtype=bool), f"{col.name}: missing required field (column absent)")
            columns[col.name] = values
            continue
        values, bad = _coerce(df[col.name], col)
        problems.add(bad, f"{col.name}: wrong type, expected {col.dtype}")
        null = values.isna().to_numpy() & ~bad
        if col.required:
            problems.add(null, f"{col.name}: missing required field")
        _range_reasons(values, col, ~null & ~bad, config, problems)
        columns[col.name] = values

    _cross_field_rules(spec, columns, problems)
    for fk in spec.foreign_keys:
        if fk.table not in known_ids:
            continue
        values = columns[fk.column]
        present = values.notna().to_numpy()
        ids = values.fillna(-1).astype("int64").to_numpy()
        unknown = present & ~np.isin(ids, np.asarray(known_ids[fk.table], dtype=np.int64))
        problems.add(unknown, f"{fk.column}: unknown {fk.table[:-1]} id")
    if table == "events" and impressions is not None:
        _event_vs_impression(columns, impressions, problems)

    pk = columns[spec.primary_key]
    clean = ~problems.any
    dup = np.zeros(n, dtype=bool)
    dup[clean] = pd.Series(pk.to_numpy()[clean]).duplicated(keep="first").to_numpy()
    problems.add(dup, f"{spec.primary_key}: duplicate primary key")

    ok = ~problems.any
    valid = pd.DataFrame({c.name: _final_dtype(columns[c.name][ok], c) for c in spec.columns})
    valid = valid.reset_index(drop=True)
    quarantined = df[~ok].copy()
    quarantined.insert(0, ROW_COLUMN, np.flatnonzero(~ok))
    quarantined[REASON_COLUMN] = problems.reasons()[~ok]
    quarantined = quarantined.reset_index(drop=True)
    if len(quarantined):
        logger.info("%s: %d of %d rows quarantined", table, len(quarantined), n)
    return ValidationResult(table=table, valid=valid, quarantined=quarantined)


def _cross_field_rules(spec: TableSpec, columns: dict[str, pd.Series], problems: _Problems) -> None:
    if spec.name == "events":
        purchase = (columns["type"] == "purchase").fillna(False).to_numpy(dtype=bool)
        problems.add(purchase & columns["price_paid"].isna().to_numpy(), "price_paid: missing for a purchase")
    if spec.name == "items":
        lp, p = columns["list_price"], columns["price"]
        both = lp.notna().to_numpy() & p.notna().to_numpy()
        below = both & (lp.astype("float64").fillna(0).to_numpy() < p.astype("float64").fillna(0).to_numpy())
        problems.add(below, "list_price: below price")


def _event_vs_impression(columns: dict[str, pd.Series], impressions: pd.DataFrame, problems: _Problems) -> None:
    imp_ids = impressions["impression_id"].to_numpy(dtype=np.int64)
    order = np.argsort(imp_ids, kind="stable")
    sorted_ids = imp_ids[order]
    ev_imp = columns["impression_id"]
    present = ev_imp.notna().to_numpy()
    ids = ev_imp.fillna(-1).astype("int64").to_numpy()
    pos = np.clip(np.searchsorted(sorted_ids, ids), 0, max(len(sorted_ids) - 1, 0))
    found = present & (len(sorted_ids) > 0) & (sorted_ids[pos] == ids if len(sorted_ids) else False)
    if not found.any():
        return
    row = order[pos]
    imp_ts = pd.to_datetime(impressions["ts"], utc=True).astype("datetime64[us, UTC]").astype("int64").to_numpy()[row]
    ev_ts = columns["ts"]
    ts_ok = ev_ts.notna().to_numpy()
    ev_us = ev_ts.fillna(pd.Timestamp(0, tz="UTC")).astype("int64").to_numpy()
    problems.add(found & ts_ok & (ev_us < imp_ts), "ts: event before its impression")
    for name in ("user_id", "item_id"):
        ev = columns[name]
        ev_ok = ev.notna().to_numpy()
        mine = ev.fillna(-1).astype("int64").to_numpy()
        theirs = impressions[name].to_numpy(dtype=np.int64)[row]
        problems.add(found & ev_ok & (mine != theirs), f"{name}: differs from its impression's")


def _final_dtype(values: pd.Series, col: Column) -> pd.Series:
    if col.dtype in ("int64", "int32"):
        return values.astype(col.dtype) if col.required else values.astype("Int64" if col.dtype == "int64" else "Int32")
    if col.dtype == "bool":
        return values.astype(bool) if col.required else values.astype("boolean")
    if col.dtype == "float64":
        return values.astype("float64")
    return values


def validate_logs(
    tables: Mapping[str, pd.DataFrame | pa.Table],
    *,
    config: ValidationConfig | None = None,
) -> dict[str, ValidationResult]:
    """Validate a set of contract tables together, resolving references between them.

    Tables are validated in dependency order, and each foreign key is checked against
    the *valid* rows of the table it references (so an item of a quarantined seller is
    quarantined too). A referenced table missing from ``tables`` is not checked against.

    Raises
    ------
    ValueError
        If ``tables`` names a table outside the contract.
    """
    unknown = set(tables) - set(TABLES)
    if unknown:
        raise ValueError(f"tables must be contract tables {list(TABLES)}, got unknown {sorted(unknown)}")
    results: dict[str, ValidationResult] = {}
    known: dict[str, np.ndarray] = {}
    for name in TABLE_ORDER:
        if name not in tables:
            continue
        imps = results["impressions"].valid if name == "events" and "impressions" in results else None
        res = validate_table(name, tables[name], config=config, known_ids=known, impressions=imps)
        results[name] = res
        known[name] = res.valid[TABLES[name].primary_key].to_numpy(dtype=np.int64)
    return results
