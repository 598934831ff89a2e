"""Benchmark: Feast online read latency (SQLite online store) for one user and for 500 items.

Also times the request-time feature assembly for 500 candidates (``features.store.assemble_features``,
the formulas the ETL shares with serving). Reads run after a warm-up with the registry cached
and the heap frozen (``gc.freeze()``), as a serving process would.

    python benchmarks/bench_feast.py --out build/bench/feast.json

Without ``--features DIR`` (an ETL output folder) it simulates a small marketplace and runs the
ETL first (about a minute).
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from features.config import EtlConfig, FeastConfig, FeaturesConfig  # noqa: E402
from features.store import (  # noqa: E402
    apply_definitions,
    assemble_features,
    materialize,
    online_rows,
    open_store,
)

logger = logging.getLogger("bench_feast")


def _percentiles(samples_s: list[float]) -> dict[str, float]:
    ms = np.asarray(samples_s) * 1000
    return {"p50_ms": round(float(np.percentile(ms, 50)), 3), "p99_ms": round(float(np.percentile(ms, 99)), 3),
            "mean_ms": round(float(ms.mean()), 3), "calls": len(ms)}


def _etl(work: Path, users: int, items: int) -> Path:
    from experiments.config import SimulatorConfig
    from experiments.simulator import MarketplaceSimulator
    from features.etl import FeatureEtl
    from features.spark import build_spark

    logs, out = work / "logs", work / "features"
    MarketplaceSimulator(SimulatorConfig(users=users, items=items, sellers=max(items // 20, 1), days=3,
                                         seed=5)).run(logs, progress=False)
    config = FeaturesConfig()
    spark = build_spark(config.spark)
    try:
        FeatureEtl(config).run(spark, str(logs), str(out))
    finally:
        spark.stop()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--features", help="ETL output folder to serve (default: simulate and run the ETL)")
    parser.add_argument("--users", type=int, default=3000)
    parser.add_argument("--items", type=int, default=5000)
    parser.add_argument("--calls", type=int, default=1000, help="one-user reads timed")
    parser.add_argument("--item-calls", type=int, default=200, help="500-item reads timed")
    parser.add_argument("--out", default="build/bench/feast.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    work = Path(tempfile.mkdtemp(prefix="feedrank-bench-feast-"))
    try:
        features = Path(args.features) if args.features else _etl(work, args.users, args.items)
        etl = EtlConfig()
        store = open_store(features, FeastConfig(repo_dir=str(work / "feast")))
        apply_definitions(store, features, etl)
        t0 = time.perf_counter()
        end = materialize(store, features, etl)
        materialize_s = time.perf_counter() - t0
        users = pd.read_parquet(features / "user_features", columns=["user_id"])["user_id"].unique()
        items = pd.read_parquet(features / "item_features", columns=["item_id"])["item_id"].unique()
        rng = np.random.default_rng(0)
        user_refs = [f"{v}:{f.name}" for v in ("user_snapshot", "user_realtime")
                     for f in store.get_feature_view(v).features]
        item_refs = [f"item_snapshot:{f.name}" for f in store.get_feature_view("item_snapshot").features]
        for _ in range(20):  # warm-up: registry, connections, code paths
            store.get_online_features(features=user_refs, entity_rows=[{"user_id": int(rng.choice(users))}])
            store.get_online_features(features=item_refs,
                                      entity_rows=[{"item_id": int(i)} for i in rng.choice(items, 500)])
        gc.collect()
        gc.freeze()
        one_user = []
        for _ in range(args.calls):
            uid = int(rng.choice(users))
            t = time.perf_counter()
            store.get_online_features(features=user_refs, entity_rows=[{"user_id": uid}]).to_dict()
            one_user.append(time.perf_counter() - t)
        many_items = []
        for _ in range(args.item_calls):
            ids = rng.choice(items, 500, replace=len(items) < 500)
            t = time.perf_counter()
            store.get_online_features(features=item_refs, entity_rows=[{"item_id": int(i)} for i in ids]).to_dict()
            many_items.append(time.perf_counter() - t)
        # request-time assembly for 500 candidates from rows already in memory
        ids = rng.choice(items, 500, replace=len(items) < 500)
        item_frame = online_rows(store, "item_snapshot", ids.tolist())
        seller_frame = online_rows(store, "seller_snapshot", item_frame["item_seller_id"].fillna(0).astype(int).tolist())
        uid = int(rng.choice(users))
        user_row = pd.concat([online_rows(store, "user_snapshot", [uid]).drop(columns="user_id"),
                              online_rows(store, "user_realtime", [uid]).drop(columns="user_id")], axis=1)
        frame = pd.concat([item_frame, seller_frame.drop(columns="seller_id"),
                           pd.concat([user_row] * len(item_frame), ignore_index=True)], axis=1)
        frame["ts_us"] = int(end.timestamp() * 1e6)
        frame["device"] = "mobile"
        assemble = []
        for _ in range(200):
            t = time.perf_counter()
            assemble_features(frame, etl)
            assemble.append(time.perf_counter() - t)
        gc.unfreeze()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {
        "benchmark": "feast_online",
        "online_store": "sqlite",
        "users": int(len(users)), "items": int(len(items)),
        "user_features": len(user_refs), "item_features": len(item_refs),
        "materialize_seconds": round(materialize_s, 2),
        "one_user": _percentiles(one_user),
        "items_500": _percentiles(many_items),
        "assemble_features_500": _percentiles(assemble),
        "cpus": os.cpu_count(), "load_average_1m": round(os.getloadavg()[0], 2),
        "machine": platform.machine(), "python": platform.python_version(),
    }
    print(json.dumps(result, indent=2))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
