"""``feedrank train``, ``feedrank serve`` and ``feedrank rank``."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from infra.config import FeedrankConfig

if TYPE_CHECKING:
    from serving.config import ServingConfig

__all__ = ["add_serving_commands"]

logger = logging.getLogger("feedrank")

# Set in the serving processes `feedrank serve --processes N` starts: the process's index, and the
# file descriptor on which it reports its port once it accepts calls.
WORKER_ENV = "FEEDRANK_SERVE_WORKER"
READY_FD_ENV = "FEEDRANK_SERVE_READY_FD"
# A serving process that exits sooner than this after it got ready is failing, not crashing once:
# the supervisor stops instead of restarting it in a loop.
MIN_UPTIME_SECONDS = 10.0


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
    if worker is None and serving_cfg.processes > 1:
        return _supervise(serving_cfg, list(args.argv))
    if worker is not None and serving_cfg.port_per_process:
        serving_cfg = dataclasses.replace(serving_cfg, port=serving_cfg.port + int(worker))
    if worker is not None and serving_cfg.metrics_port:  # one Prometheus port per process
        serving_cfg = dataclasses.replace(serving_cfg, metrics_port=serving_cfg.metrics_port + int(worker))
    log_dir = data_path(config, "serving")
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
    try:
        serve(serving_cfg, router, request_log=requests, on_ready=_report_ready, freshness=freshness)
    finally:
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
    fd = os.environ.get(READY_FD_ENV)
    if fd:
        with os.fdopen(int(fd), "w") as pipe:
            pipe.write(f"{port}\n")


def _supervise(cfg: ServingConfig, argv: list[str]) -> int:
    """Run ``cfg.processes`` copies of this ``feedrank serve`` command on one port until SIGTERM/SIGINT.

    Each copy is a full serving process (its own router, rollout watcher, logs and, when
    ``metrics_port`` is set, Prometheus port ``metrics_port + index``); they bind the same port,
    which gRPC opens with SO_REUSEPORT on Linux, so the kernel spreads connections over them
    (with ``port_per_process``, copy ``index`` binds ``port + index`` instead).
    They start one after another, each once the previous one accepts calls. A process that dies
    later is started again; one that fails while starting, or dies within
    ``MIN_UPTIME_SECONDS`` of being ready, stops them all (exit code 1). SIGTERM is passed on,
    so each drains its calls within ``grace_seconds``; the exit code is 0 when all stopped cleanly.
    """
    import select
    import signal
    import subprocess
    import threading
    import time

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    children: dict[int, tuple[subprocess.Popen, float]] = {}  # index -> (process, monotonic time it got ready)

    def start(index: int) -> bool:
        """Start process ``index`` and wait until it accepts calls; False if it exits first (or on stop)."""
        read_fd, write_fd = os.pipe()
        env = {**os.environ, WORKER_ENV: str(index), READY_FD_ENV: str(write_fd)}
        proc = subprocess.Popen([sys.executable, "-m", "infra.cli", *argv], env=env, pass_fds=(write_fd,))
        os.close(write_fd)
        children[index] = (proc, float("inf"))
        with os.fdopen(read_fd) as pipe:
            while not stop.is_set():
                if select.select([pipe], [], [], 0.5)[0]:
                    if pipe.readline().strip():  # its port; "" when it exited first
                        children[index] = (proc, time.monotonic())
                        return True
                    break
        if not stop.is_set():
            print(f"feedrank serve: serving process {index} (pid {proc.pid}) failed to start "
                  f"(exit code {proc.wait()}); stopping", file=sys.stderr)
        return False

    def run() -> int:
        for i in range(cfg.processes):
            if not start(i):
                return 0 if stop.is_set() else 1
        where = (f"ports {cfg.port}-{cfg.port + cfg.processes - 1} (one each)" if cfg.port_per_process
                 else f"{cfg.host}:{cfg.port}")
        print(f"serving on {where} with {cfg.processes} processes "
              f"(pids {', '.join(str(p.pid) for p, _ in children.values())}); Ctrl-C stops", flush=True)
        while not stop.wait(0.5):
            for i, (proc, ready_at) in list(children.items()):
                exit_code = proc.poll()
                if exit_code is None:
                    continue
                if time.monotonic() - ready_at < MIN_UPTIME_SECONDS:
                    print(f"feedrank serve: serving process {i} (pid {proc.pid}) exited with {exit_code} "
                          f"within {MIN_UPTIME_SECONDS:.0f} s of starting; stopping", file=sys.stderr)
                    return 1
                logger.error("serving process %d (pid %d) exited with %d; starting it again", i, proc.pid, exit_code)
                if not start(i):
                    return 0 if stop.is_set() else 1
        return 0

    try:
        code = run()
    finally:
        for proc, _ in children.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + cfg.grace_seconds + 30.0  # a process may still be loading its models
        for proc, _ in children.values():
            try:
                proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                logger.error("serving process pid %d did not stop; killing it", proc.pid)
                proc.kill()
                proc.wait()
    if code == 0 and any(proc.returncode != 0 for proc, _ in children.values()):
        print("feedrank serve: a serving process did not stop cleanly (exit codes "
              f"{[proc.returncode for proc, _ in children.values()]})", file=sys.stderr)
        return 1
    return code


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
