"""``feedrank evaluate``: the offline evaluation report of a model's scored data."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from infra.config import FeedrankConfig

__all__ = ["add_evaluate_command"]


def _cmd_evaluate(args: argparse.Namespace, config: FeedrankConfig) -> int:
    from experiments.evaluate import EvaluationConfig, evaluate_scored, read_scored, summary_lines

    scored = Path(args.scored)
    try:
        data = read_scored(scored)
        eval_cfg = EvaluationConfig(k_values=tuple(args.k))
    except (FileNotFoundError, ValueError) as exc:
        print(f"feedrank evaluate: {exc}", file=sys.stderr)
        return 2
    tracking_uri = None
    if args.mlflow_run_id:
        from infra.registry import embedded_tracking_uri

        tracking_uri = args.tracking_uri or config.infra.registry.tracking_uri or \
            embedded_tracking_uri(config.infra.data_dir)
    version = args.model_version or scored.stem
    try:
        report = evaluate_scored(data, args.out, model_version=version, config=eval_cfg,
                                 run=args.mlflow_run_id, tracking_uri=tracking_uri)
    except (TypeError, ValueError) as exc:
        print(f"feedrank evaluate: invalid scored data in {scored}: {exc}", file=sys.stderr)
        return 2
    for line in summary_lines(report.metrics, k_values=(str(eval_cfg.k_values[-1]),)):
        print(line)
    print(f"report: {Path(report.out_dir) / 'report.md'}")
    if args.slices:
        from experiments.slices import SliceConfig, slice_metrics, write_slice_report

        slice_cfg = SliceConfig(k=eval_cfg.k_values[-1] if args.slice_k is None else args.slice_k)
        try:
            table = slice_metrics(data, slices=[s.strip() for s in args.slices.split(",") if s.strip()],
                                  config=slice_cfg)
        except (KeyError, ValueError) as exc:
            print(f"feedrank evaluate: --slices: {exc}", file=sys.stderr)
            return 2
        print(f"slices: {write_slice_report(table, args.out, config=slice_cfg)} ({len(table)} slice values)")
    if args.mlflow_run_id:
        print(f"logged to MLflow run {args.mlflow_run_id} at {tracking_uri}")
    return 0


def add_evaluate_command(sub: Any) -> None:
    """Register ``evaluate`` on the ``feedrank`` subparsers ``sub``."""
    p = sub.add_parser(
        "evaluate", help="write the offline evaluation report of scored data",
        description="Evaluate a model on scored logged impressions (Parquet or CSV; one row per impression with "
                    "request_id, item_id, position, label, score, p_purchase, purchased, price, propensity, "
                    "is_new_seller, and optionally margin_rate and pscore: see experiments/evaluate.py). Writes "
                    "report.md, metrics.json and PNG plots (NDCG by K, calibration, off-policy intervals, "
                    "exposure) to --out, and logs them to an MLflow run when --mlflow-run-id is given.")
    p.add_argument("scored", help="Parquet file or folder, or CSV file, of scored evaluation data")
    p.add_argument("--out", required=True, help="report folder (created)")
    p.add_argument("--model-version", help="name of the model in the report (default: the file's stem)")
    p.add_argument("--k", type=int, nargs="+", default=[1, 3, 5, 10, 20], metavar="K",
                   help="NDCG cut-offs (default: 1 3 5 10 20)")
    p.add_argument("--mlflow-run-id", metavar="RUN_ID",
                   help="also log metrics (eval_*) and the report (artifacts under evaluation/) to this run")
    p.add_argument("--tracking-uri", metavar="URI",
                   help="MLflow tracking URI of that run (default: infra.registry, embedded under infra.data_dir)")
    p.add_argument("--slices", metavar="NAMES",
                   help="also cut the metrics by these comma-separated slices, with bootstrap intervals "
                        "(device, is_new_buyer, is_new_seller, category_id, price_band; the columns must be in the "
                        "scored data): slices.md, slices.json, slices.png")
    p.add_argument("--slice-k", type=int, help="NDCG cut-off of the slice report (default the largest --k)")
    p.set_defaults(func=_cmd_evaluate)
