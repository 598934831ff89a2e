"""``feedrank evaluate-retrieval``: train the two-tower on a contract log and compare it with the baselines."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from infra.config import FeedrankConfig

__all__ = ["add_retrieval_commands", "adapted_log_settings"]


def adapted_log_settings(config: Any) -> Any:
    """The retrieval settings for a log adapted from interactions (``_source.json`` present): views are
    the user's own page views (pooled into the history), every event type is a positive, repeats are
    normal (purchased items stay retrievable), and there is no feed to tell on- from off-feed events."""
    return dataclasses.replace(
        config,
        model=dataclasses.replace(config.model, history_impressions=True),
        training=dataclasses.replace(config.training, positive_types=("click", "add_to_cart", "purchase"),
                                     validation_positives="all"),
        serving=dataclasses.replace(config.serving, exclude_purchased=False))


def _cmd_evaluate_retrieval(args: argparse.Namespace, config: FeedrankConfig) -> int:
    from features.config import parse_utc
    from retrieval import read_event_log
    from retrieval.comparison import compare_on_log, format_table
    from retrieval.inputs import DAY_US

    logs = Path(args.logs)
    source_file = logs / "_source.json"
    source = json.loads(source_file.read_text()) if source_file.is_file() else {}
    retrieval = config.retrieval
    if source and not args.as_configured:
        retrieval = adapted_log_settings(retrieval)
    if args.threads:
        retrieval = dataclasses.replace(retrieval, training=dataclasses.replace(retrieval.training,
                                                                                num_threads=args.threads))
    split = args.split
    if split == "auto":
        split = "last" if source.get("time") == "order" else "time"
    try:
        log = read_event_log(logs)
        test_start = None
        if split == "time":
            first, last = log.time_range_us
            test_start = (int(parse_utc(args.test_start, "--test-start").timestamp() * 1_000_000) if args.test_start
                          else int(last + 1 - args.test_days * DAY_US))
            if not first < test_start <= last:
                raise ValueError(f"the test period must start inside the log ({first} .. {last} us), got {test_start}")
        ks = sorted({min(k, len(log.items)) for k in args.k})
        report = compare_on_log(log, retrieval, split=split, test_start_us=test_start,
                                target_types=tuple(args.targets.split(",")), ks=ks,
                                impression_weight=1.0 if retrieval.model.history_impressions else 0.0)
    except (FileNotFoundError, ValueError) as exc:
        print(f"feedrank evaluate-retrieval: {exc}", file=sys.stderr)
        return 2
    report["logs"] = str(logs)
    report["settings"] = "adapted log" if source and not args.as_configured else "as configured"
    tr = report["training"]
    print(f"{report['split']} split: {report['queries']['all']:,} users with targets; two-tower trained on "
          f"{tr['examples']:,} examples in {tr['seconds']} s ({tr['examples_per_second']:,}/s, best epoch "
          f"{tr['best_epoch']}), {tr['items_with_own_vector']:,} of {report['items']:,} items with their own vector")
    ann = report["ann_vs_exact"]
    print(f"index {ann['index_kind']}: " + ", ".join(f"{k} {v}" for k, v in ann.items() if k != "index_kind"))
    print(format_table(report))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2, default=float) + "\n")
        print(f"JSON in {args.out}")
    return 0


def add_retrieval_commands(sub: Any) -> None:
    """Register ``evaluate-retrieval`` on the ``feedrank`` subparsers ``sub``."""
    p = sub.add_parser(
        "evaluate-retrieval", help="train the two-tower on a contract log and compare it with the baselines",
        description="Split the log (leave-last-out or by time), train the two-tower on the part before, and report "
                    "recall@K and NDCG@K (mean ± standard error over users) of the two-tower with exact search "
                    "and with the configured ANN index, popularity, and the user's own history, for all targets "
                    "and for targets new to the user. Logs written by `feedrank adapt` get the adapted-log settings "
                    "(views pooled into the history, every event type a positive, repeats allowed) unless "
                    "--as-configured.")
    p.add_argument("logs", help="folder of the contract tables (e.g. from feedrank adapt)")
    p.add_argument("--split", choices=["auto", "last", "time"], default="auto",
                   help="auto (default): leave-last-out for order-only logs, else time")
    p.add_argument("--test-days", type=float, default=2.0, help="time split: the last D days are the test period")
    p.add_argument("--test-start", help="time split: ISO-8601 start of the test period (overrides --test-days)")
    p.add_argument("--targets", default="click,add_to_cart,purchase",
                   help="event types that are targets (comma-separated; default all)")
    p.add_argument("--k", type=int, nargs="+", default=[10, 100, 500], help="cut-offs (default 10 100 500)")
    p.add_argument("--threads", type=int, help="torch threads for training (default retrieval.training.num_threads)")
    p.add_argument("--as-configured", action="store_true",
                   help="use the retrieval configuration as it is, even for an adapted log")
    p.add_argument("--out", help="also write the report as JSON here")
    p.set_defaults(func=_cmd_evaluate_retrieval)
