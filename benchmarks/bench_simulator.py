"""Benchmark: simulate ~N impressions to Parquet; report impressions/s and peak memory.

Targets (issue 2): at least 200k impressions/s and peak RSS at most 4 GB on 2 cores.

    python benchmarks/bench_simulator.py --impressions 10000000 --out build/bench/simulator.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import resource
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments.config import SimulatorConfig  # noqa: E402
from experiments.simulator import MarketplaceSimulator  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--impressions", type=int, default=10_000_000)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--out", default="build/bench/simulator.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    base = SimulatorConfig()
    # users * requests/day * activity mean (~1) * days * feed_length ~= impressions
    # (/ 0.95: users who sign up during the period make fewer requests)
    users = int(args.impressions / (base.requests_per_user_day * args.days * base.feed_length) / 0.95)
    cfg = SimulatorConfig(users=users, items=args.items, sellers=max(args.items // 20, 1), days=args.days,
                          chunk_requests=50_000, seed=0)
    sim = MarketplaceSimulator(cfg)
    tmp = Path(tempfile.mkdtemp(prefix="feedrank-bench-"))
    try:
        report = sim.run(tmp / "logs", progress=True)
        disk = sum(p.stat().st_size for p in (tmp / "logs").rglob("*.parquet"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result = {
        "benchmark": "simulator",
        "users": users, "items": args.items, "days": args.days,
        "impressions": report.rows["impressions"], "events": report.rows["events"],
        "seconds": round(report.seconds, 2),
        "impressions_per_second": round(report.impressions_per_second),
        "peak_rss_mb": round(peak_rss_mb),
        "parquet_mb": round(disk / 2**20, 1),
        "cpus": os.cpu_count(), "machine": platform.machine(), "python": platform.python_version(),
        "targets": {"impressions_per_second": ">= 200000", "peak_rss_mb": "<= 4096"},
    }
    print(json.dumps(result, indent=2))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
