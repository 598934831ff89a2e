"""``feedrank train``, ``feedrank serve`` and ``feedrank rank``."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from infra.config import FeedrankConfig

__all__ = ["add_serving_commands"]

logger = logging.getLogger("feedrank")


def _cmd_train(args: argparse.Namespace, config: FeedrankConfig) -> int:
    from features.checks import DataCheckError
    from infra.train import STEPS, EvaluationGateError, run_training

    data = Path(config.infra.data_dir)
    logs = Path(args.logs or data / "logs")
    run_dir = Path(args.run_dir or data / "train")
    try:
        report = run_training(config, logs_dir=logs, run_dir=run_dir, register=not args.no_register,
                              restart=args.restart)
    except DataCheckError as exc:
        print(f"feedrank train: data checks failed, nothing trained:\n{exc}", file=sys.stderr)
        return 1
    except EvaluationGateError as exc:
        print(f"feedrank train: {exc}", file=sys.stderr)
        return 1
    print(f"trained in {sum(s.get('seconds', 0) for s in report.steps.values()):.0f} s; bundle {report.bundle_dir}")
    for step in STEPS:
        if step in report.steps:
            print(f"  {step:10s} {report.steps[step].get('seconds', 0):>7.1f} s")
    for name in sorted(report.metrics):
        if any(key in name for key in ("ndcg_at_10", "recall", "ece", "examples_per_second")):
            print(f"  {name:55s} {report.metrics[name]:.4f}")
    if report.version:
        print(f"registered as version {report.version} with alias 'challenger' "
              f"(evaluation report: {run_dir / 'evaluation' / 'report.md'})")
    return 0


def _cmd_serve(args: argparse.Namespace, config: FeedrankConfig) -> int:
    import dataclasses

    from infra.serve import RolloutWatcher, build_router, data_path, feast_user_source
    from serving.impression_log import ImpressionLog, RequestLog
    from serving.server import serve

    serving_cfg = config.serving
    if args.port is not None:
        serving_cfg = dataclasses.replace(serving_cfg, port=args.port)
    log_dir = data_path(config, "serving")
    publisher = None
    if config.features.stream.enabled:  # served impressions also go to Kafka, for the stream consumer
        from features.stream.producer import EventPublisher
        from features.stream.topics import ensure_topics

        ensure_topics(config.features.stream)
        publisher = EventPublisher(config.features.stream).open()
    impressions = ImpressionLog(log_dir, publisher=publisher.publish_impressions if publisher else None).start()
    requests = RequestLog(log_dir).start()
    features_dir = Path(args.features or Path(config.infra.data_dir) / "train" / "features")
    user_source = feast_user_source(config, features_dir) if (features_dir / "_feast").is_dir() else None
    router = build_router(config, impression_log=impressions, user_source=user_source)
    watcher = RolloutWatcher(router, data_path(config, config.infra.rollout.state_dir)).start()
    import gc

    gc.collect()
    gc.freeze()  # DESIGN.md: full collections of the warmed-up heap set the p99 tail in a Feast process
    print(f"serving on {serving_cfg.host}:{serving_cfg.port} (champion {router.state.champion.versions.ranker}, "
          f"challenger share {router.state.challenger_share:.0%}); Ctrl-C stops", flush=True)
    try:
        serve(serving_cfg, router, request_log=requests)
    finally:
        watcher.close()
        impressions.close()
        requests.close()
        if publisher is not None:
            publisher.close()
    return 0


def _cmd_rank(args: argparse.Namespace, config: FeedrankConfig) -> int:
    import grpc

    from serving.client import FeedClient, format_feed

    address = args.address or f"{config.serving.host}:{config.serving.port}"
    with FeedClient(address) as client:
        try:
            for user in args.user:
                print(format_feed(client.rank(user, k=args.k, device=args.device or "", hour=args.hour)))
                print()
        except grpc.RpcError as exc:
            print(f"feedrank rank: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
    return 0


def add_serving_commands(sub: argparse._SubParsersAction) -> None:
    """Register ``train``, ``serve`` and ``rank``."""
    p = sub.add_parser("train", help="the batch job: ETL, Feast, retrieval, ranking, evaluation, registration",
                       description="Train a feed bundle from event logs and register it in MLflow as the "
                                   "challenger. Resumes after the last completed step unless --restart.")
    p.add_argument("--logs", help="contract tables (default <infra.data_dir>/logs)")
    p.add_argument("--run-dir", help="working folder (default <infra.data_dir>/train)")
    p.add_argument("--restart", action="store_true", help="ignore steps completed by an earlier run")
    p.add_argument("--no-register", action="store_true", help="stop after the evaluation gate")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("serve", help="run the gRPC FeedRanker service",
                       description="Serve RankFeed with the registry's champion (and challenger, per the "
                                   "rollout state); SIGTERM stops it gracefully.")
    p.add_argument("--port", type=int, help="port (default serving.port)")
    p.add_argument("--features", help="ETL output with the Feast repo (default <data_dir>/train/features)")
    p.set_defaults(func=_cmd_serve)

    p = sub.add_parser("rank", help="ask a running server for feeds and print them",
                       description="Call RankFeed for each --user and print the feed as a table.")
    p.add_argument("--user", action="append", required=True, help="user id (repeatable)")
    p.add_argument("--k", type=int, default=10, help="feed length")
    p.add_argument("--device", help="mobile, desktop or tablet")
    p.add_argument("--hour", type=int, default=-1, help="request hour (default: now)")
    p.add_argument("--address", help="host:port (default serving.host:serving.port)")
    p.set_defaults(func=_cmd_rank)
