"""The ``feedrank`` command line. Every subcommand has ``--help``.

Global options come before the subcommand: ``feedrank --config my.yaml simulate ...``.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import yaml

from infra.config import ConfigError, FeedrankConfig, load_config
from infra.evaluate_cli import add_evaluate_command
from infra.monitor_cli import add_monitor_commands
from infra.release_cli import add_release_commands
from infra.retrieval_cli import add_retrieval_commands
from infra.serving_cli import add_serving_commands
from infra.stream_cli import add_stream_commands

__all__ = ["main", "build_parser"]

logger = logging.getLogger("feedrank")


def _cmd_simulate(args: argparse.Namespace, config: FeedrankConfig) -> int:
    from experiments.simulator import MarketplaceSimulator, summarize_logs

    sim_cfg = config.experiments.simulator
    out = Path(args.out or Path(config.infra.data_dir) / "logs")
    print(f"simulating {sim_cfg.users:,} users, {sim_cfg.items:,} items, {sim_cfg.sellers:,} sellers, "
          f"{sim_cfg.days} days (seed {sim_cfg.seed}) -> {out}")
    report = MarketplaceSimulator(sim_cfg).run(out, progress=True)
    print(f"wrote {report.rows['impressions']:,} impressions in {report.seconds:.1f} s "
          f"({report.impressions_per_second:,.0f}/s); {report.censored_events:,} events fell after the period")
    print(summarize_logs(out).to_text(max_positions=args.positions))
    return 0


def _cmd_validate(args: argparse.Namespace, config: FeedrankConfig) -> int:
    import json

    from features.logfiles import UNREADABLE_FILES, validate_files

    root = Path(args.logs)
    results, scans = validate_files(str(root), config=config.features.validation)
    if not results:
        print(f"error: no contract tables under {root}", file=sys.stderr)
        return 2
    bad = 0
    for name, res in results.items():
        unreadable = scans[name].unreadable_report()
        print(f"{name:12s} input {res.n_input:>10,}  valid {len(res.valid):>10,}  quarantined {len(res.quarantined):>8,}"
              + (f"  unreadable files {len(unreadable):,}" if unreadable else ""))
        for reason, count in res.reason_counts().items():
            print(f"    {count:>8,}  {reason}")
        for f in unreadable:
            print(f"    file {f['file']}: {f['reason']}")
        bad += len(res.quarantined) + len(unreadable)
        if args.quarantine and (len(res.quarantined) or unreadable):
            qdir = Path(args.quarantine)
            qdir.mkdir(parents=True, exist_ok=True)
        if args.quarantine and len(res.quarantined):
            res.quarantined.astype({c: str for c in res.quarantined.columns if res.quarantined[c].dtype == object}) \
                .to_parquet(qdir / f"{name}.parquet", index=False)
        if args.quarantine and unreadable:
            (qdir / f"{name}{UNREADABLE_FILES}").write_text(json.dumps(unreadable, indent=2))
    if args.quarantine and bad:
        print(f"quarantined rows and the list of unreadable files written to {args.quarantine}")
    return 1 if (bad and args.strict) else 0


def _features_dir(args: argparse.Namespace, config: FeedrankConfig) -> Path:
    return Path(getattr(args, "out", None) or getattr(args, "features", None) or config.features.etl.out_dir
                or Path(config.infra.data_dir) / "features")


def _cmd_etl(args: argparse.Namespace, config: FeedrankConfig) -> int:
    from features.checks import DataCheckError
    from features.etl import FeatureEtl
    from features.spark import spark_session

    logs = Path(args.logs or Path(config.infra.data_dir) / "logs")
    out = _features_dir(args, config)
    try:
        with spark_session(config.features.spark) as spark:
            report = FeatureEtl(config.features).run(spark, str(logs), str(out), start_date=args.start_date,
                                                     end_date=args.end_date)
    except DataCheckError as exc:
        print(f"feedrank etl: data checks failed, nothing published:\n{exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - one line for the user, the trace (Java frames and all) in the debug log
        logger.debug("feedrank etl failed", exc_info=True)
        print(f"feedrank etl: failed, nothing published: {_one_line(exc)}", file=sys.stderr)
        return 1
    for name, t in report.tables.items():
        unreadable = t.get("unreadable_files", [])
        print(f"{name:12s} input {t['input']:>11,}  valid {t['valid']:>11,}  quarantined {t['quarantined']:>8,}"
              + (f"  unreadable files {len(unreadable):,}" if unreadable else ""))
        for reason, count in t["reasons"].items():
            print(f"    {count:>8,}  {reason}")
        for f in unreadable:
            print(f"    file {f['file']}: {f['reason']}")
    rows = sum(d["rows"] for d in report.outputs["training"].values())
    print(f"wrote {rows:,} training rows for {len(report.dates)} day(s) to {out} in {report.seconds:.1f} s "
          f"({report.impressions_per_second:,.0f} impressions/s); report in {out}/_reports/")
    return 0


def _one_line(exc: BaseException) -> str:
    """The first line of an error's message; for an error raised in Spark's JVM, the Java exception's."""
    java = getattr(exc, "java_exception", None)
    text = str(java.toString()) if java is not None else str(exc)
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"


