"""``feedrank monitor drift|skew|freshness|report|watch|shadow``: watch the served system from its logs.

Inputs, each with a default under ``infra.data_dir``: the serving logs (``serving/``:
``served_features/``, ``requests/``, ``impressions/``), the ETL output with its Feast repo
(``train/features``) and the bundle being served (``train/bundle``; its manifest names the
features). The window is ``--start``/``--end`` (ISO-8601 UTC) or the last
``monitoring.window_hours`` up to the newest served-feature row (so a replayed or simulated
log is judged on its own clock).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from infra.config import FeedrankConfig

__all__ = ["add_monitor_commands"]


def _paths(args: argparse.Namespace, config: FeedrankConfig) -> tuple[Path, Path, Path]:
    data = Path(config.infra.data_dir)
    return (Path(args.served or data / "serving"), Path(args.features or data / "train" / "features"),
            Path(args.bundle or data / "train" / "bundle"))


def _window(args: argparse.Namespace, config: FeedrankConfig, served_dir: Path) -> tuple[int, int]:
    """``[start_us, end_us)`` from the arguments, else the last window_hours up to the newest served row."""
    from features.config import parse_utc
    from serving.impression_log import read_served_features

    end_us = int(parse_utc(args.end, "--end").timestamp() * 1e6) if args.end else None
    if end_us is None:
        ts = read_served_features(served_dir).column("ts").cast("int64").to_numpy()
        end_us = int(ts.max()) + 1
    hours = args.hours if args.hours is not None else config.monitoring.window_hours
    start_us = int(parse_utc(args.start, "--start").timestamp() * 1e6) if args.start else \
        end_us - int(hours * 3600 * 1e6)
    return start_us, end_us


def _fmt_window(start_us: int, end_us: int) -> str:
    from datetime import UTC, datetime

    def fmt(us: int) -> str:
        return datetime.fromtimestamp(us / 1e6, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")

    return f"{fmt(start_us)} .. {fmt(end_us)}"


def _drift(args: argparse.Namespace, config: FeedrankConfig, served_dir: Path, features_dir: Path,
           bundle: Path, window: tuple[int, int]) -> Any:
    from monitoring.drift import feature_drift
    from monitoring.sources import bundle_features, served_window, training_reference

    features = bundle_features(bundle)
    current = served_window(served_dir, start_us=window[0], end_us=window[1])
    if getattr(args, "reference_start", None):
        from features.config import parse_utc

        ref_start = int(parse_utc(args.reference_start, "--reference-start").timestamp() * 1e6)
        ref_end = int(parse_utc(args.reference_end, "--reference-end").timestamp() * 1e6) \
            if args.reference_end else window[0]
        reference = served_window(served_dir, start_us=ref_start, end_us=ref_end)
        ref_name = f"serving {_fmt_window(ref_start, ref_end)}"
    else:
        reference = training_reference(features_dir, features)
        ref_name = "training"
    present = [f for f in features if f in current.columns]
    return feature_drift(reference, current, features=present, config=config.monitoring.drift,
                         reference_name=ref_name, current_name=f"serving {_fmt_window(*window)}")


def _skew(args: argparse.Namespace, config: FeedrankConfig, served_dir: Path, features_dir: Path,
          bundle: Path, window: tuple[int, int]) -> Any:
    import numpy as np

    from features.store import open_store
    from monitoring.skew import feature_skew, recompute_offline
    from monitoring.sources import bundle_features, served_window

    served = served_window(served_dir, start_us=window[0], end_us=window[1])
    keys = served["request_key"].unique()
    if len(keys) > args.max_requests:  # a uniform sample of requests keeps the point-in-time join small
        keep = np.random.default_rng(0).choice(keys, args.max_requests, replace=False)
        served = served[served["request_key"].isin(keep)].reset_index(drop=True)
    store = open_store(features_dir, config.features.feast)
    offline = recompute_offline(store, served, config.features.etl)
    features = [f for f in bundle_features(bundle) if f in served.columns and f in offline.columns]
    return feature_skew(served, offline, features=features, config=config.monitoring.skew)


def _freshness(config: FeedrankConfig, features_dir: Path, bundle: Path) -> dict[str, float]:
    from infra.stream_cli import state_path
    from serving.bundle import read_bundle_manifest
    from serving.freshness import FreshnessProbe

    store = None
    if (features_dir / "_feast").is_dir():
        from features.store import open_store

        store = open_store(features_dir, config.features.feast)
    bundles = {"bundle": read_bundle_manifest(bundle)} if (bundle / "bundle.json").is_file() else {}
    return FreshnessProbe(bundles=bundles, store=store, stream_state=state_path(config)).ages()


def _print_drift(report: Any, top: int) -> None:
    frame = report.to_frame()
    print(f"drift: {report.current} vs {report.reference}; alerts: {', '.join(report.flagged()) or 'none'}; "
          f"warnings: {', '.join(f for f in report.flagged('warn') if f not in report.flagged()) or 'none'}")
    print(frame.head(top)[["feature", "psi", "js", "level", "missing_reference", "missing_current"]]
          .to_string(index=False, float_format=lambda v: f"{v:.4f}"))


def _print_skew(report: Any, top: int) -> None:
    frame = report.to_frame()
    print(f"skew over {report.requests} sampled requests ({frame['rows'].max() if len(frame) else 0} rows); "
          f"flagged: {', '.join(report.flagged()) or 'none'}")
    print(frame.head(top)[["feature", "mismatch_rate", "mean_abs_diff", "missing_served", "missing_offline"]]
          .to_string(index=False, float_format=lambda v: f"{v:.4f}"))


def _print_freshness(ages: dict[str, float]) -> None:
    print("freshness (hours since last update):")
    for name, age in sorted(ages.items()):
        print(f"  {name:34s} {age / 3600:10.1f}")


def _cmd_monitor(args: argparse.Namespace, config: FeedrankConfig) -> int:
    from monitoring.metrics import MonitorMetrics

    served_dir, features_dir, bundle = _paths(args, config)
    action = args.monitor_action
    try:
        if action == "freshness":
            ages = _freshness(config, features_dir, bundle)
            _print_freshness(ages)
            if args.json:
                Path(args.json).write_text(json.dumps(ages, indent=2))
            return 0
        if action == "watch":
            return _watch(args, config, served_dir, features_dir, bundle)
        if action == "shadow":
            return _shadow(args, config, served_dir, features_dir, bundle)
        window = _window(args, config, served_dir)
        metrics = MonitorMetrics()
        drift = skew = None
        if action in ("drift", "report"):
            drift = _drift(args, config, served_dir, features_dir, bundle, window)
            metrics.publish_drift(drift)
            _print_drift(drift, args.top)
        if action == "skew" or (action == "report" and args.skew):
            skew = _skew(args, config, served_dir, features_dir, bundle, window)
            metrics.publish_skew(skew)
            _print_skew(skew, args.top)
        if args.prom:
            print(f"Prometheus text: {metrics.write(args.prom)}")
        if action == "report":
            from monitoring.report import MonitorReport, write_report
            from monitoring.sources import read_log_table

            items = None
            if (bundle / "item_snapshot.parquet").is_file():
                import pandas as pd

                items = pd.read_parquet(bundle / "item_snapshot.parquet",
                                        columns=["item_id", "is_new_seller", "category_id"])
            events = None
            if args.events:
                import pyarrow.dataset as ds

                events = ds.dataset(args.events, format="parquet").to_table().to_pandas()
            ages = _freshness(config, features_dir, bundle)
            _print_freshness(ages)
            page = write_report(MonitorReport(
                title="feedrank monitor report", window=_fmt_window(*window),
                requests=read_log_table(served_dir, "requests", start_us=window[0], end_us=window[1]),
                impressions=read_log_table(served_dir, "impressions", start_us=window[0], end_us=window[1]),
                items=items, events=events, drift=drift, skew=skew, freshness=ages), args.out)
            print(f"report: {page} (and {page.with_suffix('.html')})")
    except (FileNotFoundError, KeyError, ValueError) as exc:
        print(f"feedrank monitor {action}: {exc}", file=sys.stderr)
        return 2
    return 0


def _shadow(args: argparse.Namespace, config: FeedrankConfig, served_dir: Path, features_dir: Path,
            bundle: Path) -> int:
    """Replay the logged requests against the challenger bundle; print and write the comparison."""
    from experiments.shadow import shadow_replay
    from infra.serve import feast_user_source
    from monitoring.sources import read_log_table
    from serving.exploration import ExplorationConfig
    from serving.model_pipeline import ModelPipeline
    from serving.rerank import Reranker

    impressions = read_log_table(served_dir, "impressions")
    if impressions is None:
        raise FileNotFoundError(f"{served_dir}/impressions holds no impression log to replay")
    challenger = Path(args.challenger)
    user_source = feast_user_source(config, features_dir) if (features_dir / "_feast").is_dir() else None
    pipeline = ModelPipeline.from_bundle(challenger, version=challenger.name, reranker=Reranker(config.serving.rerank),
                                         exploration=ExplorationConfig(share=0.0), user_source=user_source)
    shadow = shadow_replay(impressions, pipeline, k=args.k, max_requests=args.max_requests)
    for name, value in shadow.summary.items():
        print(f"  {name:28s} {value:10.4f}")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        shadow.per_request.to_csv(out / "shadow_requests.csv", index=False)
        (out / "shadow.json").write_text(json.dumps(shadow.summary, indent=2))
        print(f"shadow replay: {out / 'shadow.json'}")
    return 0


def _watch(args: argparse.Namespace, config: FeedrankConfig, served_dir: Path, features_dir: Path,
           bundle: Path) -> int:
    """Recompute drift (and skew with --skew) every interval; serve the gauges on monitoring.metrics_port."""
    import logging

    from prometheus_client import start_http_server

    from monitoring.metrics import MonitorMetrics

    metrics = MonitorMetrics()
    port = args.metrics_port if args.metrics_port is not None else config.monitoring.metrics_port
    if port:
        start_http_server(port, addr=config.serving.host, registry=metrics.registry)
        print(f"monitor metrics on http://{config.serving.host}:{port}/metrics", flush=True)
    rounds = 0
    while True:
        try:
            window = _window(args, config, served_dir)
            metrics.publish_drift(_drift(args, config, served_dir, features_dir, bundle, window))
            if args.skew:
                metrics.publish_skew(_skew(args, config, served_dir, features_dir, bundle, window))
        except (FileNotFoundError, KeyError, ValueError):
            logging.getLogger("feedrank").warning("monitor round failed; retrying next interval", exc_info=True)
        rounds += 1
        if args.rounds and rounds >= args.rounds:
            return 0
        time.sleep(config.monitoring.interval_seconds)


def add_monitor_commands(sub: Any) -> None:
    """Register ``monitor`` on the ``feedrank`` subparsers ``sub``."""
    p = sub.add_parser("monitor", help="drift, skew, freshness and the monitoring report of served traffic",
                       description=__doc__.split("\n\n")[1])
    actions = p.add_subparsers(dest="monitor_action", required=True)
    for name, text in (("drift", "PSI and Jensen-Shannon per feature: a serving window vs training (or another "
                                 "window)"),
                       ("skew", "served feature values vs the point-in-time recomputation of the same rows"),
                       ("freshness", "age of the feature views, the stream watermark and the bundle"),
                       ("report", "write report.md/.html with plots: latency, feeds, freshness, drift (and skew)"),
                       ("watch", "recompute drift periodically and export the gauges to Prometheus"),
                       ("shadow", "replay the logged requests against a challenger bundle: overlap@K, Kendall's "
                                  "tau, score shift, the challenger's latency")):
        a = actions.add_parser(name, help=text, description=text)
        a.add_argument("--served", help="serving log folder (default <data_dir>/serving)")
        a.add_argument("--features", help="ETL output with its Feast repo (default <data_dir>/train/features)")
        a.add_argument("--bundle", help="the served bundle (default <data_dir>/train/bundle)")
        if name == "freshness":
            a.add_argument("--json", help="also write the ages (seconds) as JSON here")
            continue
        if name == "shadow":
            a.add_argument("challenger", help="the challenger's bundle folder")
            a.add_argument("--k", type=int, default=10, help="overlap cut-off")
            a.add_argument("--max-requests", type=int, default=1000, help="logged requests replayed (a sample)")
            a.add_argument("--out", help="write shadow.json and shadow_requests.csv here")
            continue
        a.add_argument("--start", help="window start (ISO-8601 UTC)")
        a.add_argument("--end", help="window end (default: just after the newest served row)")
        a.add_argument("--hours", type=float, help="window length (default monitoring.window_hours)")
        a.add_argument("--top", type=int, default=15, help="rows printed")
        a.add_argument("--max-requests", type=int, default=500, help="sampled requests recomputed for skew")
        if name in ("drift", "report", "watch"):
            a.add_argument("--reference-start", help="compare with this serving window instead of training")
            a.add_argument("--reference-end", help="end of the reference window (default: --start)")
        if name in ("report", "watch"):
            a.add_argument("--skew", action="store_true", help="also compute skew (a point-in-time join)")
        if name == "report":
            a.add_argument("--out", default="build/monitor", help="report folder")
            a.add_argument("--events", help="contract events folder, for CTR/CVR/GMV per arm")
        if name == "watch":
            a.add_argument("--metrics-port", type=int, help="default monitoring.metrics_port")
            a.add_argument("--rounds", type=int, default=0, help="stop after N rounds (0: run until stopped)")
        if name != "watch":
            a.add_argument("--prom", help="write the gauges in Prometheus' text format here")
    p.set_defaults(func=_cmd_monitor)
