"""Stream benchmark: sustained events/s from the topic to the online store, and event-to-feature freshness.

Starts its own broker (Tansu on a free loopback port) and a Feast repo with the SQLite online store
in a temporary folder, then:

1. throughput: publishes a simulated log (``--rows`` rows, in event-time order) and times one
   consumer from its first record to the commit of the last (decode, validate, window state, push,
   commit);
2. freshness: a separate process publishes rows stamped with the wall clock at ``--rate`` rows/s
   for ``--seconds``; for every row, freshness = the time its batch's push into the online store
   returned minus its timestamp (so it includes the producer, the broker, the poll, validation, the
   state transaction and the push). A sample of rows is also read back from the online store.

Both runs also report the consumer thread's CPU time per event: on a shared machine the
wall-clock figures depend on what else runs, the CPU time much less.

Figures go to stdout and to ``--out`` (JSON).
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import platform
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from experiments.config import SimulatorConfig  # noqa: E402
from experiments.simulator import MarketplaceSimulator  # noqa: E402
from features.config import StreamConfig  # noqa: E402
from features.outputs import write_empty_feature_tables  # noqa: E402
from features.stream import (  # noqa: E402
    BatchReport,
    EventPublisher,
    FeastPushSink,
    StreamProcessor,
    WindowStore,
    ensure_topics,
)
from infra.config import load_config  # noqa: E402
from infra.replay import load_replay, replay_logs  # noqa: E402
from infra.services import start_kafka  # noqa: E402
from infra.stream_cli import open_feature_store  # noqa: E402


def _stream_config(bootstrap: str, name: str, **overrides: object) -> StreamConfig:
    base = StreamConfig(bootstrap_servers=bootstrap, impressions_topic=f"{name}.impressions",
                        events_topic=f"{name}.events", dead_letter_topic=f"{name}.dead-letter", group_id=name,
                        partitions=4, session_timeout_ms=6000, heartbeat_interval_ms=1000, progress_seconds=10.0)
    return replace(base, **overrides)


def _throughput(bootstrap: str, store, work: Path, rows: int, max_poll_records: int) -> dict:
    cfg = _stream_config(bootstrap, f"throughput{max_poll_records}", max_poll_records=max_poll_records)
    logs = work / "logs"
    if not logs.exists():
        sim = SimulatorConfig(users=5000, items=10000, sellers=500, days=max(1, int(np.ceil(rows / 200_000))), seed=1)
        MarketplaceSimulator(sim).run(logs, progress=False)
    ensure_topics(cfg)
    with EventPublisher(cfg) as publisher:
        report = replay_logs(logs, publisher, limit=rows, progress_seconds=0)
    published = sum(report.rows.values())
    times: list[float] = []
    cpu: list[float] = []

    def record(report: BatchReport) -> None:
        times.append(time.monotonic())
        cpu.append(report.seconds["cpu"])

    processor = StreamProcessor(cfg, WindowStore(work / f"throughput{max_poll_records}.sqlite"), FeastPushSink(store))
    stats = processor.run(idle_exit_s=5.0, on_batch=record)
    first_batch_end, last = times[0], times[-1]
    # the first batch's own work is not in [first_batch_end, last]: count its records out
    per_batch = stats.records / len(times)
    seconds = last - first_batch_end
    return {"rows_published": published, "publish_rows_per_s": round(report.rows_per_second),
            "records": stats.records, "applied": stats.applied, "batches": stats.batches,
            "seconds": round(seconds, 2), "events_per_s": round((stats.records - per_batch) / seconds),
            "feature_rows_pushed": stats.pushed_rows, "max_poll_records": cfg.max_poll_records,
            "consumer_cpu_ms_per_event": round(1000 * sum(cpu) / stats.records, 3)}


def _publish_at_rate(bootstrap: str, logs: str, rate: float, seconds: float) -> None:
    """Child process: the simulated log's rows in event-time order (requests of 20 impressions, their
    clicks, carts and purchases), re-stamped with the wall clock as they are sent, ``rate`` rows/s."""
    cfg = _stream_config(bootstrap, "freshness")
    imp, ev, order = load_replay(logs, limit=int(rate * seconds))
    n_imp = len(imp)
    tick = 0.01
    sent = 0
    with EventPublisher(cfg, client_id="bench-load") as publisher:
        start = time.monotonic()
        while sent < len(order) and (elapsed := time.monotonic() - start) < seconds:
            due = min(int(elapsed * rate) + 1, len(order))
            if due <= sent:
                time.sleep(tick / 2)
                continue
            rows = order[sent:due]
            now = pd.Timestamp.now(tz="UTC")
            part = rows[rows < n_imp]
            if len(part):
                publisher.publish("impressions", imp.iloc[part].assign(ts=now))
            part = rows[rows >= n_imp] - n_imp
            if len(part):
                publisher.publish("events", ev.iloc[part].assign(ts=now))
            sent = due


def _freshness(bootstrap: str, store, work: Path, rate: float, seconds: float) -> dict:
    """Freshness of the features of a live stream of ``rate`` rows/s (see the module docstring)."""
    cfg = _stream_config(bootstrap, "freshness")
    ensure_topics(cfg)
    lags: list[np.ndarray] = []
    stop = threading.Event()
    processor = StreamProcessor(cfg, WindowStore(work / "freshness.sqlite"), FeastPushSink(store))

    cpu: list[float] = []

    def record(report: BatchReport) -> None:
        cpu.append(report.seconds["cpu"])
        if len(report.event_ts_us):
            lags.append(report.pushed_at - report.event_ts_us / 1e6)

    imp, _, _ = load_replay(work / "logs", limit=int(rate * seconds))
    sample = imp["user_id"].drop_duplicates().to_numpy()[:200]
    began_us = time.time_ns() // 1000
    consumer = threading.Thread(target=processor.run, args=(stop,), kwargs={"on_batch": record})
    consumer.start()
    time.sleep(4.0)  # the consumer joins its group before the load starts
    load = multiprocessing.get_context("spawn").Process(target=_publish_at_rate,
                                                        args=(bootstrap, str(work / "logs"), rate, seconds))
    load.start()
    load.join()
    deadline = time.monotonic() + 30
    while processor.stats_.applied < rate * seconds * 0.99 and time.monotonic() < deadline:
        time.sleep(0.1)
    stop.set()
    consumer.join()
    values = np.concatenate(lags) * 1000
    warm = values[int(len(values) * 0.05):]  # leave out the first 5% (group join, first fetches)
    # the pushes landed: the sampled users' intraday rows carry this run's impressions
    online = store.get_online_features(features=["user_realtime:rt_last_view_us"],
                                       entity_rows=[{"user_id": int(u)} for u in sample]).to_dict()
    fresh_rows = sum(v is not None and v >= began_us for v in online["rt_last_view_us"])
    return {"rate_rows_per_s": rate, "seconds": seconds, "rows": int(len(values)),
            "applied": processor.stats_.applied, "batches": processor.stats_.batches,
            "p50_ms": round(float(np.percentile(warm, 50)), 1), "p99_ms": round(float(np.percentile(warm, 99)), 1),
            "max_ms": round(float(warm.max()), 1),
            "consumer_cpu_ms_per_event": round(1000 * sum(cpu) / max(processor.stats_.records, 1), 3),
            "sampled_users_read_back_from_this_run": f"{fresh_rows}/{len(sample)}"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000, help="rows of the throughput run")
    parser.add_argument("--rate", type=float, default=1000.0, help="rows/s of the freshness run")
    parser.add_argument("--seconds", type=float, default=30.0, help="length of the freshness run")
    parser.add_argument("--max-poll-records", type=int, nargs="+", default=[2000, 10000],
                        help="batch sizes of the throughput runs (features.stream.max_poll_records)")
    parser.add_argument("--skip-freshness", action="store_true")
    parser.add_argument("--out", help="write the figures here (JSON)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("kafka", "feast"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="bench-stream-") as tmp, start_kafka() as broker:
        work = Path(tmp)
        config = load_config(overrides={"features": {"feast": {"repo_dir": str(work / "feast")}},
                                        "infra": {"data_dir": str(work / "data")}})
        write_empty_feature_tables(work / "data" / "features", config.features.etl)
        store = open_feature_store(config, apply=True)
        throughput = []
        for size in args.max_poll_records:
            run = _throughput(broker.bootstrap_servers, store, work, args.rows, size)
            throughput.append(run)
            print(f"throughput (max_poll_records {size}): {run['records']:,} records in {run['seconds']} s -> "
                  f"{run['events_per_s']:,} events/s (topic -> online store, one consumer), "
                  f"{run['feature_rows_pushed'] / run['records']:.2f} feature rows pushed per event, "
                  f"consumer CPU {run['consumer_cpu_ms_per_event']} ms per event")
        freshness = None
        if not args.skip_freshness:
            freshness = _freshness(broker.bootstrap_servers, store, work, args.rate, args.seconds)
            print(f"freshness at {args.rate:,.0f} rows/s for {args.seconds:g} s: p50 {freshness['p50_ms']} ms, "
                  f"p99 {freshness['p99_ms']} ms (event timestamp -> push into the online store returned), "
                  f"consumer CPU {freshness['consumer_cpu_ms_per_event']} ms per event")
    result = {"throughput": throughput, "freshness": freshness,
              "machine": {"python": platform.python_version(), "cpus": multiprocessing.cpu_count(),
                          "load_average_1m": os.getloadavg()[0]}}
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
