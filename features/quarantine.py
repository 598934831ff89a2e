"""Spark side of the event-log validator: split each contract table into valid and quarantined rows.

Every rule is derived from the same :class:`~features.contract.TableSpec` declarations that
drive the pandas validator (:mod:`features.validation`), and every reason reads exactly as
there (``"<column>: <reason>"``, joined by ``"; "``), so a row fails for the same reasons in
a notebook, in the stream consumer and in the ETL:

- wrong types (a value that cannot be read as the column's type; columns are read with
  the types their Parquet files declare and cast to the contract's types),
- missing required fields (null, or the column absent from the files),
- values out of range, values outside the allowed set, timestamps outside the window,
- cross-field rules (a purchase without a price, a list price below the price),
- unknown ids (foreign keys not among the *valid* rows of the referenced table),
- an event before its impression, or for another user or item than its impression,
- duplicate primary keys: among rows passing every other rule the first one is kept; "first"
  is the smallest row in the order of all contract columns, so the choice does not depend on
  how files are split across tasks.

Quarantined rows keep their contract columns (as cast), the name of the file they came from
and the reason; for a column whose file type differed, the original value as text too.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from features.config import ValidationConfig
from features.contract import TABLE_ORDER, TABLES, Column, TableSpec, spark_schema
from features.validation import REASON_COLUMN

if TYPE_CHECKING:
    from pyspark.sql import Column as SparkColumn
    from pyspark.sql import DataFrame, SparkSession

__all__ = ["SOURCE_FILE_COLUMN", "FlaggedTable", "SchemaProblem", "flag_logs", "flag_table", "read_contract_table"]

logger = logging.getLogger(__name__)

SOURCE_FILE_COLUMN = "source_file"
_REASONS = "_reasons"


@dataclass(frozen=True)
class SchemaProblem:
    """A difference between a table's files and the contract (reported by the schema check)."""

    table: str
    column: str
    expected: str
    found: str


@dataclass(frozen=True)
class FlaggedTable:
    """One contract table with every row's quarantine reasons ("" when the row is valid).

    Attributes
    ----------
    name : str
    rows : pyspark.sql.DataFrame
        Contract columns (cast), ``source_file``, raw text of mistyped columns, ``_reasons``.
    schema_problems : tuple of SchemaProblem
    """

    name: str
    rows: DataFrame
    schema_problems: tuple[SchemaProblem, ...]

    @property
    def valid(self) -> DataFrame:
        """The valid rows: contract columns, and ``impression_ts`` for events checked against impressions."""
        from pyspark.sql import functions as F

        extra = [c for c in ("impression_ts",) if c in self.rows.columns]
        return self.rows.filter(F.col(_REASONS) == "").select(*TABLES[self.name].column_names, *extra)

    @property
    def quarantined(self) -> DataFrame:
        """The quarantined rows with ``source_file`` and ``quarantine_reason``."""
        from pyspark.sql import functions as F

        extra = sorted(c for c in self.rows.columns if c.startswith("raw_"))
        return (self.rows.filter(F.col(_REASONS) != "")
                .select(*TABLES[self.name].column_names, SOURCE_FILE_COLUMN, *extra,
                        F.col(_REASONS).alias(REASON_COLUMN)))


def _type_name(dtype) -> str:
    return dtype.simpleString()


