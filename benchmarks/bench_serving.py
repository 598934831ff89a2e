"""Benchmark: the FeedRanker gRPC service under closed-loop load from separate client processes.

Issue 7's targets on 2 cores, 100k-item catalog, ``candidate_count`` 500, ``k`` 50: p99 at most
20 ms at concurrency 1; at least 200 requests/s with p99 at most 50 ms at concurrency 8.

    python benchmarks/bench_serving.py --out build/bench/serving.json
    python benchmarks/bench_serving.py --quick          # smoke test: small catalog, short runs

The served bundle is a real one, trained by the batch job (``infra.train.run_training``: Spark
ETL, Feast, two-tower + FAISS, LightGBM + calibration, compiled when a C compiler is there) on
a small simulated marketplace whose catalog is ``--items`` items (default 100,000): few users
and days keep training to a few minutes, and every item is encoded, indexed and snapshotted.
It is cached under ``--work`` by its parameters, so later runs start serving at once. The
server runs in this process exactly as ``feedrank serve`` wires it (user rows read online
from Feast's SQLite store with the bundle's snapshot as fallback, impressions and requests
logged to Parquet, heap frozen after warm-up); the clients are ``--client-procs`` separate
processes whose threads each keep one call in flight (closed loop) on 127.0.0.1.

End-to-end latency is measured by the clients; the per-stage latencies (``queue``, the wait
for a ranking slot, then ``retrieve``, ``features``, ``score``, ``rerank`` and the handler's
``total``) are the values the server
observes into its Prometheus histogram, recorded exactly here rather than read from buckets.
The machines are shared: the JSON records the load average before and after each level.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing as mp
import os
import platform
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

logger = logging.getLogger("bench_serving")

STAGES = ("queue", "retrieve", "features", "score", "rerank", "total")
PCTS = (50, 95, 99)


# --------------------------------------------------------------------------- the bundle
def build_bundle(work: Path, *, items: int, users: int, days: int, seed: int) -> tuple[Path, Path, dict[str, Any]]:
    """Train (or reuse) a bundle over a simulated marketplace of ``items`` items.

    Returns ``(bundle_dir, features_dir, info)``; ``info`` holds the parameters, the training
    steps' seconds and whether the offline evaluation gate passed.
    """
    key = f"items{items}-users{users}-days{days}-seed{seed}"
    root = work / key
    info_path = root / "bench_bundle.json"
    if info_path.exists():
        info = json.loads(info_path.read_text())
        logger.info("reusing the bundle trained earlier in %s", root)
        return Path(info["bundle_dir"]), Path(info["features_dir"]), info

    from experiments.simulator import MarketplaceSimulator
    from infra.train import EvaluationGateError, run_training

    config = _config(root, items=items, users=users, days=days, seed=seed)
    start = time.perf_counter()
    if not (root / "train" / "train_state.json").exists():  # else an interrupted run resumes its training
        MarketplaceSimulator(config.experiments.simulator).run(root / "logs", progress=False)
    gate_passed, gate_message = True, ""
    try:
        report = run_training(config, logs_dir=root / "logs", run_dir=root / "train", register=False)
        steps = {k: v.get("seconds") for k, v in report.steps.items()}
        bundle = report.bundle_dir
    except EvaluationGateError as exc:  # the bundle is complete (snapshots precede the gate); latency holds
        gate_passed, gate_message = False, str(exc)
        steps, bundle = {}, root / "train" / "bundle"
    info = {"items": items, "users": users, "days": days, "seed": seed, "bundle_dir": str(bundle),
            "features_dir": str(root / "train" / "features"), "train_seconds": round(time.perf_counter() - start, 1),
            "steps_seconds": steps, "evaluation_gate_passed": gate_passed, "evaluation_gate_message": gate_message}
    info_path.write_text(json.dumps(info, indent=2))
    return Path(info["bundle_dir"]), Path(info["features_dir"]), info


def _model_sizes(bundle: Path) -> dict[str, int]:
    """Trees in the bundle's LightGBM text models (what the compiled libraries evaluate)."""
    out = {}
    for name in ("ranker", "purchase"):
        path = bundle / "ranking" / f"{name}.txt"
        if path.exists():
            with path.open() as fh:
                out[f"{name}_trees"] = sum(1 for line in fh if line.startswith("Tree="))
    return out


