"""Data checks that run before anything trains: schema, null rates, volume, freshness, quarantine.

Each check is a pure function of figures the ETL has already measured (row counts, null
counts, newest timestamps, the previous run's counts), returning :class:`CheckResult` rows
that name the table, the column and the figure. :meth:`CheckReport.raise_for_failures`
stops the job with all failures in one readable message. :func:`check_training_table`
measures an ETL output folder with pyarrow and runs the same checks, for trainers that
want to verify what they are about to read.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa

from features.config import ChecksConfig, EtlConfig, parse_utc

__all__ = [
    "CheckReport",
    "CheckResult",
    "DataCheckError",
    "check_freshness",
    "check_null_rates",
    "check_quarantine",
    "check_schema",
    "check_training_table",
    "check_volume",
]

logger = logging.getLogger(__name__)
_HOUR_US = 3_600 * 1_000_000


@dataclass(frozen=True)
class CheckResult:
    """One check on one table (and column): what was measured, against what limit, and the verdict."""

    check: str
    table: str
    column: str
    figure: str
    limit: str
    passed: bool

    def line(self) -> str:
        where = f"{self.table}.{self.column}" if self.column else self.table
        return f"{'ok  ' if self.passed else 'FAIL'} {self.check:11s} {where}: {self.figure} (limit: {self.limit})"


@dataclass(frozen=True)
class CheckReport:
    """All check results of one run."""

    results: tuple[CheckResult, ...] = field(default_factory=tuple)

    @property
    def failures(self) -> tuple[CheckResult, ...]:
        return tuple(r for r in self.results if not r.passed)

    @property
    def passed(self) -> bool:
        return not self.failures

    def __add__(self, other: CheckReport) -> CheckReport:
        return CheckReport(self.results + other.results)

    def to_text(self, *, failures_only: bool = False) -> str:
        rows = self.failures if failures_only else self.results
        head = f"data checks: {len(self.results) - len(self.failures)} passed, {len(self.failures)} failed"
        return "\n".join([head, *("  " + r.line() for r in rows)])

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "results": [asdict(r) for r in self.results]}

    def raise_for_failures(self) -> None:
        """Raise :class:`DataCheckError` listing every failed check, if any failed."""
        if self.failures:
            raise DataCheckError(self)


class DataCheckError(RuntimeError):
    """A data check failed; the message lists each failure with table, column, figure and limit."""

    def __init__(self, report: CheckReport) -> None:
        self.report = report
        super().__init__(report.to_text(failures_only=True))


def _fmt(x: float) -> str:
    return f"{x:.4g}"


def check_schema(table: str, found: pa.Schema, expected: pa.Schema) -> CheckReport:
    """Every expected column present with its type; no unexpected columns (``date`` of the folder aside)."""
    results = []
    have = {f.name: f.type for f in found}
    for f in expected:
        if f.name not in have:
            results.append(CheckResult("schema", table, f.name, "column absent", str(f.type), False))
        elif have[f.name] != f.type:
            results.append(CheckResult("schema", table, f.name, f"type {have[f.name]}", str(f.type), False))
    extra = sorted(set(have) - {f.name for f in expected} - {"date"})
    for name in extra:
        results.append(CheckResult("schema", table, name, "unexpected column", "not in the declared schema", False))
    if not results:
        results.append(CheckResult("schema", table, "", f"{len(expected)} columns as declared", "exact", True))
    return CheckReport(tuple(results))


def check_null_rates(table: str, rows: int, null_counts: Mapping[str, int], config: ChecksConfig,
                     *, required: Sequence[str]) -> CheckReport:
    """Required columns hold no nulls; each ``f_*`` column's null share is at most ``max_null_rate``."""
    results = []
    if rows == 0:
        return CheckReport((CheckResult("null_rate", table, "", "0 rows", "> 0 rows", False),))
    for column, nulls in null_counts.items():
        rate = nulls / rows
        if column in required:
            results.append(CheckResult("null_rate", table, column, f"{nulls:,} nulls of {rows:,}", "0 nulls",
                                       nulls == 0))
        elif column.startswith("f_") and column not in config.null_rate_ignore:
            results.append(CheckResult("null_rate", table, column, f"null rate {_fmt(rate)}",
                                       f"<= {_fmt(config.max_null_rate)}", rate <= config.max_null_rate))
    return CheckReport(tuple(results))


