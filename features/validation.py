"""Split any batch of an event-log table into valid rows and quarantined rows.

Every input row ends up in exactly one of the two outputs (valid + quarantined = input),
and each quarantined row carries every reason it failed, as ``"<column>: <reason>"``
strings joined by ``"; "``. Rules come from the declarations in :mod:`features.contract`:

- wrong types (a value that cannot be read as the column's type: :func:`coerce_values`),
- missing required fields (null, or the column absent from the batch or from the row's file),
- values out of range (zero or negative prices, margins outside [0, 1], ...),
- timestamps outside the configured window,
- unknown ids (foreign keys not among the *valid* rows of the referenced table),
- an event before its impression, or for another user or item than its impression,
- duplicate primary keys: among rows that pass every other rule, the first occurrence is
  kept and later ones are quarantined.

This is the pandas validator for batches (adapters, tests, the stream consumer, and
``feedrank validate`` through :func:`features.logfiles.validate_files`); the Spark ETL applies
the same declarations with Spark expressions to the same files (:mod:`features.quarantine`).
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Collection, Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa

from features.config import ValidationConfig
from features.contract import TABLE_ORDER, TABLES, Column, TableSpec, arrow_schema

__all__ = ["ValidationResult", "coerce_values", "validate_table", "validate_logs", "RAW_PREFIX", "REASON_COLUMN",
           "ROW_COLUMN", "SOURCE_FILE_COLUMN"]

logger = logging.getLogger(__name__)

REASON_COLUMN = "quarantine_reason"
ROW_COLUMN = "source_row"
#: The file a row was read from (rows read by :mod:`features.logfiles`).
SOURCE_FILE_COLUMN = "source_file"
#: ``raw_<column>``: the original text of a value read from a file whose column had another type.
RAW_PREFIX = "raw_"


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
        """How many rows failed each reason (a row with two reasons counts for both), most first, ties by name
        (the order of the ETL's report)."""
        counts: Counter[str] = Counter()
        for reasons in self.quarantined[REASON_COLUMN]:
            counts.update(reasons.split("; "))
        return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))

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


_INT_RANGE = {"int64": (-(2**63), 2**63 - 1), "int32": (-(2**31), 2**31 - 1)}


def _as_int(value: object, lo: int, hi: int) -> int | None:
    """The integer ``value`` stands for exactly (an int, an integral float, or such a number as text)
    within ``[lo, hi]``; None for anything else (bools, fractions, text that is no number, ...)."""
    if isinstance(value, bool | np.bool_):
        return None
    number: int | None = None
    if isinstance(value, int | np.integer):
        number = int(value)
    elif isinstance(value, str | float | np.floating):
        if isinstance(value, str):
            try:
                number = int(value.strip())
            except ValueError:
                number = None
        if number is None:
            try:
                real = float(value)
            except (ValueError, OverflowError):
                return None
            if not math.isfinite(real) or not real.is_integer():
                return None
            number = int(real)
    if number is None or not lo <= number <= hi:
        return None
    return number


def _as_float(value: object) -> float | None:
    """``value`` as a float (numbers and numbers as text); None for anything else."""
    if isinstance(value, bool | np.bool_) or not isinstance(value, int | float | np.integer | np.floating | str):
        return None
    try:
        return float(value)
    except (ValueError, OverflowError):
        return None