def _cmd_features(args: argparse.Namespace, config: FeedrankConfig) -> int:
    from features import store

    out = _features_dir(args, config)
    cfg = config.features
    if args.action == "check":
        from features.checks import check_training_table

        report = check_training_table(out / "training", etl=cfg.etl, checks=cfg.checks)
        print(report.to_text(failures_only=not args.verbose))
        return 0 if report.passed else 1
    feast_store = store.open_store(out, cfg.feast)
    if args.action == "apply":
        from features.stream.views import apply_rolling_views

        views = store.apply_definitions(feast_store, out, cfg.etl)
        views += apply_rolling_views(feast_store, out)  # the stream consumer's push-source views
        print(f"applied entities user, item, seller and views {', '.join(views)} (project {cfg.feast.project})")
    elif args.action == "materialize":
        from features.config import parse_utc

        end = store.materialize(feast_store, out, cfg.etl, end=parse_utc(args.end, "--end") if args.end else None)
        print(f"materialized the online store as of {end.isoformat()}")
    else:  # training-set
        import pyarrow.dataset as ds

        from features.checks import check_training_table

        check_training_table(out / "training", etl=cfg.etl, checks=cfg.checks).raise_for_failures()
        table = ds.dataset(out / "training", format="parquet", partitioning="hive")
        dates = ds.field("date")
        where = None
        if args.start_date:
            where = dates >= args.start_date
        if args.end_date:
            where = (dates <= args.end_date) if where is None else where & (dates <= args.end_date)
        base = table.to_table(columns=[c for c in table.schema.names if not c.startswith("f_")], filter=where)
        built = store.build_training_set(feast_store, base.to_pandas(), cfg.etl)
        Path(args.to).parent.mkdir(parents=True, exist_ok=True)
        built.to_parquet(args.to, index=False)
        print(f"wrote {len(built):,} rows x {sum(c.startswith('f_') for c in built.columns)} features "
              f"(Feast point-in-time) to {args.to}")
    return 0


def _interactions_config(args: argparse.Namespace):
    from features.adapters.interactions import InteractionsConfig, parse_event_map

    return InteractionsConfig(
        user=args.user, item=args.item, timestamp=None if args.order else args.timestamp,
        timestamp_unit=args.timestamp_unit, order=args.order, event=args.event,
        event_map=parse_event_map(args.event_map) if args.event_map else (), default_event=args.default_event,
        price=args.price, quantity=args.quantity, category=args.category, seller=args.seller,
        imputed_price=args.imputed_price, map_ids=args.map_ids,
        columns=tuple(c.strip() for c in args.columns.split(",")) if args.columns else (),
        delimiter=args.delimiter, period_start=args.period_start or "", period_end=args.period_end or "",
        name=args.name)


def _cmd_adapt(args: argparse.Namespace, config: FeedrankConfig) -> int:
    from features.adapters import adapt_interactions, adapt_taobao

    try:
        if args.kind == "taobao":
            report = adapt_taobao(args.source, args.out)
        else:
            report = adapt_interactions(args.source, args.out, _interactions_config(args))
    except (FileNotFoundError, ValueError) as exc:  # a bad option or column names the field and the reason
        print(f"feedrank adapt: {exc}", file=sys.stderr)
        return 2
    print(f"{report.lines:,} records -> {report.tables}; {report.quarantined:,} quarantined")
    for reason, count in report.reasons.items():
        print(f"    {count:>8,}  {reason}")
    print(f"contract tables in {args.out} (fills in {args.out}/_source.json); next: feedrank etl {args.out} "
          f"--out <features dir>, or feedrank evaluate-retrieval {args.out}")
    return 0


