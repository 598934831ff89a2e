"""``feedrank services up|down|status kafka`` and ``feedrank stream run|replay``.

Kept apart from :mod:`infra.cli` (which only registers them) so that Kafka, Feast and the
simulator are imported only when one of these commands runs. Exit codes: 0 done; 1 the
broker or the stream failed (printed); 2 invalid configuration (from the CLI).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from infra.config import FeedrankConfig

__all__ = ["add_stream_commands", "features_dir", "open_feature_store", "state_path"]


def _run_dir(config: FeedrankConfig) -> Path:
    return Path(config.infra.data_dir) / "run"


def state_path(config: FeedrankConfig) -> Path:
    """The window-state file: ``features.stream.state_path`` or ``<infra.data_dir>/stream/state.sqlite``."""
    stream = config.features.stream
    return Path(stream.state_path) if stream.state_path else Path(config.infra.data_dir) / "stream" / "state.sqlite"


def features_dir(config: FeedrankConfig) -> Path:
    """The ETL's output folder (``features.etl.out_dir`` or ``<infra.data_dir>/features``)."""
    out = config.features.etl.out_dir
    return Path(out) if out else Path(config.infra.data_dir) / "features"


def open_feature_store(config: FeedrankConfig, *, apply: bool = False) -> Any:
    """The Feast store the consumer pushes to, with the rolling views registered.

    Parameters
    ----------
    config : FeedrankConfig
    apply : bool
        Also apply the repo's own definitions first (``feedrank features apply``; needs the
        ETL's output tables).

    Raises
    ------
    feast.errors.EntityNotFoundException
        If the repo's entities are not registered yet (run ``feedrank features apply``).
    """
    from features.store import apply_definitions, open_store
    from features.stream.views import apply_rolling_views

    out = features_dir(config)
    store = open_store(out, config.features.feast)
    if apply:
        apply_definitions(store, out, config.features.etl)
    apply_rolling_views(store, out)
    return store


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[threading.Event]:
    """An event that SIGTERM and SIGINT set (the previous handlers come back afterwards)."""
    stop = threading.Event()

    def handler(signum: int, frame: object) -> None:
        print(f"feedrank stream: {signal.Signals(signum).name}, stopping after the current batch", file=sys.stderr)
        stop.set()

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield stop
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


# ---------------------------------------------------------------------- services
def _cmd_services(args: argparse.Namespace, config: FeedrankConfig) -> int:
    from infra.services import ServiceError, kafka_down, kafka_status, kafka_up

    address = config.features.stream.bootstrap_servers
    run_dir = _run_dir(config)
    try:
        if args.action == "up":
            pid, started = kafka_up(address, run_dir)
            print(f"kafka broker {'started' if started else 'already running'} on {address} (pid {pid}; "
                  f"log {run_dir / 'kafka.log'})")
        elif args.action == "down":
            print("kafka broker stopped" if kafka_down(run_dir) else "no kafka broker was running")
        else:
            status = kafka_status(run_dir)
            print(f"kafka broker running on 127.0.0.1:{status['port']} (pid {status['pid']})" if status
                  else "no kafka broker running")
    except (ServiceError, ValueError) as exc:
        print(f"feedrank services: {exc}", file=sys.stderr)
        return 1
    return 0


# ---------------------------------------------------------------------- stream
def _cmd_stream_run(args: argparse.Namespace, config: FeedrankConfig) -> int:
    from features.stream import FeastPushSink, StreamProcessor, WindowStore

    cfg = config.features.stream
    logging.getLogger("feast.infra.registry.registry").setLevel(logging.WARNING)  # a line per registry read
    try:
        sink = FeastPushSink(open_feature_store(config))
        sink.targets()  # fail now, not at the first batch, when a push source is missing
    except LookupError as exc:
        print(f"feedrank stream: {exc}", file=sys.stderr)
        return 1
    store = WindowStore(args.state or state_path(config), allowed_lateness_s=cfg.allowed_lateness_s,
                        idle_partition_s=cfg.idle_partition_s)
    processor = StreamProcessor(cfg, store, sink, validation=config.features.validation)
    try:
        with _stop_on_signals() as stop:
            stats = processor.run(stop, max_seconds=args.max_seconds, idle_exit_s=args.idle_exit)
    finally:
        store.close()
    print(f"stream: {stats.records:,} records ({stats.rate():,.0f}/s): {stats.applied:,} applied, "
          f"{stats.duplicates:,} duplicates, {stats.late:,} late, {stats.dead_lettered:,} dead-lettered, "
          f"{stats.pushed_rows:,} feature rows pushed")
    return 0