def read_contract_table(spark: SparkSession, root: str, table: str, *,
                        config: ValidationConfig) -> tuple[DataFrame, tuple[SchemaProblem, ...]]:
    """Read ``<root>/<table>`` and cast it to the contract's columns.

    Returns the frame (contract columns, ``source_file``, ``raw_<col>`` text for columns whose
    file type differs, and ``_reasons`` holding the per-column reasons) and the schema problems.

    Raises
    ------
    FileNotFoundError
        If the table's folder does not exist or holds no Parquet files.
    """
    from pyspark.errors import AnalysisException
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    spec: TableSpec = TABLES[table]
    path = f"{root.rstrip('/')}/{table}"
    try:
        raw = spark.read.parquet(path)
    except AnalysisException as exc:
        message = exc.getMessage().splitlines()[0]
        if "PATH_NOT_FOUND" in message or "UNABLE_TO_INFER_SCHEMA" in message:
            raise FileNotFoundError(f"table {table}: no Parquet data at {path} ({message})") from None
        if "TIMESTAMP(NANOS" in message:
            raise ValueError(f"table {table}: the files at {path} hold nanosecond timestamps; the contract's "
                             "timestamps are microseconds (pyarrow: write_table(..., coerce_timestamps='us'))") \
                from None
        raise ValueError(f"table {table}: cannot read the Parquet files at {path}: {message}") from None
    found = {f.name: f.dataType for f in raw.schema.fields}
    problems: list[SchemaProblem] = []
    selects: list[SparkColumn] = []
    rules: list[tuple[SparkColumn, str]] = []
    raw_text: list[SparkColumn] = []
    contract = {f.name: f.dataType for f in spark_schema(table).fields}
    for col in spec.columns:
        target = contract[col.name]
        if col.name not in found:
            problems.append(SchemaProblem(table, col.name, _type_name(target), "absent"))
            value = F.lit(None).cast(target)
            if col.required:
                rules.append((F.lit(True), f"{col.name}: missing required field (column absent)"))
            selects.append(value.alias(col.name))
            continue
        source = F.col(col.name)
        src_type = found[col.name]
        bad_type = F.lit(False)
        if src_type == target or (isinstance(target, T.TimestampType) and isinstance(src_type, T.TimestampNTZType)):
            value = source.cast(target)
        else:
            problems.append(SchemaProblem(table, col.name, _type_name(target), _type_name(src_type)))
            value = source.try_cast(target)
            bad_type = source.isNotNull() & value.isNull()
            if isinstance(target, T.IntegralType) and isinstance(src_type, T.FractionalType):
                bad_type = bad_type | (source.isNotNull() & (F.isnan(source) | (source != F.floor(source))))
                value = F.when(~bad_type, value)
            if isinstance(target, T.BooleanType) and isinstance(src_type, T.NumericType):
                bad_type = source.isNotNull() & ~source.isin(0, 1)
                value = F.when(~bad_type, value)
            raw_text.append(source.cast("string").alias(f"raw_{col.name}"))
        rules.append((bad_type, f"{col.name}: wrong type, expected {col.dtype}"))
        if col.required:
            rules.append((value.isNull() & ~bad_type, f"{col.name}: missing required field"))
        rules.extend(_range_rules(col, value, config))
        selects.append(value.alias(col.name))
    frame = raw.select(*selects, *raw_text,
                       F.substring_index(F.col("_metadata.file_path"), "/", -1).alias(SOURCE_FILE_COLUMN),
                       _join_reasons([(cond, reason) for cond, reason in rules]).alias(_REASONS))
    frame = _cross_field_rules(spec, frame)
    for p in problems:
        logger.warning("schema: table %s column %s: expected %s, found %s", p.table, p.column, p.expected, p.found)
    return frame, tuple(problems)


def _join_reasons(rules: list[tuple[SparkColumn, str]]) -> SparkColumn:
    from pyspark.sql import functions as F

    if not rules:
        return F.lit("")
    return F.concat_ws("; ", *[F.when(cond, F.lit(reason)) for cond, reason in rules])


def _append(frame: DataFrame, rules: list[tuple[SparkColumn, str]]) -> DataFrame:
    from pyspark.sql import functions as F

    if not rules:
        return frame
    return frame.withColumn(_REASONS, F.concat_ws("; ", F.when(F.col(_REASONS) != "", F.col(_REASONS)),
                                                  *[F.when(c, F.lit(r)) for c, r in rules]))


