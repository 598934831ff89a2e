"""Benchmark: what ``explain`` and the served-feature sample cost a RankFeed call.

    python benchmarks/bench_explain.py --out build/bench/explain.json
    python benchmarks/bench_explain.py --items 100000 --users 1500 --days 3   # bench_serving's bundle

The bundle is ``bench_serving``'s (trained by the batch job, 300 trees per model, cached under
``--work``); the server is built as there (``feedrank serve``'s wiring, user rows from Feast).
One client in this process keeps one call in flight (concurrency 1) and cycles through blocks
of ``--calls`` calls in each mode, so the shared machine's load drifts over all modes alike:

- ``plain``: no explain, no feature sample (what every call paid before);
- ``plain-again``: the same again, so the table shows the noise between two identical blocks;
- ``sampled``: every call's served feature vectors go to a ``ServedFeatureLog`` (share 1.0:
  the worst case of the default 1%);
- ``explain``: ``explain = true`` with the default 5 contributions per model.

Client latencies are end to end over gRPC on 127.0.0.1; the server's own ``explain`` stage
(LightGBM ``pred_contrib`` of both models on the k served rows) is recorded as well.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

logger = logging.getLogger("bench_explain")

MODES = ("plain", "plain-again", "sampled", "explain")


def _pcts(values: list[float]) -> dict[str, float]:
    arr = np.asarray(values)
    return {f"p{p}": round(float(np.percentile(arr, p)), 3) for p in (50, 90, 99)} | {
        "mean": round(float(arr.mean()), 3), "n": len(arr)}


def _explain_cpu(pipeline, candidates: int) -> dict[int, float]:
    """CPU milliseconds of ``explainer.explain`` on real assembled rows, by row count: a figure the
    shared machine's load does not inflate, unlike the wall-clock latencies."""
    from serving.config import LimitsConfig
    from serving.proto_gen import feedrank_pb2 as pb
    from serving.requests import parse_request

    user = pipeline.users
    request = parse_request(pb.RankFeedRequest(request_id="cpu", user_id="1", k=10, candidate_count=candidates),
                            LimitsConfig())
    rows = pipeline._retrieve([request])[0]
    snap, rt, _ = user.user_rows(1)
    X = pipeline.assembler.assemble(ts_us=request.ts_us, device="mobile", user_row=snap, realtime_row=rt, rows=rows)
    out = {}
    for n in (1, 10, 50):
        times = []
        for _ in range(20):
            t0 = time.process_time()
            pipeline.explainer.explain(X[:n], top=5)
            times.append((time.process_time() - t0) * 1000.0)
        out[n] = round(float(np.median(times)), 3)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=5000, help="catalog size (default 5000)")
    parser.add_argument("--users", type=int, default=600)
    parser.add_argument("--days", type=int, default=2)
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--candidates", type=int, default=500)
    parser.add_argument("-k", type=int, default=50)
    parser.add_argument("--calls", type=int, default=200, help="calls per block")
    parser.add_argument("--rounds", type=int, default=5, help="blocks per mode (modes alternate)")
    parser.add_argument("--work", default="build/bench/serving_work", help="cache of trained bundles")
    parser.add_argument("--out", help="write the figures as JSON here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    for noisy in ("py4j", "feast", "feedrank.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    import gc

    import grpc
    from bench_serving import _model_sizes, _warm, build_bundle, start_server

    from serving.impression_log import ServedFeatureLog
    from serving.proto_gen import feedrank_pb2 as pb
    from serving.proto_gen import feedrank_pb2_grpc as pb_grpc
    from serving.server import stop_gracefully

    bundle, features_dir, info = build_bundle(Path(args.work), items=args.items, users=args.users, days=args.days,
                                              seed=args.seed)
    with tempfile.TemporaryDirectory(prefix="bench-explain-") as tmp:
        srv = start_server(bundle, features_dir, log_dir=Path(tmp), feast=True, max_workers=4, ranking_slots=1,
                           retrieval_batch=8)
        sample_log = ServedFeatureLog(Path(tmp), share=1.0).start()
        stage_ms: dict[str, list[float]] = {m: [] for m in MODES}
        latency: dict[str, list[float]] = {m: [] for m in MODES}
        try:
            _warm(srv, args.candidates, args.k)
            gc.collect()
            gc.freeze()
            channel = grpc.insecure_channel(f"127.0.0.1:{srv.port}")
            stub = pb_grpc.FeedRankerStub(channel)
            rng = np.random.default_rng(0)
            load_before = os.getloadavg()
            n = 0
            for rnd in range(args.rounds):
                for mode in MODES:
                    srv.pipeline.feature_log = sample_log if mode == "sampled" else None
                    srv.recorder.take(0, 0)  # drop what earlier blocks recorded
                    t_block = time.time()
                    for _ in range(args.calls):
                        n += 1
                        user = int(srv.known[rng.integers(len(srv.known))])
                        request = pb.RankFeedRequest(request_id=f"b{n}", user_id=str(user), k=args.k,
                                                     candidate_count=args.candidates, explain=mode == "explain",
                                                     context=pb.Context(device="mobile", hour=int(n % 24)))
                        t0 = time.perf_counter()
                        resp = stub.RankFeed(request, timeout=10.0)
                        latency[mode].append((time.perf_counter() - t0) * 1000.0)
                        assert len(resp.items) == args.k and (mode != "explain" or resp.items[0].HasField("explanation"))
                    with srv.recorder._lock:
                        stage_ms[mode].extend(ms for ts, stage, ms in srv.recorder.records
                                              if stage == "explain" and ts >= t_block)
                logger.info("round %d/%d done", rnd + 1, args.rounds)
            load_after = os.getloadavg()
            channel.close()
        finally:
            stop_gracefully(srv.server, 1.0)
            for closer in (*srv.closers, sample_log):
                closer.close()
        sampled_rows = sample_log.rows_written
        cpu_ms = _explain_cpu(srv.pipeline, args.candidates)

    result = {
        "benchmark": "explain", "catalog_items": srv.items, "candidate_count": args.candidates, "k": args.k,
        "calls_per_block": args.calls, "rounds": args.rounds, "feast_online_users": srv.feast,
        "bundle": info | _model_sizes(bundle),
        "latency_ms": {m: _pcts(v) for m, v in latency.items()},
        "server_explain_stage_ms": _pcts(stage_ms["explain"]) if stage_ms["explain"] else None,
        "sampled_rows_written": sampled_rows,
        "explain_cpu_ms_by_rows": cpu_ms,
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in load_after],
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count()},
    }
    print(f"RankFeed over gRPC on 127.0.0.1, concurrency 1: {srv.items} items, candidate_count {args.candidates}, "
          f"k {args.k}, {args.rounds} x {args.calls} calls per mode, trees {_model_sizes(bundle)}")
    print(f"{'mode':<12} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'mean ms':>8}")
    for mode in MODES:
        s = result["latency_ms"][mode]
        print(f"{mode:<12} {s['p50']:>8.2f} {s['p90']:>8.2f} {s['p99']:>8.2f} {s['mean']:>8.2f}")
    if result["server_explain_stage_ms"]:
        s = result["server_explain_stage_ms"]
        print(f"server explain stage: p50 {s['p50']:.2f} ms, p99 {s['p99']:.2f} ms")
    print("explain CPU time (process_time, median of 20; both models, top 5):",
          ", ".join(f"{n} rows {ms:.2f} ms" for n, ms in cpu_ms.items()))
    print(f"load average before {result['load_average_before']}, after {result['load_average_after']}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
