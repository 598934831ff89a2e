"""Spark side of the event-log validator: split each contract table into valid and quarantined rows.

Every rule is derived from the same :class:`~features.contract.TableSpec` declarations that
drive the pandas validator (:mod:`features.validation`), and every reason reads exactly as
there (``"<column>: <reason>"``, joined by ``"; "``), so a row fails for the same reasons in
a notebook, in the stream consumer and in the ETL:

- files that cannot be read are set aside whole, with their reason, and the others go on;
  each file is read with the contract's types (:mod:`features.logfiles`: files that match the
  contract are read as they are, the others from converted copies), so a value that does not
  read as its column's type is a wrong type, and a column missing from a file is missing for
  that file's rows only ("column absent"),
- missing required fields (null),
- values out of range, values outside the allowed set, timestamps outside the window,
- cross-field rules (a purchase without a price, a list price below the price),
- unknown ids (foreign keys not among the *valid* rows of the referenced table),
- an event before its impression, or for another user or item than its impression,
- duplicate primary keys: among rows passing every other rule the first one is kept; "first"
  is the smallest row in the order of all contract columns, so the choice does not depend on
  how files are split across tasks.

Quarantined rows keep their contract columns (as read), the name of the file they came from
and the reason; for a column whose file type differed, the original value as text too.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from features.config import ValidationConfig
from features.contract import TABLE_ORDER, TABLES, Column, TableSpec, spark_schema
from features.logfiles import SchemaProblem, TableFiles, scan_table, write_converted
from features.validation import RAW_PREFIX, REASON_COLUMN, SOURCE_FILE_COLUMN

if TYPE_CHECKING:
    from pyspark.sql import Column as SparkColumn
    from pyspark.sql import DataFrame, SparkSession

__all__ = ["SOURCE_FILE_COLUMN", "FlaggedTable", "SchemaProblem", "flag_logs", "flag_table", "read_contract_table"]

logger = logging.getLogger(__name__)

_REASONS = "_reasons"


@dataclass(frozen=True)
class FlaggedTable:
    """One contract table with every row's quarantine reasons ("" when the row is valid).

    Attributes
    ----------
    name : str
    rows : pyspark.sql.DataFrame
        Contract columns, ``source_file``, raw text of mistyped columns, ``_reasons``.
    files : TableFiles
        The table's files: which were read, which were set aside and why.
    """

    name: str
    rows: DataFrame
    files: TableFiles

    @property
    def schema_problems(self) -> tuple[SchemaProblem, ...]:
        return self.files.schema_problems()

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

        extra = sorted(c for c in self.rows.columns if c.startswith(RAW_PREFIX))
        return (self.rows.filter(F.col(_REASONS) != "")
                .select(*TABLES[self.name].column_names, SOURCE_FILE_COLUMN, *extra,
                        F.col(_REASONS).alias(REASON_COLUMN)))


def _read_files(spark: SparkSession, files: TableFiles, work: str) -> DataFrame:
    """The rows of every readable file with the contract's columns and types, ``source_file`` and ``raw_*``."""
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    contract = spark_schema(files.table)
    nullable = T.StructType([T.StructField(f.name, f.dataType, True) for f in contract.fields])
    names = list(contract.fieldNames())
    parts: list[DataFrame] = []
    by_depth: dict[int, list[str]] = {}
    for f in files.conforming:
        by_depth.setdefault(f.name.count("/") + 1, []).append(files.path(f))
    for depth, paths in sorted(by_depth.items()):
        # the name below the table's folder: the last ``depth`` parts of the file's URI, decoded
        # ("+" is a literal plus in a URI, a space to url_decode)
        uri = F.url_decode(F.regexp_replace(F.col("_metadata.file_path"), r"\+", "%2B"))
        name = F.array_join(F.slice(F.split(uri, "/"), -depth, depth), "/")
        parts.append(spark.read.schema(nullable).parquet(*paths).select(*names, name.alias(SOURCE_FILE_COLUMN)))
    folder, raw = write_converted(files, f"{work.rstrip('/')}/{files.table}")
    if len(files.conforming) < len(files.readable):
        schema = T.StructType([*nullable.fields, *[T.StructField(f"{RAW_PREFIX}{c}", T.StringType()) for c in raw],
                               T.StructField(SOURCE_FILE_COLUMN, T.StringType())])
        parts.append(spark.read.schema(schema).parquet(folder))
    if not parts:
        return spark.createDataFrame([], T.StructType([*nullable.fields,
                                                       T.StructField(SOURCE_FILE_COLUMN, T.StringType())]))
    return functools.reduce(lambda a, b: a.unionByName(b, allowMissingColumns=True), parts)