def _cmd_stream_replay(args: argparse.Namespace, config: FeedrankConfig) -> int:
    from features.stream import EventPublisher, ensure_topics
    from infra.replay import replay_logs

    logs = Path(args.logs or Path(config.infra.data_dir) / "logs")
    if args.simulate:
        from experiments.simulator import MarketplaceSimulator

        sim = config.experiments.simulator
        print(f"simulating {sim.users:,} users, {sim.days} days -> {logs}")
        MarketplaceSimulator(sim).run(logs, progress=True)
    cfg = config.features.stream
    ensure_topics(cfg)
    pace = f"{args.speedup:g}x event time" if args.speedup else "as fast as possible"
    print(f"replaying {logs} to {cfg.bootstrap_servers} ({pace})")
    with _stop_on_signals() as stop, EventPublisher(cfg, client_id="feedrank-replay") as publisher:
        report = replay_logs(logs, publisher, speedup=args.speedup, start=args.start, end=args.end,
                             limit=args.limit, progress_seconds=cfg.progress_seconds, stop=stop)
    print(f"published {report.rows['impressions']:,} impressions and {report.rows['events']:,} events "
          f"({report.first_ts} .. {report.last_ts}) in {report.seconds:.1f} s ({report.rows_per_second:,.0f}/s)")
    return 0


def add_stream_commands(sub: Any) -> None:
    """Register ``services`` and ``stream`` on the CLI's subparsers."""
    p = sub.add_parser("services", help="start or stop the local Kafka broker",
                       description="Run the local Kafka-protocol broker (Tansu, in memory, 127.0.0.1 only) at "
                                   "features.stream.bootstrap_servers, in the background.")
    p.add_argument("action", choices=("up", "down", "status"))
    p.add_argument("service", choices=("kafka",))
    p.set_defaults(func=_cmd_services)

    stream = sub.add_parser("stream", help="live events: run the consumer, replay logs",
                            description="Real-time features from live impressions and events.")
    commands = stream.add_subparsers(dest="stream_command", required=True, metavar="COMMAND")
    p = commands.add_parser("run", help="consume live events into the online store",
                            description="Join the consumer group, keep rolling counts and intraday rows in the "
                                        "window state, push them through the Feast push sources; commits offsets "
                                        "after each push. Stops on SIGTERM/SIGINT.")
    p.add_argument("--state", help="window-state file (default: features.stream.state_path)")
    p.add_argument("--max-seconds", type=float, help="stop after this long")
    p.add_argument("--idle-exit", type=float, metavar="SECONDS", help="stop once no record came for this long")
    p.set_defaults(func=_cmd_stream_run)

    p = commands.add_parser("replay", help="publish logged impressions and events as a live stream",
                            description="Publish contract logs in event-time order, keyed by user id.")
    p.add_argument("logs", nargs="?", help="log folder (default: <infra.data_dir>/logs)")
    p.add_argument("--simulate", action="store_true", help="simulate the marketplace into LOGS first")
    p.add_argument("--speedup", type=float, help="event-time seconds per second (default: as fast as possible)")
    p.add_argument("--start", help="first event time to publish (ISO-8601)")
    p.add_argument("--end", help="publish event times before this (ISO-8601)")
    p.add_argument("--limit", type=int, help="publish only the first N rows")
    p.set_defaults(func=_cmd_stream_replay)
