"""Benchmark: the Spark ETL over ~N simulated impressions; impressions/s end to end and peak memory.

Target (issue 3): at least 50k impressions/s on 2 cores. Memory is the peak of the summed
resident set of this process and all its descendants (the Spark JVM and its Python
workers), sampled every 0.5 s, together with the 1-minute load average (on a shared
machine the figure is only meaningful next to it).

    python benchmarks/bench_etl.py --impressions 10000000 --out build/bench/etl.json

``--logs DIR`` reuses (or keeps) a simulated log instead of a temporary one.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psutil  # noqa: E402

from experiments.config import SimulatorConfig  # noqa: E402
from experiments.simulator import MarketplaceSimulator  # noqa: E402
from features.config import FeaturesConfig, SparkConfig  # noqa: E402
from features.etl import FeatureEtl  # noqa: E402
from features.spark import build_spark  # noqa: E402

logger = logging.getLogger("bench_etl")


class PeakMemory:
    """Samples the summed RSS of this process tree (JVM and Python workers included) in a thread."""

    def __init__(self, every: float = 0.5) -> None:
        self.every = every
        self.peak_bytes = 0
        self.peak_jvm_bytes = 0
        self.load_1m: list[float] = []
        self._cpu: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            total = jvm = 0
            for proc in [me, *me.children(recursive=True)]:
                try:
                    times = proc.cpu_times()
                    self._cpu[proc.pid] = max(self._cpu.get(proc.pid, 0.0), times.user + times.system)
                    rss = proc.memory_info().rss
                    total += rss
                    if "java" in proc.name():
                        jvm += rss
                except psutil.Error:
                    continue
            self.load_1m.append(os.getloadavg()[0])
            self.peak_bytes = max(self.peak_bytes, total)
            self.peak_jvm_bytes = max(self.peak_jvm_bytes, jvm)
            self._stop.wait(self.every)

    def load_summary(self) -> dict[str, float]:
        """Min, mean and max of the 1-minute load average sampled during the run (other work on the box)."""
        if not self.load_1m:
            return {}
        return {"min": round(min(self.load_1m), 2), "mean": round(sum(self.load_1m) / len(self.load_1m), 2),
                "max": round(max(self.load_1m), 2)}

    @property
    def cpu_seconds(self) -> float:
        """User + system CPU seconds of every process of the tree seen while sampling."""
        return sum(self._cpu.values())

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--impressions", type=int, default=10_000_000)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--logs", help="simulated log folder to reuse (written there if absent)")
    parser.add_argument("--driver-memory", default="4g")
    parser.add_argument("--shuffle-partitions", type=int, default=8)
    parser.add_argument("--negative-keep-rate", type=float, default=1.0)
    parser.add_argument("--out", default="build/bench/etl.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    tmp = Path(tempfile.mkdtemp(prefix="feedrank-bench-etl-"))
    try:
        base = SimulatorConfig()
        users = int(args.impressions / (base.requests_per_user_day * args.days * base.feed_length) / 0.95)
        sim_cfg = SimulatorConfig(users=users, items=args.items, sellers=max(args.items // 20, 1), days=args.days,
                                  chunk_requests=50_000, seed=0)
        logs = Path(args.logs) if args.logs else tmp / "logs"
        if not (logs / "impressions").is_dir():
            logger.info("simulating %s users, %s items, %d days -> %s", f"{users:,}", f"{args.items:,}", args.days, logs)
            MarketplaceSimulator(sim_cfg).run(logs, progress=True)
        from dataclasses import replace

        config = FeaturesConfig(spark=SparkConfig(driver_memory=args.driver_memory,
                                                  shuffle_partitions=args.shuffle_partitions, progress_seconds=30))
        config = replace(config, etl=replace(config.etl, negative_keep_rate=args.negative_keep_rate))
        load_start = round(os.getloadavg()[0], 2)
        with PeakMemory() as memory:
            start = time.perf_counter()
            spark = build_spark(config.spark)
            startup = time.perf_counter() - start
            report = FeatureEtl(config).run(spark, str(logs), str(tmp / "features"))
            total = time.perf_counter() - start
            spark.stop()
        disk = sum(p.stat().st_size for p in (tmp / "features" / "training").rglob("*.parquet"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    rows = sum(d["rows"] for d in report.outputs["training"].values())
    result = {
        "benchmark": "etl",
        "impressions": report.impressions,
        "events": report.tables["events"]["input"],
        "training_rows": rows,
        "feature_columns": sum(1 for c in report.checks["results"] if c["check"] == "null_rate"
                               and c["column"].startswith("f_")),
        "seconds_etl": round(report.seconds, 1),
        "seconds_with_spark_startup": round(total, 1),
        "spark_startup_seconds": round(startup, 1),
        "impressions_per_second": round(report.impressions / total),
        "impressions_per_second_etl_only": round(report.impressions_per_second),
        "stage_seconds": report.stage_seconds,
        "cpu_seconds": round(memory.cpu_seconds, 1),
        # what 2 dedicated cores would sustain if the run were CPU-bound (this machine is shared)
        "impressions_per_second_at_2_dedicated_cores": round(report.impressions / (memory.cpu_seconds / 2)),
        "peak_rss_mb_total": round(memory.peak_bytes / 2**20),
        "peak_rss_mb_jvm": round(memory.peak_jvm_bytes / 2**20),
        "training_parquet_mb": round(disk / 2**20, 1),
        "driver_memory": args.driver_memory, "shuffle_partitions": args.shuffle_partitions,
        "negative_keep_rate": args.negative_keep_rate,
        "cpus": os.cpu_count(), "load_average_1m_at_start": load_start,
        "load_average_1m_at_end": round(os.getloadavg()[0], 2),
        "load_average_1m_during": memory.load_summary(),
        "machine": platform.machine(), "python": platform.python_version(),
        "targets": {"impressions_per_second": ">= 50000"},
    }
    print(json.dumps(result, indent=2))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