def coerce_values(series: pd.Series, col: Column) -> tuple[pd.Series, np.ndarray]:
    """Read ``series`` as ``col.dtype``; return the values and a mask of present values that do not read as it.

    The one definition of "reads as the contract's type", for batches of any origin (files
    whose column has another type, JSON messages): integers must be exact and fit the type
    (``"3"`` and ``3.0`` read as 3; ``2.5``, ``2**70``, ``True`` and ``"three"`` do not),
    floats may come as text, bools as ``0``/``1``/``"true"``, timestamps as ISO-8601 text.
    Never raises on odd values (nested lists, dicts, huge numbers): they are unreadable.

    Returns
    -------
    values : Series
        ``Int64`` for integer columns (range checked for ``int32``), ``float64``, ``boolean``,
        object (str or None) for strings, ``datetime64[us, UTC]``; null where unreadable.
    bad : ndarray of bool
    """
    present = series.notna().to_numpy()
    n = len(series)
    if col.dtype in ("int64", "int32"):
        lo, hi = _INT_RANGE[col.dtype]
        if pd.api.types.is_bool_dtype(series.dtype):
            return pd.Series(pd.NA, index=series.index, dtype="Int64"), present
        if pd.api.types.is_integer_dtype(series.dtype) and not pd.api.types.is_unsigned_integer_dtype(series.dtype):
            values = series.astype("Int64")
            bad = present & ((values < lo) | (values > hi)).fillna(False).to_numpy(dtype=bool)
            return values.mask(bad), bad
        if pd.api.types.is_float_dtype(series.dtype):
            num = series.astype("float64").to_numpy()
            with np.errstate(invalid="ignore"):
                bad = present & ~(np.isfinite(num) & (num == np.floor(num)) & (num >= lo) & (num < hi + 1.0))
            return pd.Series(np.where(bad | ~present, np.nan, num), index=series.index).astype("Int64"), bad
        read = [_as_int(v, lo, hi) if ok else None for v, ok in zip(series.tolist(), present, strict=True)]
        bad = present & np.array([v is None for v in read], dtype=bool)
        return pd.Series(pd.array(read, dtype="Int64"), index=series.index), bad
    if col.dtype == "float64":
        if pd.api.types.is_bool_dtype(series.dtype):
            return pd.Series(np.nan, index=series.index), present
        if pd.api.types.is_numeric_dtype(series.dtype):
            return series.astype("float64"), np.zeros(n, dtype=bool)
        reals = [_as_float(v) if ok else None for v, ok in zip(series.tolist(), present, strict=True)]
        bad = present & np.array([v is None for v in reals], dtype=bool)
        return pd.Series([np.nan if v is None else v for v in reals], index=series.index, dtype="float64"), bad
    if col.dtype == "bool":
        if pd.api.types.is_bool_dtype(series.dtype):
            return series.astype("boolean"), np.zeros(n, dtype=bool)
        values = series.map(_as_bool, na_action="ignore")
        bad = present & values.isna().to_numpy()
        return values.astype("boolean"), bad
    if col.dtype == "string":
        is_str = series.map(lambda v: isinstance(v, str)).to_numpy(dtype=bool)
        bad = present & ~is_str
        return series.where(is_str, None).astype(object), bad
    # timestamp
    if pd.api.types.is_datetime64_any_dtype(series.dtype):
        ts = series if getattr(series.dt, "tz", None) is not None else series.dt.tz_localize("UTC")
        return ts.dt.tz_convert("UTC").astype("datetime64[us, UTC]"), np.zeros(n, dtype=bool)
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
    if isinstance(data, pa.Table):  # nullable ints stay exact (not floats)
        return data.to_pandas(types_mapper={pa.int64(): pd.Int64Dtype(), pa.int32(): pd.Int32Dtype()}.get)
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
    absent: Mapping[str, Collection[str]] | None = None,
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
    absent : mapping of column name to file names, optional
        For rows read from several files (:mod:`features.logfiles`; ``data`` then has
        ``source_file``): the files that lack a column. Their rows miss that column ("column
        absent"); other files' rows are judged by their values. A ``raw_<column>`` in ``data``
        holds the original text of values whose file had another type: present text with a
        null value is a wrong type.

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
    extra = [c for c in df.columns if c not in spec.column_names and c != SOURCE_FILE_COLUMN
             and not str(c).startswith(RAW_PREFIX)]
    if extra:
        logger.warning("%s: ignoring columns outside the contract: %s", table, extra)
    absent = dict(absent or {})
    if absent and SOURCE_FILE_COLUMN not in df.columns:
        raise ValueError(f"absent: naming files needs a {SOURCE_FILE_COLUMN!r} column in data")

    columns: dict[str, pd.Series] = {}
    for col in spec.columns:
        if col.name not in df.columns:
            values = pd.Series([None] * n, dtype=object)
            if col.required:
                problems.add(np.ones(n, dtype=bool), f"{col.name}: missing required field (column absent)")
            columns[col.name] = values
            continue
        values, bad = coerce_values(df[col.name], col)
        raw = f"{RAW_PREFIX}{col.name}"
        if raw in df.columns:  # read from a file whose column had another type
            bad = bad | (df[raw].notna().to_numpy() & values.isna().to_numpy())
        problems.add(bad, f"{col.name}: wrong type, expected {col.dtype}")
        null = values.isna().to_numpy() & ~bad
        lacking = (df[SOURCE_FILE_COLUMN].isin(list(absent[col.name])).to_numpy(dtype=bool)
                   if col.name in absent else np.zeros(n, dtype=bool))
        if col.required:
            problems.add(null & lacking, f"{col.name}: missing required field (column absent)")
            problems.add(null & ~lacking, f"{col.name}: missing required field")
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
    absent: Mapping[str, Mapping[str, Collection[str]]] | None = None,
) -> dict[str, ValidationResult]:
    """Validate a set of contract tables together, resolving references between them.

    Tables are validated in dependency order, and each foreign key is checked against
    the *valid* rows of the table it references (so an item of a quarantined seller is
    quarantined too). A referenced table missing from ``tables`` is not checked against.
    ``absent`` holds each table's ``absent`` argument of :func:`validate_table`.

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
        res = validate_table(name, tables[name], config=config, known_ids=known, impressions=imps,
                             absent=(absent or {}).get(name))
        results[name] = res
        known[name] = res.valid[TABLES[name].primary_key].to_numpy(dtype=np.int64)
    return results
