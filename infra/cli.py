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
from infra.release_cli import add_release_commands
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
    import pyarrow.dataset as ds

    from features.contract import TABLE_ORDER
    from features.validation import validate_logs

    root = Path(args.logs)
    tables = {t: ds.dataset(root / t, format="parquet").to_table() for t in TABLE_ORDER if (root / t).is_dir()}
    if not tables:
        print(f"error: no contract tables under {root}", file=sys.stderr)
        return 2
    results = validate_logs(tables, config=config.features.validation)
    bad = 0
    for name, res in results.items():
        print(f"{name:12s} input {res.n_input:>10,}  valid {len(res.valid):>10,}  quarantined {len(res.quarantined):>8,}")
        for reason, count in res.reason_counts().items():
            print(f"    {count:>8,}  {reason}")
        bad += len(res.quarantined)
        if args.quarantine and len(res.quarantined):
            qdir = Path(args.quarantine)
            qdir.mkdir(parents=True, exist_ok=True)
            res.quarantined.astype({c: str for c in res.quarantined.columns if res.quarantined[c].dtype == object}) \
                .to_parquet(qdir / f"{name}.parquet", index=False)
    if args.quarantine and bad:
        print(f"quarantined rows written to {args.quarantine}")
    return 1 if (bad and args.strict) else 0


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
                                   "and print the reasons.")
    p.add_argument("logs", help="folder holding users/ sellers/ items/ impressions/ events/")
    p.add_argument("--quarantine", metavar="DIR", help="write quarantined rows with reasons here")
    p.add_argument("--strict", action="store_true", help="exit 1 if any row is quarantined")
    p.set_defaults(func=_cmd_validate)

    p = sub.add_parser("config", help="print the effective configuration",
                       description="Print the configuration after defaults, --config and FEEDRANK_* overrides.")
    p.set_defaults(func=_cmd_config)

    add_release_commands(sub)  # rollout start|status|advance|rollback|auto, mlflow-ui
    add_stream_commands(sub)  # services up|down|status kafka, stream run|replay
    add_evaluate_command(sub)  # evaluate SCORED --out DIR [--mlflow-run-id ID]
    return parser


def _flag_overrides(args: argparse.Namespace) -> dict:
    section = getattr(args, "section", None)
    values = {f: getattr(args, f) for f in getattr(args, "flags", ()) if getattr(args, f, None) is not None}
    if not section or not values:
        return {}
    node: dict = values
    for part in reversed(section):
        node = {part: node}
    return node


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (2 for invalid configuration)."""
    args = build_parser().parse_args(argv)
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
