"""The Spark ETL: event-log contract tables in, leakage-safe training rows and feature tables out.

Run it as ``feedrank etl LOGS --out DIR``, as ``python -m features.etl LOGS DIR`` or, on a
cluster, as ``spark-submit --py-files features.zip features/etl.py LOGS DIR`` (the submitter's
``--master`` and memory settings win over the config's ``local[*]`` defaults).

Stages (each logs its counts and rate; long Spark stages log task progress periodically):

1. **Validate** every table with the contract's rules (:mod:`features.quarantine`); each
   file is read with the contract's schema, a file that cannot be read is set aside with its
   reason (``quarantine/<table>/_unreadable_files.json`` and the report) and the others go
   on; each table is written once to a work folder split into valid and quarantined rows,
   so no row is dropped silently. Impressions are enriched with their item's seller, category,
   price and margin on the way.
2. **Attribute** linked events to impressions and grade labels (:mod:`features.labels`).
3. **Aggregate** daily snapshots of user, item and seller features and the user's intraday
   rows (:mod:`features.aggregates`, whose docstring explains how leakage is prevented).
4. **Assemble** each output day (:mod:`features.assemble`, in the Python workers): the
   day's impressions joined to their labels, to the snapshots of that day and to the
   intraday row each request sees; request-time features come from
   :func:`features.derived.derived_features`, the function serving calls; negatives are
   downsampled by a hash of the impression id (deterministic), with ``sample_weight`` =
   1 / keep rate.
5. **Check** (:mod:`features.checks`) and **publish**: every output day is written to a
   staging folder, measured, checked, and only then moved over the old day, one rename
   per partition. A failed check publishes nothing and raises :class:`DataCheckError`.

Rows are sorted by ``(ts, impression_id)`` (training) or by entity id (feature tables),
one file per day (one per Spark split once a day's work file holds several 128 MB row groups), with stable
file names: the same input gives byte-identical output.
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
from typing import TYPE_CHECKING, Any

from features.aggregates import (
    DAY_US,
    SnapshotRange,
    category_median_prices,
    daily_item,
    daily_user,
    day_of,
    item_snapshots,
    realtime_state,
    seller_snapshots,
    user_snapshots,
)
from features.assemble import (
    IMPRESSION_COLUMNS,
    KEEP_DRAW,
    STATS_SCHEMA,
    AssemblyRules,
    DayTables,
    write_day_part,
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
from features.derived import REALTIME_INPUTS
from features.labels import attribute
from features.logfiles import UNREADABLE_FILES
from features.outputs import (
    FEATURE_SOURCES,
    ITEM_AUX,
    KEY_COLUMNS,
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
        for name in (LAYOUT.user_features, LAYOUT.item_features, LAYOUT.seller_features, LAYOUT.user_realtime):
            counts = spark.read.parquet(f"{staging}/{name}").groupBy("date").count().collect()
            report.outputs[name] = {r["date"]: int(r["count"]) for r in sorted(counts, key=lambda r: r["date"])}
        done("aggregate")

        # 4. assemble the days ------------------------------------------------------------
        per_day: dict[str, dict[str, Any]] = {}
        nulls: dict[str, int] = {}
        dates = [_date_str(d) for d in days]
        done_imps = 0
        lock = threading.Lock()

        def assemble_day(numbered: tuple[int, str]) -> None:
            nonlocal done_imps
            i, day = numbered
            t0 = time.perf_counter()
            with progress(spark, every, f"assemble {day}"):
                day_stats = self._assemble(spark, day, staging, work, log_end_us)
            with lock:
                for k, v in day_stats.pop("nulls").items():
                    nulls[k] = nulls.get(k, 0) + v
                day_stats["impressions"] = day_counts[day]
                per_day[day] = day_stats
                done_imps += day_counts[day]
                secs = time.perf_counter() - t0
                logger.info("day %d/%d (%s): %s impressions -> %s training rows in %.1f s (%s impressions/s); "
                            "%s of %s impressions done", i, len(dates), day, f"{day_counts[day]:,}",
                            f"{day_stats['rows']:,}", secs, f"{day_counts[day] / max(secs, 1e-9):,.0f}",
                            f"{done_imps:,}", f"{n_imps:,}")

        # Two days at a time: a day is one task per split of its work file, so a second day
        # keeps the other core busy.
        with ThreadPoolExecutor(max_workers=min(2, len(dates))) as pool:
            list(pool.map(assemble_day, enumerate(dates, 1)))
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
            table = flag_table(spark, logs, name, config=cfg.validation, valid=valid, work=f"{work}/_read",
                               carry=carry.get(name))
            if not table.files.readable:
                raise ValueError(f"table {name}: no valid rows under {logs}/{name} (no readable file; "
                                 f"{len(table.files.unreadable)} unreadable file(s): "
                                 f"{table.files.unreadable[0].name}: {table.files.unreadable[0].error})")
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
            unreadable = table.files.unreadable_report()
            if n_ok == 0:
                raise ValueError(f"table {name}: no valid rows under {logs}/{name} "
                                 f"({n_bad:,} rows, all quarantined; {len(unreadable)} unreadable file(s))")
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
            if unreadable:
                files.write_text(f"{staging}/{LAYOUT.quarantine}/{name}/{UNREADABLE_FILES}",
                                 json.dumps(unreadable, indent=2))
            report.tables[name] = {"input": n_ok + n_bad, "valid": n_ok, "quarantined": n_bad, "reasons": reasons,
                                   "unreadable_files": unreadable,
                                   "schema_problems": [asdict(p) for p in table.schema_problems]}
            logger.info("validated %s: %s rows, %s quarantined; %d unreadable file(s)", name, f"{n_ok + n_bad:,}",
                        f"{n_bad:,}", len(unreadable))
            valid[name] = ok
        files.tidy(f"{staging}/{LAYOUT.quarantine}")
        return valid

    def _aggregate(self, spark: SparkSession, valid: dict[str, DataFrame], snaps: SnapshotRange, days: list[int],
                   staging: str, work: str) -> None:
        from pyspark.sql import functions as F

        cfg = self.config.etl
        imps, events = valid["impressions"], valid["events"]
        medians = F.broadcast(category_median_prices(valid["items"]))
        daily_u = daily_user(imps, events.join(medians, "category_id", "left")).cache()
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

    def _assemble(self, spark: SparkSession, day: str, staging: str, work: str, log_end_us: int) -> dict[str, Any]:
        """Write the training rows of ``day`` (:mod:`features.assemble`); return its row, positive and null counts.

        The day's valid impressions are read from their sorted work file and handed, in that
        order, to the Python workers, which join them to the day's lookup tables, compute the
        request-time features and write the day's files themselves.
        """
        import functools

        from pyspark.sql import functions as F

        cfg = self.config.etl
        imps = spark.read.parquet(f"{work}/impressions").filter((F.col("_ok") == "true") & (F.col("date") == day))
        # The sampling draw stays Spark's hash, so a given seed keeps the same rows as ever.
        draw = F.pmod(F.xxhash64(F.col("impression_id"), F.lit(cfg.sample_seed)), F.lit(1 << 30)) / float(1 << 30)
        columns = [draw.alias(c) if c == KEEP_DRAW else F.col(c) for c in IMPRESSION_COLUMNS]
        tables = DayTables(date=day, labels=f"{work}/labels", realtime=f"{work}/rt_seen/date={day}",
                           users=f"{staging}/{LAYOUT.user_features}/date={day}",
                           items=f"{staging}/{LAYOUT.item_features}/date={day}",
                           sellers=f"{staging}/{LAYOUT.seller_features}/date={day}",
                           target=f"{staging}/{LAYOUT.training}/date={day}")
        rules = AssemblyRules(
            schema=training_schema(cfg),
            user_columns=tuple(dict.fromkeys(user_feature_names(cfg) + user_aux_names(cfg))),
            item_columns=tuple(dict.fromkeys(item_feature_names(cfg) + ITEM_AUX)),
            seller_columns=seller_feature_names(cfg), purchase_days=cfg.purchase_days, log_end_us=log_end_us,
            negative_keep_rate=cfg.negative_keep_rate)
        parts = (imps.select(*columns).mapInArrow(functools.partial(write_day_part, tables, rules), STATS_SCHEMA)
                 .collect())
        stats: dict[str, Any] = {"rows": 0, "positives": 0, "nulls": {}}
        for part in parts:
            stats["rows"] += int(part["rows"])
            stats["positives"] += int(part["positives"])
            for name, count in json.loads(part["nulls"]).items():
                stats["nulls"][name] = stats["nulls"].get(name, 0) + int(count)
        return stats

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
