"""The Spark ETL: event-log contract tables in, leakage-safe training rows and feature tables out.

Run it as ``feedrank etl LOGS --out DIR``, as ``python -m features.etl LOGS DIR`` or, on a
cluster, as ``spark-submit --py-files features.zip features/etl.py LOGS DIR`` (the submitter's
``--master`` and memory settings win over the config's ``local[*]`` defaults).

Stages (each logs its counts and rate; long Spark stages log task progress periodically):

1. **Validate** every table with the contract's rules (:mod:`features.quarantine`); each
   table is written once to a work folder split into valid and quarantined rows, so no
   row is dropped silently. Impressions are enriched with their item's seller, category,
   price and margin on the way.
2. **Attribute** linked events to impressions and grade labels (:mod:`features.labels`).
3. **Aggregate** daily snapshots of user, item and seller features and the user's intraday
   rows (:mod:`features.aggregates`, whose docstring explains how leakage is prevented).
4. **Assemble** each output day: the day's impressions joined to their labels, to the
   snapshots of that day and to the intraday row each request sees; request-time
   features come from :func:`features.derived.derived_features`, the function serving
   calls; negatives are downsampled by a hash of the impression id (deterministic), with
   ``sample_weight`` = 1 / keep rate.
5. **Check** (:mod:`features.checks`) and **publish**: every output day is written to a
   staging folder, measured, checked, and only then moved over the old day, one rename
   per partition. A failed check publishes nothing and raises :class:`DataCheckError`.

Rows are sorted by ``(ts, impression_id)`` (training) or by entity id (feature tables),
one file per day, with stable file names: the same input gives byte-identical output.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from features.aggregates import (
    DAY_US,
    SnapshotRange,
    daily_item,
    daily_user,
    day_of,
    item_snapshots,
    realtime_state,
    seller_snapshots,
    user_snapshots,
)
from features.checks import (
    CheckReport,
    DataCheckError,
    check_freshness,
    check_null_rates,
    check_quarantine,
    check_schema,
    check_volume,
)
from features.config import FeaturesConfig, parse_utc
from features.contract import TABLE_ORDER, TABLES
from features.derived import (
    DERIVED_FEATURES,
    ITEM_INPUTS,
    REALTIME_INPUTS,
    REQUEST_INPUTS,
    derived_features,
    user_inputs,
)
from features.labels import attribute, graded_label
from features.outputs import (
    FEATURE_SOURCES,
    KEY_COLUMNS,
    TRAINING_BASE,
    OutputLayout,
    item_feature_names,
    seller_feature_names,
    training_schema,
    user_aux_names,
    user_feature_names,
)
from features.quarantine import SOURCE_FILE_COLUMN, flag_table
from features.spark import HadoopFiles, build_spark, progress, publish_partitions
from features.validation import REASON_COLUMN

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

__all__ = ["EtlReport", "FeatureEtl", "main"]

logger = logging.getLogger(__name__)
LAYOUT = OutputLayout()


@dataclass
class EtlReport:
    """What one ETL run read, quarantined, wrote and checked (written as JSON under ``_reports/``)."""

    run_id: str
    logs_dir: str
    out_dir: str
    status: str = "running"
    dates: list[str] = field(default_factory=list)
    tables: dict[str, dict[str, Any]] = field(default_factory=dict)
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    checks: dict[str, Any] = field(default_factory=dict)
    stage_seconds: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    impressions: int = 0
    error: str = ""

    @property
    def impressions_per_second(self) -> float:
        return self.impressions / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> str:
        data = asdict(self)
        data["impressions_per_second"] = round(self.impressions_per_second, 1)
        return json.dumps(data, indent=2, sort_keys=True, default=str)


def _date_str(day: int) -> str:
    return (date(1970, 1, 1) + timedelta(days=day)).isoformat()


def _day_of_date(value: str) -> int:
    return (date.fromisoformat(value) - date(1970, 1, 1)).days


class FeatureEtl:
    """The ETL job. Construct with the ``features`` config section; :meth:`run` does the work.

    Parameters
    ----------
    config : FeaturesConfig
    """

    def __init__(self, config: FeaturesConfig) -> None:
        self.config = config

    # ------------------------------------------------------------------ entry point
    def run(self, spark: SparkSession, logs_dir: str, out_dir: str, *, start_date: str | None = None,
            end_date: str | None = None) -> EtlReport:
        """Build and publish every output day in ``[start_date, end_date]`` (default: all impression days).

        History before ``start_date`` is always read (features look back up to the longest
        window); days outside the range are left as they are in ``out_dir``.

        Raises
        ------
        DataCheckError
            If a data check fails; nothing is published and the report is still written.
        FileNotFoundError
            If a contract table is missing under ``logs_dir``.
        ValueError
            If the date range is empty or malformed.
        """
        for name, value in (("start_date", start_date), ("end_date", end_date)):
            if value is not None:
                try:
                    date.fromisoformat(value)
                except ValueError:
                    raise ValueError(f"{name} must be YYYY-MM-DD, got {value!r}") from None
        out = out_dir.rstrip("/")
        run_id = datetime.now(UTC).strftime("%Y%m%dT%H%M%S") + f"-{os.getpid()}"
        report = EtlReport(run_id=run_id, logs_dir=logs_dir, out_dir=out)
        files = HadoopFiles(spark)
        staging = f"{out}/_staging-{run_id}"
        start = time.perf_counter()
        try:
            self._run(spark, files, logs_dir.rstrip("/"), out, staging, report, start_date, end_date)
            report.status = "ok"
        except DataCheckError as exc:
            report.status = "failed checks"
            report.error = str(exc)
            raise
        except Exception as exc:
            report.status = "error"
            report.error = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            report.seconds = time.perf_counter() - start
            files.delete(staging)
            self._write_report(files, out, report)
        return report

    # ------------------------------------------------------------------ stages
    def _run(self, spark: SparkSession, files: HadoopFiles, logs: str, out: str, staging: str, report: EtlReport,
             start_date: str | None, end_date: str | None) -> None:
        from pyspark.sql import functions as F

        cfg = self.config
        work = f"{staging}/_work"
        every = cfg.spark.progress_seconds
        stage_start = time.perf_counter()

        def done(stage: str, rows: int | None = None) -> None:
            nonlocal stage_start
            secs = time.perf_counter() - stage_start
            report.stage_seconds[stage] = round(secs, 2)
            rate = f" ({rows / secs:,.0f} rows/s)" if rows and secs > 0 else ""
            logger.info("stage %s done in %.1f s%s", stage, secs, f": {rows:,} rows{rate}" if rows else "")
            stage_start = time.perf_counter()

        # 1. validate --------------------------------------------------------------
        with progress(spark, every, "validate"):
            valid = self._validate(spark, files, logs, work, staging, report)
        imps, events = valid["impressions"], valid["events"]
        n_imps = report.tables["impressions"]["valid"]
        report.impressions = n_imps
        done("validate", sum(t["input"] for t in report.tables.values()))

        day_counts = {r["date"]: int(r["count"]) for r in imps.groupBy("date").count().collect()}
        if not day_counts:
            raise ValueError(f"no valid impressions under {logs}: nothing to build")
        days_present = sorted(_day_of_date(d) for d in day_counts)
        lo = _day_of_date(start_date) if start_date else days_present[0]
        hi = _day_of_date(end_date) if end_date else days_present[-1]
        days = [d for d in days_present if lo <= d <= hi]
        if not days:
            raise ValueError(f"no impression days in [{start_date}, {end_date}]; the log has "
                             f"{_date_str(days_present[0])}..{_date_str(days_present[-1])}")
        snap_last = days[-1] + 1 if days[-1] == days_present[-1] else days[-1]
        snaps = SnapshotRange(days[0], snap_last)
        snap_dates = [_date_str(d) for d in snaps.days]
        report.dates = [_date_str(d) for d in days]
        newest_us: dict[str, int | None] = {}
        for name, frame in (("impressions", imps), ("events", events)):
            value = frame.agg(F.max("ts_us")).collect()[0][0]
            newest_us[name] = int(value) if value is not None else None
        log_end_us = (int(parse_utc(cfg.etl.log_end, "log_end").timestamp() * 1e6) if cfg.etl.log_end
                      else max(v for v in newest_us.values() if v is not None) + 1)
        logger.info("building %d day(s) %s..%s; snapshots %s..%s; log ends %s", len(days), report.dates[0],
                    report.dates[-1], snap_dates[0], snap_dates[-1],
                    datetime.fromtimestamp(log_end_us / 1e6, UTC).isoformat())

        # 2. labels ------------------------------------------------------------------
        with progress(spark, every, "labels"):
            attribute(events, cfg.etl).write.mode("overwrite").parquet(f"{work}/labels")
            n_labelled = spark.read.parquet(f"{work}/labels").count()
        done("labels", n_labelled)

        # 3. snapshots and intraday rows -------------------------------------------
        with progress(spark, every, "aggregate"):
            self._aggregate(spark, valid, snaps, days, staging, work)
        sizes: dict[str, dict[str, int]] = {}
        for name, path in ((LAYOUT.user_features, staging), (LAYOUT.item_features, staging),
                           (LAYOUT.seller_features, staging), (LAYOUT.user_realtime, staging), ("rt_seen", work)):
            counts = spark.read.parquet(f"{path}/{name}").groupBy("date").count().collect()
            sizes[name] = {r["date"]: int(r["count"]) for r in sorted(counts, key=lambda r: r["date"])}
            if name != "rt_seen":
                report.outputs[name] = sizes[name]
        sizes["labels"] = {"all": n_labelled}
        done("aggregate")

        # 4. assemble the days, in batches whose snapshot rows fit the broadcast budget ------
        per_day: dict[str, dict[str, Any]] = {}
        nulls: dict[str, int] = {}
        batches = self._batches([_date_str(d) for d in days], sizes)
        done_imps = 0
        lock = threading.Lock()

        def assemble(numbered: tuple[int, list[str]]) -> None:
            nonlocal done_imps
            i, batch = numbered
            t0 = time.perf_counter()
            with progress(spark, every, f"assemble {batch[0]}..{batch[-1]}"):
                stats = self._assemble(spark, files, i, batch, staging, work, log_end_us, sizes)
            n = sum(day_counts[d] for d in batch)
            with lock:
                for day in batch:
                    day_stats = stats[day]
                    for k, v in day_stats.pop("nulls").items():
                        nulls[k] = nulls.get(k, 0) + v
                    day_stats["impressions"] = day_counts[day]
                    per_day[day] = day_stats
                done_imps += n
                secs = time.perf_counter() - t0
                logger.info("batch %d/%d (%s..%s): %s impressions -> %s training rows in %.1f s (%s impressions/s); "
                            "%s of %s impressions done", i, len(batches), batch[0], batch[-1], f"{n:,}",
                            f"{sum(per_day[d]['rows'] for d in batch):,}", secs, f"{n / max(secs, 1e-9):,.0f}",
                            f"{done_imps:,}", f"{n_imps:,}")

        # Two batches at a time: a batch ends in one task per day (sort and write of that day's
        # single file), so a second batch keeps the other core busy.
        with ThreadPoolExecutor(max_workers=min(2, len(batches))) as pool:
            list(pool.map(assemble, enumerate(batches, 1)))
        files.tidy(f"{staging}/{LAYOUT.training}")
        for name in (LAYOUT.user_features, LAYOUT.item_features, LAYOUT.seller_features, LAYOUT.user_realtime):
            files.tidy(f"{staging}/{name}")
        report.outputs["training"] = per_day
        done("assemble", n_imps)

        # 5. check, then publish ------------------------------------------------------
        checks = self._checks(spark, files, out, staging, report, per_day, nulls, newest_us)
        report.checks = checks.to_dict()
        logger.info("%s", checks.to_text(failures_only=True))
        checks.raise_for_failures()
        for name in LAYOUT.partitioned:
            parts = snap_dates if name in (LAYOUT.user_features, LAYOUT.item_features, LAYOUT.seller_features) \
                else report.dates
            publish_partitions(files, f"{staging}/{name}", f"{out}/{name}", [f"date={p}" for p in parts])
        files.delete(f"{out}/{LAYOUT.quarantine}")
        if files.exists(f"{staging}/{LAYOUT.quarantine}"):
            files.rename(f"{staging}/{LAYOUT.quarantine}", f"{out}/{LAYOUT.quarantine}")
        done("publish")

    def _validate(self, spark: SparkSession, files: HadoopFiles, logs: str, work: str, staging: str,
                  report: EtlReport) -> dict[str, DataFrame]:
        """Flag every table, write valid/quarantined rows once, and return the valid rows (read back)."""
        from pyspark.sql import functions as F

        cfg = self.config
        valid: dict[str, DataFrame] = {}
        item_columns = {"seller_id": "seller_id", "category_id": "category_id", "price": "item_price"}
        carry = {"impressions": {"items": {**item_columns, "margin_rate": "margin_rate"}},
                 "events": {"items": item_columns}}
        for name in TABLE_ORDER:
            table = flag_table(spark, logs, name, config=cfg.validation, valid=valid, carry=carry.get(name))
            rows = table.rows.withColumn("_ok", F.when(F.col("_reasons") == "", "true").otherwise("false"))
            partition_by = ["_ok"]
            if name in ("impressions", "events"):
                rows = rows.withColumn("ts_us", F.unix_micros("ts")).withColumn("day", day_of(F.col("ts_us")))
            if name == "impressions":
                # One file per day, sorted by (ts, impression_id): every later read of a day keeps
                # this order, so the training rows come out sorted without another shuffle.
                rows = (rows.withColumn("date", F.date_format("ts", "yyyy-MM-dd"))
                        .repartition("date").sortWithinPartitions("date", "_ok", "ts", "impression_id"))
                partition_by = ["_ok", "date"]
            path = f"{work}/{name}"
            rows.write.mode("overwrite").partitionBy(*partition_by).parquet(path)
            frame = spark.read.parquet(path)
            counts = {r["_ok"]: int(r["count"]) for r in frame.groupBy("_ok").count().collect()}
            n_ok, n_bad = counts.get("true", 0), counts.get("false", 0)
            if n_ok == 0:
                raise ValueError(f"table {name}: no valid rows under {logs}/{name} "
                                 f"({n_bad:,} rows, all quarantined)")
            ok = frame.filter(F.col("_ok") == "true").drop("_ok")
            if name in ("sellers", "users", "items"):
                ok = ok.cache()
            reasons: dict[str, int] = {}
            if n_bad:
                bad = frame.filter(F.col("_ok") == "false")
                (bad.select(*TABLES[name].column_names, SOURCE_FILE_COLUMN,
                            *sorted(c for c in bad.columns if c.startswith("raw_")),
                            F.col("_reasons").alias(REASON_COLUMN))
                 .repartition(1).sortWithinPartitions(TABLES[name].primary_key, SOURCE_FILE_COLUMN, REASON_COLUMN)
                 .write.mode("overwrite").parquet(f"{staging}/{LAYOUT.quarantine}/{name}"))
                counted = bad.select(F.explode(F.split("_reasons", "; ")).alias("r")).groupBy("r").count().collect()
                reasons = dict(sorted(((r["r"], int(r["count"])) for r in counted), key=lambda kv: (-kv[1], kv[0])))
            report.tables[name] = {"input": n_ok + n_bad, "valid": n_ok, "quarantined": n_bad, "reasons": reasons,
                                   "schema_problems": [asdict(p) for p in table.schema_problems]}
            logger.info("validated %s: %s rows, %s quarantined", name, f"{n_ok + n_bad:,}", f"{n_bad:,}")
            valid[name] = ok
        files.tidy(f"{staging}/{LAYOUT.quarantine}")
        return valid

    def _aggregate(self, spark: SparkSession, valid: dict[str, DataFrame], snaps: SnapshotRange, days: list[int],
                   staging: str, work: str) -> None:
        from pyspark.sql import functions as F

        cfg = self.config.etl
        imps, events = valid["impressions"], valid["events"]
        daily_u = daily_user(imps, events).cache()
        daily_i = daily_item(imps, events).cache()
        tables = {
            LAYOUT.user_features: ("user_id", user_snapshots(valid["users"], daily_u, events, snaps, cfg),
                                   user_feature_names(cfg) + user_aux_names(cfg)),
            LAYOUT.item_features: ("item_id", item_snapshots(valid["items"], valid["sellers"], daily_i, snaps, cfg),
                                   item_feature_names(cfg) + ("item_category_id", "item_seller_id",
                                                              "item_created_us")),
            LAYOUT.seller_features: ("seller_id", seller_snapshots(valid["sellers"], valid["items"], daily_i, snaps,
                                                                   cfg), seller_feature_names(cfg)),
        }
        for name, (key, frame, columns) in tables.items():
            spark.sparkContext.setJobDescription(f"aggregate: {name}")
            (frame.select(key, F.timestamp_micros(F.col("snap").cast("long") * F.lit(DAY_US)).alias("event_timestamp"),
                          *columns, F.date_format(F.timestamp_micros(F.col("snap").cast("long") * F.lit(DAY_US)),
                                                  "yyyy-MM-dd").alias("date"))
             .repartition("date").sortWithinPartitions("date", key)
             .write.mode("overwrite").partitionBy("date").parquet(f"{staging}/{name}"))
            logger.info("wrote %s for %d snapshot day(s)", name, len(snaps.days))
        daily_u.unpersist()
        daily_i.unpersist()

        spark.sparkContext.setJobDescription(f"aggregate: {LAYOUT.user_realtime}")
        rows, seen = realtime_state(imps, events, cfg)
        wanted = [_date_str(d) for d in days]
        event_ts = F.timestamp_micros(F.col("ts_us") + 1)
        (rows.select("user_id", event_ts.alias("event_timestamp"), *REALTIME_INPUTS,
                     F.date_format(event_ts, "yyyy-MM-dd").alias("date"))
         .filter(F.col("date").isin(wanted))
         .repartition("date").sortWithinPartitions("date", "user_id", "event_timestamp")
         .write.mode("overwrite").partitionBy("date").parquet(f"{staging}/{LAYOUT.user_realtime}"))
        (seen.withColumn("date", F.date_format(F.timestamp_micros("ts_us"), "yyyy-MM-dd"))
         .filter(F.col("date").isin(wanted))
         .write.mode("overwrite").partitionBy("date").parquet(f"{work}/rt_seen"))
        logger.info("wrote %s", LAYOUT.user_realtime)

    def _batches(self, dates: list[str], sizes: dict[str, dict[str, int]]) -> list[list[str]]:
        """Group consecutive days so that each table's rows over a batch fit the broadcast budget.

        Small logs are assembled in one pass (one Spark job); large ones a day at a time, each
        day's snapshot tables broadcast to its impressions so they are never shuffled.
        """
        limit = self.config.spark.broadcast_threshold_mb * 2**20
        width = {LAYOUT.user_features: 80, LAYOUT.item_features: 40, LAYOUT.seller_features: 8, "rt_seen": 10}
        batches: list[list[str]] = []
        used: dict[str, int] = {}
        for day in dates:
            need = {name: sizes[name].get(day, 0) * cols * 8 for name, cols in width.items()}
            if batches and all(used[n] + need[n] <= limit for n in need):
                batches[-1].append(day)
                used = {n: used[n] + need[n] for n in need}
            else:
                batches.append([day])
                used = need
        return batches

    def _assemble(self, spark: SparkSession, files: HadoopFiles, number: int, batch: list[str], staging: str,
                  work: str, log_end_us: int, sizes: dict[str, dict[str, int]]) -> dict[str, dict[str, Any]]:
        """Write the training rows of the days in ``batch``; return per-day row, positive and null counts."""
        from pyspark.sql import functions as F

        cfg = self.config.etl
        in_batch = F.col("date").isin(batch)
        imps = spark.read.parquet(f"{work}/impressions").filter((F.col("_ok") == "true") & in_batch).drop("_ok")

        broadcast_all = True

        def table(path: str, name: str, filtered: bool = True) -> DataFrame:
            nonlocal broadcast_all
            frame = spark.read.parquet(f"{path}/{name}")
            frame = frame.filter(in_batch).drop("event_timestamp") if filtered else frame
            rows = sum(sizes[name].get(d, 0) for d in batch) if filtered else sizes[name]["all"]
            hinted = self._maybe_broadcast(frame, rows)
            broadcast_all = broadcast_all and hinted is not frame
            return hinted

        seen = table(work, "rt_seen")
        users = table(staging, LAYOUT.user_features)
        items = table(staging, LAYOUT.item_features)
        sellers = table(staging, LAYOUT.seller_features)
        rows = imps.join(table(work, "labels", filtered=False), "impression_id", "left")
        for flag in ("clicked", "carted", "purchased_24h", "purchased_7d"):
            rows = rows.withColumn(flag, F.coalesce(F.col(flag), F.lit(False)))
        rows = (rows.withColumn("gmv_7d", F.coalesce(F.col("gmv_7d"), F.lit(0.0)))
                .withColumn("label", graded_label(F.col("clicked"), F.col("carted"), F.col("purchased_7d")))
                .withColumn("label_complete",
                            F.col("ts_us") + F.lit(int(cfg.purchase_days * DAY_US)) <= F.lit(log_end_us)))
        rate = cfg.negative_keep_rate
        if rate < 1.0:
            u = F.pmod(F.xxhash64(F.col("impression_id"), F.lit(cfg.sample_seed)), F.lit(1 << 30)) / float(1 << 30)
            rows = rows.filter((F.col("label") > 0) | (u < F.lit(rate)))
        rows = rows.withColumn("sample_weight", F.when(F.col("label") > 0, F.lit(1.0)).otherwise(F.lit(1.0 / rate)))
        rows = (rows.join(seen, ["user_id", "ts_us", "date"], "left")
                .join(users, ["user_id", "date"], "left")
                .join(items, ["item_id", "date"], "left")
                .join(sellers, ["seller_id", "date"], "left"))
        inputs = list(dict.fromkeys(REQUEST_INPUTS + REALTIME_INPUTS + ITEM_INPUTS
                                    + user_inputs(cfg.top_categories, cfg.top_sellers, cfg.top_items)))
        rows = rows.withColumn("_derived", _derived_udf(inputs)(*[F.col(c) for c in inputs]))
        base = [F.col("item_price" if name == "price" else name).cast(_SPARK_TYPES[str(t)]).alias(name)
                for name, t, _ in TRAINING_BASE]
        features = [F.col(c).cast("double") for c in user_feature_names(cfg) + item_feature_names(cfg)
                    + seller_feature_names(cfg)]
        features += [F.col(f"_derived.{c}").alias(c) for c in DERIVED_FEATURES]
        # Each batch writes its own folder (concurrent jobs must not share a commit folder),
        # then its days move under training/.
        # With every lookup table broadcast, each task streams one day's sorted work file through
        # order-keeping operators (broadcast joins, filter, the Python UDF), so no shuffle is
        # needed; the sort within the task on the full key is still spelled out: the writer sorts
        # by ``date`` anyway, and that sort is not stable once it spills to disk (a big day).
        # Otherwise Spark's joins reorder rows across tasks, and a shuffle by day regroups them.
        scratch = f"{work}/training-{number}"
        out = rows.select(*base, *features, "date")
        if not broadcast_all:
            out = out.repartition("date")
        out = out.sortWithinPartitions("date", "ts", "impression_id")
        out.write.mode("overwrite").partitionBy("date").parquet(scratch)
        target = f"{staging}/{LAYOUT.training}"
        files.mkdirs(target)
        for day in batch:
            if files.exists(f"{scratch}/date={day}"):
                files.rename(f"{scratch}/date={day}", f"{target}/date={day}")
        return {day: self._day_stats(spark, f"{target}/date={day}") for day in batch}

    @staticmethod
    def _day_stats(spark: SparkSession, folder: str) -> dict[str, Any]:
        """Rows, positives and per-column null counts of one written day.

        Null counts of a local folder come from the Parquet footers (no data is read);
        elsewhere Spark counts them.
        """
        from pyspark.sql import functions as F

        local = "://" not in folder or folder.startswith("file:")
        path = Path(folder.removeprefix("file:"))
        if local and not path.is_dir():
            return {"rows": 0, "positives": 0, "nulls": {}}
        if local:
            import pyarrow.compute as pc
            import pyarrow.parquet as pq

            rows, positives = 0, 0
            nulls: dict[str, int] = {}
            for file in sorted(path.glob("*.parquet")):
                meta = pq.ParquetFile(file)
                rows += meta.metadata.num_rows
                labels = meta.read(columns=["label"])["label"]
                positives += int(pc.sum(pc.greater(labels, 0)).as_py() or 0)
                for g in range(meta.metadata.num_row_groups):
                    group = meta.metadata.row_group(g)
                    for c in range(group.num_columns):
                        chunk = group.column(c)
                        stats = chunk.statistics
                        name = chunk.path_in_schema
                        if stats is None or not stats.has_null_count:
                            column = meta.read_row_group(g, columns=[name])[name]
                            count = column.null_count
                        else:
                            count = stats.null_count
                        nulls[name] = nulls.get(name, 0) + int(count)
            return {"rows": rows, "positives": positives, "nulls": nulls}
        if not HadoopFiles(spark).exists(folder):
            return {"rows": 0, "positives": 0, "nulls": {}}
        written = spark.read.parquet(folder)
        aggs = [F.count(F.lit(1)).alias("_rows"), F.sum((F.col("label") > 0).cast("long")).alias("_pos")]
        aggs += [F.sum(F.col(c).isNull().cast("long")).alias(c) for c in written.columns]
        stats_row = written.agg(*aggs).collect()[0].asDict()
        return {"rows": int(stats_row.pop("_rows")), "positives": int(stats_row.pop("_pos") or 0),
                "nulls": {k: int(v or 0) for k, v in stats_row.items()}}

    def _maybe_broadcast(self, frame: DataFrame, rows: int) -> DataFrame:
        """Broadcast a per-day table of ``rows`` rows when its estimated size is under the threshold."""
        from pyspark.sql import functions as F

        limit = self.config.spark.broadcast_threshold_mb * 2**20
        return F.broadcast(frame) if 0 < limit and rows * len(frame.columns) * 8 <= limit else frame

    def _checks(self, spark: SparkSession, files: HadoopFiles, out: str, staging: str, report: EtlReport,
                per_day: dict[str, dict[str, Any]], nulls: dict[str, int],
                newest_us: dict[str, int | None]) -> CheckReport:
        from pyspark.sql.pandas.types import to_arrow_schema

        cfg = self.config
        checks_cfg = cfg.checks
        source = files.read_text(f"{report.logs_dir}/_source.json")
        unlogged = set(json.loads(source).get("unlogged_columns", [])) if source else set()
        exempt = tuple(f for f, column in FEATURE_SOURCES.items() if column in unlogged)
        if exempt:
            logger.info("null-rate check skips %s: the source does not log %s", exempt,
                        sorted(FEATURE_SOURCES[f] for f in exempt))
            checks_cfg = replace(checks_cfg, null_rate_ignore=tuple(checks_cfg.null_rate_ignore) + exempt)
        checks = CheckReport()
        for name, stats in report.tables.items():
            checks = checks + check_quarantine(name, stats["input"], stats["quarantined"], checks_cfg)
        written = spark.read.parquet(f"{staging}/{LAYOUT.training}")
        found = to_arrow_schema(written.schema, timezone="UTC")
        checks = checks + check_schema(LAYOUT.training, found, training_schema(cfg.etl))
        rows = sum(s["rows"] for s in per_day.values())
        checks = checks + check_null_rates(LAYOUT.training, rows, nulls, checks_cfg, required=KEY_COLUMNS)
        previous = self._previous_report(files, out)
        prev_counts = ({d: s["impressions"] for d, s in previous.get("outputs", {}).get("training", {}).items()}
                       if previous else None)
        checks = checks + check_volume(LAYOUT.training, {d: s["impressions"] for d, s in per_day.items()},
                                       prev_counts, checks_cfg)
        checks = checks + check_freshness(newest_us, checks_cfg)
        return checks

    @staticmethod
    def _previous_report(files: HadoopFiles, out: str) -> dict[str, Any] | None:
        text = files.read_text(f"{out}/{LAYOUT.reports}/latest.json")
        return json.loads(text) if text else None

    @staticmethod
    def _write_report(files: HadoopFiles, out: str, report: EtlReport) -> None:
        text = report.to_json()
        files.mkdirs(f"{out}/{LAYOUT.reports}")
        files.write_text(f"{out}/{LAYOUT.reports}/etl-{report.run_id}.json", text)
        if report.status == "ok":
            files.write_text(f"{out}/{LAYOUT.reports}/latest.json", text)
        logger.info("report: %s/%s/etl-%s.json (%s)", out, LAYOUT.reports, report.run_id, report.status)


_SPARK_TYPES = {"int64": "long", "int32": "int", "double": "double", "bool": "boolean", "string": "string",
                "timestamp[us, tz=UTC]": "timestamp"}


def _derived_udf(names: Sequence[str]):
    """The request-time features as a pandas UDF over the input columns ``names``.

    Only these columns travel to the Python workers, each as its own Arrow column (a
    struct argument costs ~3x more to convert); the UDF rebuilds the frame and calls
    :func:`features.derived.derived_features`, the function serving calls.
    """
    from pyspark.sql import types as T
    from pyspark.sql.functions import pandas_udf

    columns = tuple(names)
    schema = T.StructType([T.StructField(c, T.DoubleType(), True) for c in DERIVED_FEATURES])

    def derived(*values):  # no annotations: one pd.Series per input column, a DataFrame back
        return derived_features(pd.DataFrame(dict(zip(columns, values, strict=True)))).reset_index(drop=True)

    return pandas_udf(derived, schema)  # type: ignore[call-overload]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point for ``python -m features.etl`` and ``spark-submit features/etl.py``.

    Reads the configuration from ``--config`` (same YAML shape as ``infra/defaults.yaml``,
    ``features`` section only) without importing the infra layer.
    """
    parser = argparse.ArgumentParser(prog="features.etl", description=__doc__.splitlines()[0])
    parser.add_argument("logs", help="folder of the contract tables")
    parser.add_argument("out", help="output folder")
    parser.add_argument("--config", help="YAML file with a features: section")
    parser.add_argument("--start-date", help="first impression day to (re)build, YYYY-MM-DD")
    parser.add_argument("--end-date", help="last impression day to (re)build, YYYY-MM-DD")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = FeaturesConfig()
    if args.config:
        config = features_config_from_yaml(args.config)
    spark = build_spark(config.spark)
    try:
        report = FeatureEtl(config).run(spark, args.logs, args.out, start_date=args.start_date,
                                        end_date=args.end_date)
    except DataCheckError as exc:
        logger.error("%s", exc)
        return 1
    logger.info("done: %s impressions in %.1f s (%s/s)", f"{report.impressions:,}", report.seconds,
                f"{report.impressions_per_second:,.0f}")
    return 0


def features_config_from_yaml(path: str) -> FeaturesConfig:
    """Build a :class:`FeaturesConfig` from the ``features:`` section of a YAML file (nested keys as fields)."""
    import dataclasses
    import typing

    import yaml

    with open(path) as fh:
        data = (yaml.safe_load(fh) or {}).get("features", {})

    def build(cls: Any, values: dict[str, Any]) -> Any:
        hints = typing.get_type_hints(cls)
        kwargs = {}
        for key, value in values.items():
            if key not in {f.name for f in dataclasses.fields(cls)}:
                raise ValueError(f"features config: unknown key {key!r} in {cls.__name__}")
            kind = hints[key]
            kwargs[key] = build(kind, value) if dataclasses.is_dataclass(kind) else (
                tuple(value) if isinstance(value, list) else value)
        return cls(**kwargs)

    return build(FeaturesConfig, data)


if __name__ == "__main__":
    sys.exit(main())