def _cmd_config(args: argparse.Namespace, config: FeedrankConfig) -> int:
    print(yaml.safe_dump(dataclasses.asdict(config), sort_keys=False), end="")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="feedrank", description="feedrank: two-stage feed ranking for marketplaces.")
    parser.add_argument("--config", metavar="FILE", help="YAML file overriding infra/defaults.yaml")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("simulate", help="simulate a marketplace and write its event logs",
                       description="Simulate buyers, sellers, items and a logging policy; write the five "
                                   "contract tables as Parquet and print a summary.")
    p.add_argument("--users", type=int, help="number of buyers (experiments.simulator.users)")
    p.add_argument("--items", type=int, help="number of items")
    p.add_argument("--sellers", type=int, help="number of sellers")
    p.add_argument("--days", type=int, help="length of the period in days")
    p.add_argument("--seed", type=int, help="random seed; the same seed writes byte-identical files")
    p.add_argument("--out", help="output folder (default: <infra.data_dir>/logs)")
    p.add_argument("--positions", type=int, default=10, help="positions shown in the summary table")
    p.set_defaults(func=_cmd_simulate, section=("experiments", "simulator"),
                   flags=("users", "items", "sellers", "days", "seed"))

    p = sub.add_parser("validate", help="validate event logs against the contract",
                       description="Split every contract table under LOGS into valid and quarantined rows "
                                   "and print the reasons, with the ETL's rules: every file is read with the "
                                   "contract's schema; a file that cannot be read is set aside with its reason.")
    p.add_argument("logs", help="folder holding users/ sellers/ items/ impressions/ events/")
    p.add_argument("--quarantine", metavar="DIR", help="write quarantined rows with reasons here")
    p.add_argument("--strict", action="store_true", help="exit 1 if any row is quarantined or any file unreadable")
    p.set_defaults(func=_cmd_validate)

    p = sub.add_parser("etl", help="Spark ETL: contract tables -> training rows and feature tables",
                       description="Validate the logs (quarantining bad rows), attribute events, build "
                                   "leakage-safe features and labels, check them, and publish Parquet tables "
                                   "partitioned by date. Runs Spark local[*] unless started by spark-submit.")
    p.add_argument("logs", nargs="?", help="folder of the contract tables (default: <infra.data_dir>/logs)")
    p.add_argument("--out", help="output folder (default: features.etl.out_dir or <infra.data_dir>/features)")
    p.add_argument("--start-date", help="first impression day to (re)build, YYYY-MM-DD (default: the first)")
    p.add_argument("--end-date", help="last impression day to (re)build, YYYY-MM-DD (default: the last)")
    p.add_argument("--negative-keep-rate", type=float, help="share of label-0 rows kept (features.etl)")
    p.add_argument("--master", help="Spark master, e.g. local[2] (features.spark.master)")
    p.set_defaults(func=_cmd_etl, flags=(("features", "etl", "negative_keep_rate"),
                                         ("features", "spark", "master")))

    p = sub.add_parser("features", help="Feast feature store: apply, materialize, training sets, checks",
                       description="Work with the Feast repo over the ETL output (SQLite online store by "
                                   "default; features.feast.online_store: redis for scale).")
    p.add_argument("action", choices=["apply", "materialize", "training-set", "check"],
                   help="apply: register entities and views; materialize: load the online store; "
                        "training-set: point-in-time training rows via Feast; check: data checks on training/")
    p.add_argument("--features", help="ETL output folder (default: features.etl.out_dir or <infra.data_dir>/features)")
    p.add_argument("--end", help="materialize: state as of this ISO-8601 time (default: after the last snapshot)")
    p.add_argument("--start-date", help="training-set: first day, YYYY-MM-DD")
    p.add_argument("--end-date", help="training-set: last day, YYYY-MM-DD")
    p.add_argument("--to", default="training_set.parquet", help="training-set: output Parquet file")
    p.add_argument("--verbose", action="store_true", help="check: list passed checks too")
    p.set_defaults(func=_cmd_features)

    p = sub.add_parser("adapt", help="map a real log into the event-log contract",
                       description="Map an interaction log (CSV or Parquet: user, item, time or order, optional "
                                   "event type, price, quantity, category, seller) or the Taobao UserBehavior CSV "
                                   "into the five contract tables; fills are listed in OUT/_source.json and rows "
                                   "that do not fit are quarantined with reasons in OUT/_quarantine/ "
                                   "(docs/own-logs.md).")
    p.add_argument("kind", choices=["interactions", "taobao"], help="source format")
    p.add_argument("source", help="source file (CSV or Parquet; taobao: UserBehavior CSV)")
    p.add_argument("--out", required=True, help="output folder for the contract tables")
    g = p.add_argument_group("interactions: source columns")
    g.add_argument("--user", default="user_id", help="user id column (default user_id)")
    g.add_argument("--item", default="item_id", help="item id column (default item_id)")
    g.add_argument("--timestamp", default="timestamp", help="time column (default timestamp)")
    g.add_argument("--timestamp-unit", default="s", choices=["s", "ms", "us", "iso"],
                   help="epoch seconds, milliseconds, microseconds, or ISO-8601 text (default s)")
    g.add_argument("--order", help="order column instead of a time column: synthetic timestamps keep the order")
    g.add_argument("--event", help="event-type column (default: every row is --default-event)")
    g.add_argument("--event-map", metavar="RAW=TYPE,...",
                   help="map raw event values to view|click|add_to_cart|purchase, e.g. "
                        "pv=view,fav=click,cart=add_to_cart,buy=purchase; unmapped values are quarantined")
    g.add_argument("--default-event", default="click", choices=["click", "add_to_cart", "purchase"],
                   help="type of every row without an event column (default click)")
    g.add_argument("--price", help="unit price column (default: placeholder --imputed-price)")
    g.add_argument("--quantity", help="quantity column (default 1)")
    g.add_argument("--category", help="category column (default: one placeholder category)")
    g.add_argument("--seller", help="seller column (default: one placeholder seller)")
    g.add_argument("--imputed-price", type=float, default=1.0, help="price of items without one (default 1.0)")
    g.add_argument("--map-ids", action="store_true", help="map string (or any) ids to dense integers (_id_maps/)")
    g.add_argument("--columns", help="comma-separated column names of a headerless CSV")
    g.add_argument("--delimiter", default=",", help="CSV field separator (default ,)")
    g.add_argument("--period-start", help="ISO-8601 start of the collection period (rows before: quarantined)")
    g.add_argument("--period-end", help="ISO-8601 end of the collection period (exclusive)")
    g.add_argument("--name", default="interactions", help="source name (quarantine file, _source.json)")
    p.set_defaults(func=_cmd_adapt)

    p = sub.add_parser("config", help="print the effective configuration",
                       description="Print the configuration after defaults, --config and FEEDRANK_* overrides.")
    p.set_defaults(func=_cmd_config)

    add_release_commands(sub)  # rollout start|status|advance|rollback|auto, mlflow-ui
    add_stream_commands(sub)  # services up|down|status kafka, stream run|replay
    add_evaluate_command(sub)  # evaluate SCORED --out DIR [--mlflow-run-id ID]
    add_retrieval_commands(sub)  # evaluate-retrieval LOGS
    add_serving_commands(sub)  # train, serve, rank
    add_monitor_commands(sub)  # monitor drift|skew|freshness|report|watch|shadow
    return parser


def _flag_overrides(args: argparse.Namespace) -> dict:
    flags = getattr(args, "flags", ())
    if flags and isinstance(flags[0], tuple):  # (section, ..., key) paths
        out: dict = {}
        for *path, key in flags:
            if getattr(args, key, None) is not None:
                node = out
                for part in path:
                    node = node.setdefault(part, {})
                node[key] = getattr(args, key)
        return out
    section = getattr(args, "section", None)
    values = {f: getattr(args, f) for f in getattr(args, "flags", ()) if getattr(args, f, None) is not None}
    if not section or not values:
        return {}
    nested: dict = values
    for part in reversed(section):
        nested = {part: nested}
    return nested


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (2 for invalid configuration)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv  # `feedrank serve --processes N` starts N copies of this command
    try:
        config = load_config(args.config, overrides=_flag_overrides(args))
    except ConfigError as exc:
        print(f"feedrank: invalid configuration: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=config.infra.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    func: Callable[[argparse.Namespace, FeedrankConfig], int] = args.func
    return func(args, config)


if __name__ == "__main__":
    sys.exit(main())