def _range_rules(col: Column, value: SparkColumn, config: ValidationConfig) -> list[tuple[SparkColumn, str]]:
    """The value rules of one column, applied to present, well-typed values (as in the pandas validator)."""
    from pyspark.sql import functions as F

    rules: list[tuple[SparkColumn, str]] = []
    present = value.isNotNull()
    if col.dtype == "timestamp":
        us = F.unix_micros(value)
        rules.append((present & ((us < F.lit(config.ts_min_us)) | (us >= F.lit(config.ts_max_us))),
                      f"{col.name}: timestamp out of range [{config.ts_min}, {config.ts_max})"))
        return rules
    if col.allowed is not None:
        rules.append((present & ~value.isin(*col.allowed), f"{col.name}: must be one of {list(col.allowed)}"))
    if col.min_value is None and col.max_value is None:
        return rules
    finite = ~(F.isnan(value) | (F.abs(value) == float("inf"))) if col.dtype == "float64" else F.lit(True)
    if col.dtype == "float64":
        rules.append((present & ~finite, f"{col.name}: must be finite"))
    if col.min_value is not None:
        if col.min_exclusive:
            rules.append((present & finite & (value <= col.min_value), f"{col.name}: must be > {col.min_value:g}"))
        else:
            rules.append((present & finite & (value < col.min_value), f"{col.name}: must be >= {col.min_value:g}"))
    if col.max_value is not None:
        rules.append((present & finite & (value > col.max_value), f"{col.name}: must be <= {col.max_value:g}"))
    return rules


def _cross_field_rules(spec: TableSpec, frame: DataFrame) -> DataFrame:
    from pyspark.sql import functions as F

    if spec.name == "events":
        return _append(frame, [((F.col("type") == "purchase") & F.col("price_paid").isNull(),
                                "price_paid: missing for a purchase")])
    if spec.name == "items":
        return _append(frame, [(F.col("list_price").isNotNull() & F.col("price").isNotNull()
                                & (F.col("list_price") < F.col("price")), "list_price: below price")])
    return frame


def _foreign_keys(spec: TableSpec, frame: DataFrame, valid: Mapping[str, DataFrame],
                  carry: Mapping[str, Mapping[str, str]]) -> DataFrame:
    """Unknown ids: a left join per foreign key against the referenced table's valid keys.

    ``carry`` maps a referenced table to columns to bring along (``{column: alias}``), so a
    lookup the caller needs anyway (an impression's item price) costs no second join.
    """
    from pyspark.sql import functions as F

    for fk in spec.foreign_keys:
        if fk.table not in valid or fk.table == "impressions":
            continue
        pk = TABLES[fk.table].primary_key
        marker = f"_known_{fk.column}"
        extra = [F.col(c).alias(alias) for c, alias in carry.get(fk.table, {}).items()]
        keys = valid[fk.table].select(F.col(pk).alias(fk.column), *extra).withColumn(marker, F.lit(True))
        frame = frame.join(keys, on=fk.column, how="left")
        frame = _append(frame, [(F.col(fk.column).isNotNull() & F.col(marker).isNull(),
                                 f"{fk.column}: unknown {fk.table[:-1]} id")]).drop(marker)
    return frame


def _events_vs_impressions(frame: DataFrame, impressions: DataFrame) -> DataFrame:
    """Unknown impression ids, events before their impression, and user/item mismatches.

    Only the impressions some event points at are joined (a semi-join on the events' ids
    first), so the large impressions table is scanned once and never shuffled whole.
    """
    from pyspark.sql import functions as F

    wanted = frame.select("impression_id").where(F.col("impression_id").isNotNull()).distinct()
    imp = (impressions.select("impression_id", F.col("ts").alias("_imp_ts"), F.col("user_id").alias("_imp_user"),
                              F.col("item_id").alias("_imp_item"))
           .join(wanted, "impression_id", "left_semi"))
    frame = frame.join(imp, "impression_id", "left")
    found = F.col("_imp_ts").isNotNull()
    frame = _append(frame, [
        (F.col("impression_id").isNotNull() & ~found, "impression_id: unknown impression id"),
        (found & F.col("ts").isNotNull() & (F.col("ts") < F.col("_imp_ts")), "ts: event before its impression"),
        (found & F.col("user_id").isNotNull() & (F.col("user_id") != F.col("_imp_user")),
         "user_id: differs from its impression's"),
        (found & F.col("item_id").isNotNull() & (F.col("item_id") != F.col("_imp_item")),
         "item_id: differs from its impression's"),
    ])
    return frame.drop("_imp_user", "_imp_item").withColumnRenamed("_imp_ts", "impression_ts")


