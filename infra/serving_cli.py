"""``feedrank train``, ``feedrank serve`` and ``feedrank rank``."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from infra.config import FeedrankConfig

if TYPE_CHECKING:
    pass

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
    from infra.supervisor import (
        PARENT_PID_ENV,
        WORKER_ENV,
        ProcessesHealth,
        Supervisor,
        status_file,
    )
    from serving.impression_log import ImpressionLog, RequestLog, ServedFeatureLog
    from serving.server import serve

    serving_cfg = config.serving
    port = serving_cfg.port if args.port is None else args.port
    processes = serving_cfg.processes if args.processes is None else args.processes
    if processes < 1 or (processes > 1 and port == 0):
        print(f"feedrank serve: --processes must be >= 1, and > 1 needs a fixed --port (not 0); got "
              f"{processes} processes on port {port}", file=sys.stderr)
        return 2
    per_process = serving_cfg.port_per_process if args.port_per_process is None else args.port_per_process
    try:
        serving_cfg = dataclasses.replace(serving_cfg, port=port, processes=processes, port_per_process=per_process)
    except ValueError as exc:  # e.g. ports past 65535 with a port per process
        print(f"feedrank serve: {exc}", file=sys.stderr)
        return 2
    worker = os.environ.get(WORKER_ENV)
    if worker is not None:  # a process of `feedrank serve --processes N`: it ends with its supervisor
        import signal

        from serving.bundle_check import die_with_parent

        die_with_parent(signal.SIGTERM, parent_pid=int(os.environ[PARENT_PID_ENV]))
    elif serving_cfg.port != 0:
        ports = [serving_cfg.port + (i if serving_cfg.port_per_process else 0) for i in range(serving_cfg.processes)]
        taken = _port_taken(serving_cfg.host, sorted(set(ports)))
        if taken:
            print(f"feedrank serve: {taken}", file=sys.stderr)
            return 1
    log_dir = data_path(config, "serving")
    processes_status = status_file(log_dir, serving_cfg.port)  # the supervisor's, named by the first port
    if worker is None and serving_cfg.processes > 1:
        return Supervisor(serving_cfg, list(args.argv), processes_status).run()
    if worker is not None and serving_cfg.port_per_process:
        serving_cfg = dataclasses.replace(serving_cfg, port=serving_cfg.port + int(worker))
    if worker is not None and serving_cfg.metrics_port:  # one Prometheus port per process
        serving_cfg = dataclasses.replace(serving_cfg, metrics_port=serving_cfg.metrics_port + int(worker))
    publisher = None
    if config.features.stream.enabled:  # served impressions also go to Kafka, for the stream consumer
        from features.stream.producer import EventPublisher
        from features.stream.topics import ensure_topics

        ensure_topics(config.features.stream)
        publisher = EventPublisher(config.features.stream).open()
    impressions = ImpressionLog(log_dir, publisher=publisher.publish_impressions if publisher else None).start()
    requests = RequestLog(log_dir).start()
    feature_log = (ServedFeatureLog(log_dir, share=config.serving.feature_sample_share).start()
                   if config.serving.feature_sample_share > 0 else None)
    features_dir = Path(args.features or Path(config.infra.data_dir) / "train" / "features")
    user_source = feast_user_source(config, features_dir) if (features_dir / "_feast").is_dir() else None
    router = build_router(config, impression_log=impressions, user_source=user_source, feature_log=feature_log)
    watcher = RolloutWatcher(router, data_path(config, config.infra.rollout.state_dir)).start()
    freshness = _freshness_probe(config, router, features_dir)
    import gc

    gc.collect()
    gc.freeze()  # DESIGN.md: full collections of the warmed-up heap set the p99 tail in a Feast process
    print(f"serving on {serving_cfg.host}:{serving_cfg.port} (champion {router.state.champion.versions.ranker}, "
          f"challenger share {router.state.challenger_share:.0%}); Ctrl-C stops", flush=True)
    health: list[ProcessesHealth] = []

    def started(server: Any) -> None:  # under a supervisor: report whether all its processes are ready
        if worker is not None:
            health.append(ProcessesHealth(server.health_servicer, processes_status).start())

    try:
        serve(serving_cfg, router, request_log=requests, on_ready=_report_ready, freshness=freshness,
              on_started=started)
    finally:
        for h in health:
            h.close()
        watcher.close()
        impressions.close()
        requests.close()
        if feature_log is not None:
            feature_log.close()
        if publisher is not None:
            publisher.close()
    return 0


def _freshness_probe(config: FeedrankConfig, router, features_dir: Path):
    """Model ages, the Feast views' materializations (when a repo is there) and the stream's
    watermark (when the stream is enabled), for the freshness gauge and the Status call."""
    from infra.stream_cli import state_path
    from serving.freshness import FreshnessProbe

    store = None
    if (features_dir / "_feast").is_dir():
        from features.store import open_store

        store = open_store(features_dir, config.features.feast)
    return FreshnessProbe(router, store=store,
                          stream_state=state_path(config) if config.features.stream.enabled else None)


def _report_ready(port: int) -> None:
    """Tell the supervisor (when there is one) that this process accepts calls on ``port``."""
    from infra.supervisor import READY_FD_ENV

    fd = os.environ.get(READY_FD_ENV)
    if fd:
        with os.fdopen(int(fd), "w") as pipe:
            pipe.write(f"{port}\n")


def _port_taken(host: str, ports: list[int]) -> str | None:
    """Why one of ``ports`` cannot be served on ``host`` (already listened on), or None when all are free.

    gRPC binds with SO_REUSEPORT, so a second server on a served port would silently share it
    with the first; a plain bind (SO_REUSEADDR, which passes TIME_WAIT remnants but not a
    listener) tells the port is served.
    """
    import socket

    for port in ports:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
            except OSError as exc:
                return f"port {port} on {host} is already in use ({exc.strerror}); is another feedrank serve running?"
    return None


def _cmd_rank(args: argparse.Namespace, config: FeedrankConfig) -> int:
    import grpc

    from serving.client import FeedClient, format_feed

    address = args.address or f"{config.serving.host}:{config.serving.port}"
    with FeedClient(address) as client:
        try:
            for user in args.user:
                print(format_feed(client.rank(user, k=args.k, device=args.device or "", hour=args.hour,
                                              explain=args.explain or bool(args.explain_top),
                                              explain_top=args.explain_top)))
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
    p.add_argument("--processes", type=int,
                   help="serving processes sharing the port (default serving.processes; one per core)")
    p.add_argument("--port-per-process", action="store_true", default=None,
                   help="process i listens on port + i instead (default serving.port_per_process)")
    p.add_argument("--features", help="ETL output with the Feast repo (default <data_dir>/train/features)")
    p.set_defaults(func=_cmd_serve)

    p = sub.add_parser("rank", help="ask a running server for feeds and print them",
                       description="Call RankFeed for each --user and print the feed as a table.")
    p.add_argument("--user", action="append", required=True, help="user id (repeatable)")
    p.add_argument("--k", type=int, default=10, help="feed length")
    p.add_argument("--device", help="mobile, desktop or tablet")
    p.add_argument("--hour", type=int, default=-1, help="request hour (default: now)")
    p.add_argument("--address", help="host:port (default serving.host:serving.port)")
    p.add_argument("--explain", action="store_true",
                   help="print each item's largest feature contributions (TreeSHAP) to the ranker's score and "
                        "the purchase model's log-odds, with the base values")
    p.add_argument("--explain-top", type=int, default=0,
                   help="contributions per model with --explain (default the server's, 5)")
    p.set_defaults(func=_cmd_rank)