def _config(root: Path, *, items: int, users: int, days: int, seed: int):
    from infra.config import load_config

    return load_config(env={}, overrides={
        "experiments": {"simulator": {"users": users, "items": items, "sellers": max(20, items // 50),
                                      "categories": 40, "days": days, "randomized_share": 0.25, "seed": seed}},
        "features": {"spark": {"master": "local[2]", "shuffle_partitions": 4, "progress_seconds": 0}},
        "retrieval": {"training": {"max_epochs": 2, "batch_size": 512, "num_threads": 1}},
        # a few thousand training rows stop early at a handful of trees; the full 300 rounds give
        # the model size production serves (DESIGN.md budgets scoring at 300 trees of 31 leaves)
        "ranking": {"purchase_label": "purchased_24h", "ranker": {"early_stopping_rounds": 0},
                    "purchase": {"early_stopping_rounds": 0}},
        "infra": {"data_dir": str(root / "data")},
    })


# --------------------------------------------------------------------------- the server
class _RecordingHistogram:
    """Stands in for the stage-latency histogram: observes into it and keeps (time, stage, ms)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.records: list[tuple[float, str, float]] = []
        self._lock = threading.Lock()

    def labels(self, *, stage: str, arm: str) -> Any:
        child = self._inner.labels(stage=stage, arm=arm)
        outer = self

        class _Child:
            def observe(self, ms: float) -> None:
                child.observe(ms)
                with outer._lock:
                    outer.records.append((time.time(), stage, ms))

        return _Child()

    def take(self, t0: float, t1: float) -> dict[str, np.ndarray]:
        with self._lock:
            records, self.records = self.records, []
        out: dict[str, list[float]] = {s: [] for s in STAGES}
        for ts, stage, ms in records:
            if t0 <= ts <= t1 and stage in out:
                out[stage].append(ms)
        return {s: np.asarray(v) for s, v in out.items()}


def start_server(bundle: Path, features_dir: Path, *, log_dir: Path, feast: bool, max_workers: int,
                 ranking_slots: int, retrieval_batch: int, address: str = "127.0.0.1:0"):
    """The server as ``feedrank serve`` builds it, over one bundle.

    Returns a namespace: ``server``, ``port``, ``recorder``, ``closers``, ``known`` (user ids of
    the bundle), ``feast`` (user rows read online), ``items``, ``pipeline``, ``limits``.
    """
    from infra.config import load_config
    from infra.serve import feast_user_source
    from serving.config import ServingConfig
    from serving.impression_log import ImpressionLog, RequestLog
    from serving.metrics import ServingMetrics
    from serving.model_pipeline import ModelPipeline
    from serving.rerank import Reranker
    from serving.router import Router, RouterState
    from serving.server import create_server

    config = load_config(env={}, overrides={})
    cfg = ServingConfig(max_workers=max_workers, ranking_slots=ranking_slots, retrieval_batch=retrieval_batch,
                        rerank=config.serving.rerank, exploration=config.serving.exploration)
    impressions = ImpressionLog(log_dir).start()
    requests = RequestLog(log_dir).start()
    user_source = feast_user_source(config, features_dir) if feast and (features_dir / "_feast").is_dir() else None
    if feast and user_source is None:
        logger.warning("no Feast repo in %s: user rows come from the bundle snapshot", features_dir)
    pipeline = ModelPipeline.from_bundle(bundle, version="bench", reranker=Reranker(cfg.rerank),
                                         exploration=cfg.exploration, impression_log=impressions,
                                         user_source=user_source)
    router = Router(lambda: RouterState(champion=pipeline, challenger=None, challenger_share=0.0,
                                        salt=cfg.rollout_salt))
    metrics = ServingMetrics()
    recorder = _RecordingHistogram(metrics.stage_latency)
    metrics.stage_latency = recorder  # type: ignore[assignment]
    server, port = create_server(cfg, router, address=address, metrics=metrics, request_log=requests)
    import pandas as pd

    from serving.bundle import read_bundle_manifest
    from serving.model_pipeline import USER_SNAPSHOT

    users = read_bundle_manifest(bundle).components.get("user_snapshot", USER_SNAPSHOT)
    known = np.sort(pd.read_parquet(bundle / users, columns=["user_id"])["user_id"].to_numpy(np.int64))
    return SimpleNamespace(server=server, port=port, recorder=recorder, closers=(impressions, requests),
                           known=known, feast=user_source is not None, items=len(pipeline.snapshot),
                           pipeline=pipeline, limits=cfg.limits)


def _server_process(bundle: str, features_dir: str, log_dir: str, feast: bool, max_workers: int, ranking_slots: int,
                    retrieval_batch: int, address: str, candidates: int, k: int, commands: Any,
                    replies: Any) -> None:
    """One serving process: load, warm up, freeze the heap, then answer ``take``/``stop`` commands."""
    import gc

    logging.basicConfig(level=logging.WARNING)
    srv = start_server(Path(bundle), Path(features_dir), log_dir=Path(log_dir), feast=feast,
                       max_workers=max_workers, ranking_slots=ranking_slots, retrieval_batch=retrieval_batch,
                       address=address)
    try:
        _warm(srv, candidates, k)
        gc.collect()
        gc.freeze()  # as feedrank serve does after loading
        replies.put(("ready", srv.port, srv.known, srv.feast, srv.items))
        while True:
            command = commands.get()
            if command[0] != "take":
                break
            replies.put(("stages", srv.recorder.take(command[1], command[2])))
    finally:
        from serving.server import stop_gracefully

        stop_gracefully(srv.server, 1.0)
        for closer in srv.closers:
            closer.close()


def _warm(srv: SimpleNamespace, candidates: int, k: int, calls: int = 50) -> None:
    """Requests straight through the pipeline (the port may be shared), so code paths and caches are warm."""
    from serving.metrics import StageTimer
    from serving.proto_gen import feedrank_pb2 as pb
    from serving.requests import parse_request

    for i in range(calls):
        user = int(srv.known[i % len(srv.known)]) if i % 10 else 10**9 + i
        request = parse_request(pb.RankFeedRequest(request_id=f"warm-{i}", user_id=str(user), k=k,
                                                   candidate_count=candidates,
                                                   context=pb.Context(device="mobile", hour=i % 24)), srv.limits)
        srv.pipeline.rank(request, arm="champion", timer=StageTimer(), deadline=None)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --------------------------------------------------------------------------- the clients
def _client_process(targets: list[str], seed: int, user_ids: list[int], candidates: int, k: int,
                    t_start: float, t0: float, t1: float, out: Any) -> None:
    """Closed loop: a thread per target (its own connection), one call in flight each, from ``t_start`` to ``t1``.

    Puts ``(latencies_ms of calls started in [t0, t1) and finished, errors)`` on ``out``.
    """
    import grpc

    from serving.proto_gen import feedrank_pb2 as pb
    from serving.proto_gen import feedrank_pb2_grpc as pb_grpc

    # one connection per thread (a local subchannel pool), so that several server processes
    # sharing the port through SO_REUSEPORT each get a share of the connections
    # (a target "ipv4:a,b" is every server process's port: gRPC's round_robin policy sends each
    # call to the next one)
    channels = [grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)]
                                      + ([("grpc.lb_policy_name", "round_robin")] if "," in target else []))
                for target in targets]
    threads = len(channels)
    for channel in channels:
        grpc.channel_ready_future(channel).result(timeout=30)
    lat: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    devices = ("mobile", "desktop", "tablet")

    def loop(tid: int) -> None:
        stub = pb_grpc.FeedRankerStub(channels[tid])
        rng = np.random.default_rng([seed, tid])
        mine, bad = [], []
        i = 0
        while time.time() < t_start:
            time.sleep(0.001)
        while True:
            begin = time.time()
            if begin >= t1:
                break
            user = user_ids[int(rng.integers(len(user_ids)))]
            request = pb.RankFeedRequest(
                request_id=f"b{seed}-{tid}-{i}", user_id=str(user), k=k, candidate_count=candidates,
                context=pb.Context(device=devices[i % 3], country="DE", hour=int(rng.integers(24)), day_of_week=2))
            i += 1
            t = time.perf_counter()
            try:
                stub.RankFeed(request, timeout=5.0)
                ok = True
            except grpc.RpcError as exc:
                ok = False
                if begin >= t0:
                    bad.append(exc.code().name)
            ms = (time.perf_counter() - t) * 1000.0
            if ok and begin >= t0 and time.time() <= t1 + 5.0:
                mine.append(ms)
        with lock:
            lat.extend(mine)
            errors.extend(bad)

    workers = [threading.Thread(target=loop, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    for channel in channels:
        channel.close()
    out.put((lat, errors))


def run_level(targets: list[str], concurrency: int, *, procs: int, user_ids: np.ndarray, candidates: int, k: int,
              warmup: float, duration: float, servers: list[tuple[Any, Any]]) -> dict[str, Any]:
    """One closed-loop run at ``concurrency`` calls in flight; latencies and throughput of its window."""
    ctx = mp.get_context("spawn")  # fork after grpc started is unsafe; the clients import only grpc and stubs
    queue = ctx.Queue()
    procs = max(1, min(procs, concurrency))
    per = [concurrency // procs + (1 if i < concurrency % procs else 0) for i in range(procs)]
    load_before = os.getloadavg()
    startup = 3.0 + 0.5 * procs  # spawned interpreters import grpc before the start time
    t_start = time.time() + startup
    t0, t1 = t_start + warmup, t_start + warmup + duration
    ids = [int(u) for u in user_ids]
    # call g (of all processes' threads) goes through targets[g % len(targets)]: with a port per
    # server process, the connections are spread evenly over them
    first = np.cumsum([0] + per)
    clients = [ctx.Process(target=_client_process, args=(
        [targets[(first[p] + t) % len(targets)] for t in range(n)], 1000 * concurrency + p, ids, candidates, k,
        t_start, t0, t1, queue)) for p, n in enumerate(per)]
    for c in clients:
        c.start()
    results = [queue.get(timeout=startup + warmup + duration + 120) for _ in clients]
    for c in clients:
        c.join(timeout=30)
    lat = np.concatenate([np.asarray(r[0], dtype=np.float64) for r in results])
    errors = [e for r in results for e in r[1]]
    parts = []
    for commands, replies in servers:
        commands.put(("take", t0, t1))
        parts.append(replies.get(timeout=60)[1])
    stages = {s: np.concatenate([p[s] for p in parts]) for s in STAGES}
    out: dict[str, Any] = {
        "concurrency": concurrency, "client_processes": procs, "server_processes": len(servers),
        "requests_per_server_process": [int(len(p["total"])) for p in parts],  # the balance
        "duration_s": duration,
        "requests": int(len(lat)), "errors": len(errors), "error_codes": sorted(set(errors)),
        "throughput_rps": round(len(lat) / duration, 1),
        "end_to_end_ms": _pcts(lat),
        "stages_ms": {s: _pcts(v) for s, v in stages.items()},
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
    }
    return out


def _pcts(values: np.ndarray) -> dict[str, float | None]:
    if len(values) == 0:
        return {f"p{p}": None for p in PCTS} | {"mean": None, "n": 0}
    q = np.percentile(values, PCTS)
    return {f"p{p}": round(float(v), 3) for p, v in zip(PCTS, q, strict=True)} | {
        "mean": round(float(values.mean()), 3), "n": int(len(values))}


def _table(levels: list[dict[str, Any]]) -> str:
    head = f"{'c':>3} {'rps':>7} {'err':>4} {'metric':>9} " + " ".join(f"{'p' + str(p):>8}" for p in PCTS)
    lines = [head, "-" * len(head)]
    for lv in levels:
        rows = [("e2e", lv["end_to_end_ms"])] + [(s, lv["stages_ms"][s]) for s in STAGES]
        for j, (name, d) in enumerate(rows):
            lead = (f"{lv['concurrency']:>3} {lv['throughput_rps']:>7.1f} {lv['errors']:>4}" if j == 0
                    else " " * 16)
            cells = " ".join(f"{d[f'p{p}']:>8.2f}" if d[f"p{p}"] is not None else f"{'-':>8}" for p in PCTS)
            lines.append(f"{lead} {name:>9} {cells}")
    return "\n".join(lines)


def _verdict(levels: list[dict[str, Any]]) -> dict[str, Any]:
    by_c = {lv["concurrency"]: lv for lv in levels}
    out: dict[str, Any] = {}
    if 1 in by_c:
        p99 = by_c[1]["end_to_end_ms"]["p99"]
        out["c1_p99_le_20ms"] = p99 is not None and p99 <= 20.0
    if 8 in by_c:
        lv = by_c[8]
        out["c8_ge_200rps_p99_le_50ms"] = (lv["throughput_rps"] >= 200.0 and lv["end_to_end_ms"]["p99"] is not None
                                           and lv["end_to_end_ms"]["p99"] <= 50.0)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=100_000, help="catalog size (default 100000)")
    parser.add_argument("--users", type=int, default=1500, help="simulated users the bundle is trained on")
    parser.add_argument("--days", type=int, default=3, help="simulated days the bundle is trained on")
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--candidates", type=int, default=500, help="candidate_count per request")
    parser.add_argument("-k", type=int, default=50, help="feed length k per request")
    parser.add_argument("--concurrency", default="1,8,32", help="comma-separated calls in flight")
    parser.add_argument("--duration", type=float, default=20.0, help="measured seconds per level")
    parser.add_argument("--warmup", type=float, default=3.0, help="unmeasured seconds per level")
    parser.add_argument("--client-procs", type=int, default=1,
                        help="client processes (at most the concurrency); each runs its calls in threads")
    from serving.config import ServingConfig

    serving = ServingConfig()  # the server options default to what feedrank serve runs with
    parser.add_argument("--max-workers", type=int, default=serving.max_workers,
                        help="server threads (serving.max_workers)")
    parser.add_argument("--ranking-slots", type=int, default=serving.ranking_slots,
                        help="pipelines a server process computes at once, the rest queue in arrival order "
                             "(serving.ranking_slots; 0: no limit)")
    parser.add_argument("--retrieval-batch", type=int, default=serving.retrieval_batch,
                        help="calls whose candidates a slot holder fetches in one batch (serving.retrieval_batch)")
    parser.add_argument("--server-procs", type=int, default=1,
                        help="serving processes (feedrank serve --processes); see --balance")
    parser.add_argument("--balance", choices=("reuseport", "ports", "round_robin"), default="reuseport",
                        help="several server processes: share one port, the kernel spreading connections "
                             "(reuseport: feedrank serve --processes N); a port each, client connections spread evenly over them "
                             "(ports: feedrank serve --processes N --port-per-process); "
                             "a port each, every connection rotating its calls over all (gRPC round_robin)")
    parser.add_argument("--no-feast", action="store_true", help="user rows from the bundle snapshot, not Feast")
    parser.add_argument("--work", default="build/bench/serving_work", help="cache of trained bundles")
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: 5000 items, 400 users, 2 days, c=1,4, 2 s per level")
    parser.add_argument("--out", help="write the figures as JSON here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    for noisy in ("py4j", "feast", "feedrank.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if args.quick:
        args.items, args.users, args.days = 5000, 400, 2
        args.concurrency, args.duration, args.warmup = "1,4", 2.0, 1.0
    levels_c = [int(c) for c in args.concurrency.split(",") if c]

    import tempfile

    bundle, features_dir, info = build_bundle(Path(args.work), items=args.items, users=args.users, days=args.days,
                                              seed=args.seed)
    ctx = mp.get_context("spawn")
    if args.balance == "reuseport" or args.server_procs == 1:  # one port, shared through SO_REUSEPORT
        server_addresses = [f"127.0.0.1:{_free_port()}"] * args.server_procs
        targets = server_addresses[:1]
    else:
        ports: set[int] = set()
        while len(ports) < args.server_procs:
            ports.add(_free_port())
        server_addresses = [f"127.0.0.1:{port}" for port in sorted(ports)]
        targets = (server_addresses if args.balance == "ports"
                   else ["ipv4:" + ",".join(server_addresses)])
    with tempfile.TemporaryDirectory(prefix="bench-serving-logs-") as log_dir:
        servers, procs = [], []
        for i in range(args.server_procs):
            commands, replies = ctx.Queue(), ctx.Queue()
            proc = ctx.Process(target=_server_process, args=(
                str(bundle), str(features_dir), str(Path(log_dir) / f"server{i}"), not args.no_feast,
                args.max_workers, args.ranking_slots, args.retrieval_batch, server_addresses[i], args.candidates, args.k, commands, replies))
            proc.start()
            servers.append((commands, replies))
            procs.append(proc)
        try:
            ready = [replies.get(timeout=600) for _, replies in servers]
            _, _, known, feast_on, n_items = ready[0]
            # a tenth of the calls are for users the bundle has never seen (the cold-start path)
            unknown = np.arange(10**9, 10**9 + max(1, len(known) // 9), dtype=np.int64)
            user_ids = np.concatenate([known, unknown])
            levels = []
            for c in levels_c:
                logger.info("concurrency %d: %.0f s warm-up, %.0f s measured", c, args.warmup, args.duration)
                levels.append(run_level(targets, c, procs=args.client_procs, user_ids=user_ids,
                                        candidates=args.candidates, k=args.k, warmup=args.warmup,
                                        duration=args.duration, servers=servers))
        finally:
            for commands, _ in servers:
                commands.put(("stop",))
            for proc in procs:
                proc.join(timeout=30)
    result = {
        "benchmark": "serving", "catalog_items": n_items, "candidate_count": args.candidates, "k": args.k,
        "feast_online_users": feast_on, "server_processes": args.server_procs, "server_threads": args.max_workers,
        "ranking_slots": args.ranking_slots, "retrieval_batch": args.retrieval_batch,
        "balance": args.balance if args.server_procs > 1 else "one process",
        "bundle": info | _model_sizes(bundle),
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count()},
        "levels": levels, "targets": _verdict(levels),
    }
    print(f"FeedRanker over gRPC on 127.0.0.1 ({args.server_procs} server process(es), {args.max_workers} threads "
          f"and {args.ranking_slots or 'unlimited'} ranking slot(s) each): {n_items} items, candidate_count {args.candidates}, k {args.k}, "
          f"user rows from {'Feast (SQLite online store)' if feast_on else 'the bundle snapshot'}")
    print(_table(levels))
    for lv in levels:
        print(f"c={lv['concurrency']}: load average before {lv['load_average_before']}, "
              f"after {lv['load_average_after']}")
    print("targets:", json.dumps(result["targets"]))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