def _duplicates(spec: TableSpec, frame: DataFrame, raw_keys: DataFrame | None) -> DataFrame:
    """Quarantine all but the first of each primary key among otherwise clean rows.

    Small tables rank rows in a window over the key. For large tables (``raw_keys`` given:
    the key column as read) that window would shuffle every full row, so the keys that occur
    more than once in the files are found first, reading that one column; usually there are
    none and nothing else happens, else only rows with those keys are ranked.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    pk = spec.primary_key
    order = [F.col(c).asc_nulls_first() for c in spec.column_names if c != pk]
    window = Window.partitionBy(pk, F.col(_REASONS) == "").orderBy(*order)
    rule = [((F.col(_REASONS) == "") & (F.col("_rn") > 1), f"{pk}: duplicate primary key")]
    if raw_keys is None:
        return _append(frame.withColumn("_rn", F.row_number().over(window)), rule).drop("_rn")
    counted = raw_keys.where(F.col(pk).isNotNull()).groupBy(pk).count().where(F.col("count") > 1).select(pk)
    # Counted in one job over every partition at once; collecting with a limit would scan the
    # aggregated partitions one job after another (~5 s of one idle core at 10M impressions).
    n_repeated = counted.count()
    if not n_repeated:  # the usual case: no second pass over the table
        return frame
    if n_repeated > _MAX_COLLECTED_DUPLICATES:  # a badly broken feed: rank every row
        return _append(frame.withColumn("_rn", F.row_number().over(window)), rule).drop("_rn")
    repeated = [r[0] for r in counted.collect()]
    is_dup = F.col(pk).isin(repeated)
    dups = _append(frame.filter(is_dup).withColumn("_rn", F.row_number().over(window)), rule).drop("_rn")
    return frame.filter(~is_dup | F.col(pk).isNull()).unionByName(dups)


_MAX_COLLECTED_DUPLICATES = 100_000


def flag_table(spark: SparkSession, root: str, name: str, *, config: ValidationConfig,
               valid: Mapping[str, DataFrame], carry: Mapping[str, Mapping[str, str]] | None = None) -> FlaggedTable:
    """Read and flag one contract table; ``valid`` holds the valid rows of the tables it references.

    A referenced table absent from ``valid`` is not checked against. ``carry`` names columns
    of referenced tables to add to the rows (``{table: {column: alias}}``; null where the id
    is unknown). For events, valid rows
    of ``impressions`` enable the impression rules, and valid events then carry
    ``impression_ts``, their impression's time.

    Raises
    ------
    ValueError
        If ``name`` is not a contract table.
    FileNotFoundError
        If the table's folder is missing.
    """
    if name not in TABLES:
        raise ValueError(f"table must be one of {list(TABLES)}, got {name!r}")
    spec = TABLES[name]
    frame, problems = read_contract_table(spark, root, name, config=config)
    frame = _foreign_keys(spec, frame, valid, carry or {})
    if name == "events" and "impressions" in valid:
        frame = _events_vs_impressions(frame, valid["impressions"])
    raw = spark.read.parquet(f"{root.rstrip('/')}/{name}")
    large = name in ("impressions", "events") and spec.primary_key in raw.columns
    raw_keys = raw.select(spec.primary_key) if large else None
    frame = _duplicates(spec, frame, raw_keys)
    return FlaggedTable(name=name, rows=frame, schema_problems=problems)


def flag_logs(spark: SparkSession, root: str, *, config: ValidationConfig,
              tables: tuple[str, ...] = TABLE_ORDER) -> dict[str, FlaggedTable]:
    """Read and flag the contract tables under ``root`` in dependency order, each foreign key
    checked against the valid rows of the table it references (as :func:`features.validation.validate_logs`).

    For notebooks and tests on small logs: each table's flagged rows are cached (so a child
    table does not recompute its parents); ``unpersist()`` them when done. The ETL instead
    writes each table once and reads it back.
    """
    flagged: dict[str, FlaggedTable] = {}
    valid: dict[str, DataFrame] = {}
    for name in TABLE_ORDER:
        if name not in tables:
            continue
        table = flag_table(spark, root, name, config=config, valid=valid)
        flagged[name] = FlaggedTable(name=name, rows=table.rows.cache(), schema_problems=table.schema_problems)
        valid[name] = flagged[name].valid
    return flagged