def check_volume(table: str, current: Mapping[str, int], previous: Mapping[str, int] | None,
                 config: ChecksConfig) -> CheckReport:
    """Each day's rows against the previous run: the same day when it had it, else its mean per day."""
    if not previous:
        return CheckReport((CheckResult("volume", table, "", "no previous run to compare with", "-", True),))
    mean = sum(previous.values()) / max(len(previous), 1)
    results = []
    for day, n in sorted(current.items()):
        base = previous.get(day, mean)
        ratio = n / base if base > 0 else float("inf") if n else 1.0
        low_ok = config.volume_min_ratio == 0 or ratio >= config.volume_min_ratio
        high_ok = config.volume_max_ratio == 0 or ratio <= config.volume_max_ratio
        what = "same day" if day in previous else "mean day"
        results.append(CheckResult("volume", f"{table}[date={day}]", "", f"{n:,} rows = {_fmt(ratio)} x previous "
                                   f"run's {what} ({base:,.0f})",
                                   f"[{_fmt(config.volume_min_ratio)}, {_fmt(config.volume_max_ratio) or 'inf'}]",
                                   low_ok and high_ok))
    return CheckReport(tuple(results))


def check_freshness(newest_us: Mapping[str, int | None], config: ChecksConfig, *,
                    reference: str = "impressions", now: datetime | None = None) -> CheckReport:
    """Each table's newest timestamp within ``max_table_lag_hours`` of the reference table's, and the
    reference no older than ``max_age_hours`` at ``as_of`` (when that check is on)."""
    results = []
    ref = newest_us.get(reference)
    if ref is None:
        return CheckReport((CheckResult("freshness", reference, "ts", "no rows", "some rows", False),))
    for table, ts in sorted(newest_us.items()):
        if table == reference:
            continue
        if ts is None:
            results.append(CheckResult("freshness", table, "ts", "no rows", "some rows", False))
            continue
        lag = (ref - ts) / _HOUR_US
        results.append(CheckResult("freshness", table, "ts", f"newest row {_fmt(lag)} h behind {reference}",
                                   f"<= {_fmt(config.max_table_lag_hours)} h", lag <= config.max_table_lag_hours))
    if config.max_age_hours > 0:
        at = parse_utc(config.as_of, "as_of") if config.as_of else (now or datetime.now(UTC))
        age = (at.timestamp() * 1e6 - ref) / _HOUR_US
        results.append(CheckResult("freshness", reference, "ts", f"newest row {_fmt(age)} h old at {at.isoformat()}",
                                   f"<= {_fmt(config.max_age_hours)} h", age <= config.max_age_hours))
    return CheckReport(tuple(results))


def check_quarantine(table: str, input_rows: int, quarantined: int, config: ChecksConfig) -> CheckReport:
    """The share of a table's input rows that was quarantined is at most ``max_quarantine_rate``."""
    rate = quarantined / input_rows if input_rows else 0.0
    return CheckReport((CheckResult("quarantine", table, "", f"{quarantined:,} of {input_rows:,} rows "
                                    f"({_fmt(rate)})", f"<= {_fmt(config.max_quarantine_rate)}",
                                    rate <= config.max_quarantine_rate),))


def check_training_table(path: str | Path, *, etl: EtlConfig, checks: ChecksConfig) -> CheckReport:
    """Check a written ``training/`` folder (schema of every file, null rates over all rows) with pyarrow.

    Raises
    ------
    FileNotFoundError
        If ``path`` holds no Parquet files.
    """
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from features.outputs import KEY_COLUMNS, training_schema

    files = sorted(Path(path).glob("date=*/*.parquet"))
    if not files:
        raise FileNotFoundError(f"training table {path}: no date=*/ Parquet files")
    expected = training_schema(etl)
    report = CheckReport()
    rows = 0
    nulls: dict[str, int] = {f.name: 0 for f in expected}
    for file in files:
        meta = pq.ParquetFile(file)
        schema = meta.schema_arrow
        table = f"training[{file.parent.name}]"
        report = report + check_schema(table, schema, expected)
        data = meta.read(columns=[c for c in nulls if c in schema.names])
        rows += data.num_rows
        for name in data.column_names:
            nulls[name] += int(pc.sum(pc.is_null(data[name], nan_is_null=False)).as_py() or 0)
    return report + check_null_rates("training", rows, nulls, checks, required=KEY_COLUMNS)