def read_contract_table(spark: SparkSession, root: str, table: str, *, config: ValidationConfig,
                        work: str) -> tuple[DataFrame, TableFiles]:
    """Read ``<root>/<table>`` file by file with the contract's types and flag each row's column rules.

    Parameters
    ----------
    work : str
        A scratch folder for converted copies of files whose columns have other types.

    Returns
    -------
    (DataFrame, TableFiles)
        The rows (contract columns, ``source_file``, ``raw_<col>`` text where a file's type
        differed, and ``_reasons`` holding the per-column reasons), and the table's files.

    Raises
    ------
    FileNotFoundError
        If the table's folder does not exist or holds no files.
    """
    from pyspark.sql import functions as F

    spec: TableSpec = TABLES[table]
    files = scan_table(root, table)
    rows = _read_files(spark, files, work)
    absent = files.absent()
    rules: list[tuple[SparkColumn, str]] = []
    for col in spec.columns:
        value = F.col(col.name)
        raw = f"{RAW_PREFIX}{col.name}"
        bad_type = (F.col(raw).isNotNull() & value.isNull()) if raw in rows.columns else F.lit(False)
        rules.append((bad_type, f"{col.name}: wrong type, expected {col.dtype}"))
        if col.required:
            lacking = F.col(SOURCE_FILE_COLUMN).isin(*absent[col.name]) if col.name in absent else F.lit(False)
            rules.append((value.isNull() & lacking, f"{col.name}: missing required field (column absent)"))
            rules.append((value.isNull() & ~bad_type & ~lacking, f"{col.name}: missing required field"))
        rules.extend(_range_rules(col, value, config))
    frame = _cross_field_rules(spec, rows.withColumn(_REASONS, _join_reasons(rules)))
    for p in files.schema_problems():
        logger.warning("schema: table %s column %s: expected %s, found %s in %d file(s): %s", p.table, p.column,
                       p.expected, p.found, len(p.files), ", ".join(p.files[:5]) + (" ..." if len(p.files) > 5 else ""))
    return frame, files


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
               valid: Mapping[str, DataFrame], work: str,
               carry: Mapping[str, Mapping[str, str]] | None = None) -> FlaggedTable:
    """Read and flag one contract table; ``valid`` holds the valid rows of the tables it references.

    ``work`` is a scratch folder (converted copies of files whose columns have other types).

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
    read, files = read_contract_table(spark, root, name, config=config, work=work)
    frame = _foreign_keys(spec, read, valid, carry or {})
    if name == "events" and "impressions" in valid:
        frame = _events_vs_impressions(frame, valid["impressions"])
    raw_keys = read.select(spec.primary_key) if name in ("impressions", "events") else None
    frame = _duplicates(spec, frame, raw_keys)
    return FlaggedTable(name=name, rows=frame, files=files)


def flag_logs(spark: SparkSession, root: str, *, config: ValidationConfig, work: str,
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
        table = flag_table(spark, root, name, config=config, valid=valid, work=work)
        flagged[name] = FlaggedTable(name=name, rows=table.rows.cache(), files=table.files)
        valid[name] = flagged[name].valid
    return flagged
