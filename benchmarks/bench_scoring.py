"""Benchmark: score 500 candidates whose features are already assembled, one thread, p50/p99.

For each model size (trees x leaves) it times LightGBM's own prediction, the tl2cgen library
(default build) and the tl2cgen library built with ``quantize=1``, on the same 500 x d
matrix, after a warm-up; then the whole expected-GMV scorer (ranker + purchase model +
isotonic calibration + E[GMV]) with compiled and with native models. DESIGN.md budgets
5 ms p99 for scoring 500 candidates on 2 cores; model size is part of that budget.

    python benchmarks/bench_scoring.py --out build/bench/scoring.json
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before LightGBM loads its OpenMP runtime

import argparse  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ranking.calibration import IsotonicCalibrator  # noqa: E402
from ranking.compile import CompiledPredictor, NativePredictor, compile_model  # noqa: E402
from ranking.scorer import ExpectedGMVScorer  # noqa: E402

CANDIDATES = 500


def timings_ms(fn, X: np.ndarray, *, repeat: int, warmup: int) -> dict[str, float]:
    """p50, p99 and mean of ``fn(X)`` in milliseconds: wall clock, and the process CPU time.

    The machines are shared; when other work competes for the cores the wall-clock tail
    includes time spent waiting for a core, which the CPU time leaves out.
    """
    for _ in range(warmup):
        fn(X)
    gc.collect()
    gc.disable()
    try:
        wall = np.empty(repeat)
        cpu = np.empty(repeat)
        for i in range(repeat):
            c0 = time.process_time()
            t0 = time.perf_counter()
            fn(X)
            wall[i] = time.perf_counter() - t0
            cpu[i] = time.process_time() - c0
    finally:
        gc.enable()
    out = {}
    for name, samples in (("", wall), ("cpu_", cpu)):
        ms = samples * 1e3
        out.update({f"{name}p50_ms": round(float(np.percentile(ms, 50)), 3),
                    f"{name}p99_ms": round(float(np.percentile(ms, 99)), 3),
                    f"{name}mean_ms": round(float(ms.mean()), 3)})
    return out


def train_model(kind: str, trees: int, leaves: int, n_features: int, seed: int, path: Path):
    """A LightGBM model of exactly ``trees`` trees with up to ``leaves`` leaves, saved as text."""
    import lightgbm as lgb

    rng = np.random.default_rng(seed)
    n = 20_000
    X = rng.normal(size=(n, n_features))
    X[rng.random(X.shape) < 0.05] = np.nan
    signal = np.nansum(X[:, : min(10, n_features)] * rng.normal(size=min(10, n_features)), axis=1)
    params = {"num_leaves": leaves, "min_data_in_leaf": 5, "learning_rate": 0.05, "verbosity": -1,
              "num_threads": 1, "seed": seed}
    if kind == "ranker":
        y = np.clip(np.round(signal + rng.normal(size=n)), 0, 3)
        data = lgb.Dataset(X, y, group=np.full(n // 20, 20))
        params["objective"] = "lambdarank"
    else:
        y = (signal + rng.normal(size=n) > 2.5).astype(float)
        data = lgb.Dataset(X, y)
        params["objective"] = "binary"
    booster = lgb.train(params, data, num_boost_round=trees)
    booster.save_model(str(path))
    return booster


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--features", type=int, default=40)
    parser.add_argument("--sizes", default="100x31,300x31,500x63", help="comma-separated TREESxLEAVES")
    parser.add_argument("--purchase-size", default="200x31")
    parser.add_argument("--repeat", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--out", default="build/bench/scoring.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    rng = np.random.default_rng(123)
    X = rng.normal(size=(CANDIDATES, args.features))
    X[rng.random(X.shape) < 0.05] = np.nan
    price = np.exp(rng.normal(3.0, 0.6, CANDIDATES))
    margin = rng.uniform(0.05, 0.3, CANDIDATES)
    results: dict = {"benchmark": "scoring", "candidates": CANDIDATES, "features": args.features, "threads": 1,
                     "models": [], "scorer": {}}
    with tempfile.TemporaryDirectory(prefix="feedrank-bench-scoring-") as tmp:
        root = Path(tmp)
        for size in args.sizes.split(","):
            trees, leaves = (int(v) for v in size.split("x"))
            model_path = root / f"ranker_{trees}x{leaves}.txt"
            booster = train_model("ranker", trees, leaves, args.features, 0, model_path)
            row: dict = {"trees": trees, "leaves": leaves,
                         "mean_leaves": round(float(np.mean([t["num_leaves"] for t in
                                                             booster.dump_model()["tree_info"]])), 1)}
            native = NativePredictor(booster=booster, raw_score=True, num_threads=1)
            row["lightgbm"] = timings_ms(native.predict, X, repeat=args.repeat, warmup=args.warmup)
            reference = native.predict(X)
            for label, quantize in (("compiled", False), ("compiled_quantize", True)):
                lib = root / f"ranker_{trees}x{leaves}_{label}.so"
                t0 = time.perf_counter()
                compile_model(model_path, lib, quantize=quantize, nthread=2)
                compile_s = time.perf_counter() - t0
                compiled = CompiledPredictor.load(lib, raw_score=True, nthread=1)
                row[label] = {**timings_ms(compiled.predict, X, repeat=args.repeat, warmup=args.warmup),
                              "compile_s": round(compile_s, 1),
                              "max_abs_diff_vs_lightgbm": float(np.max(np.abs(compiled.predict(X) - reference)))}
            results["models"].append(row)
            print(json.dumps(row), flush=True)

        # The whole scorer: ranker 300x31 + purchase model + calibrator + E[GMV].
        p_trees, p_leaves = (int(v) for v in args.purchase_size.split("x"))
        train_model("purchase", p_trees, p_leaves, args.features, 1, root / "purchase.txt")
        compile_model(root / "purchase.txt", root / "purchase.so", nthread=2)
        ranker_txt = root / "ranker_300x31.txt"
        if not ranker_txt.exists():
            train_model("ranker", 300, 31, args.features, 0, ranker_txt)
            compile_model(ranker_txt, root / "ranker_300x31_compiled.so", nthread=2)
        calibrator = IsotonicCalibrator().fit(rng.random(5000), rng.random(5000) < 0.3)
        names = [f"f_{i}" for i in range(args.features)]
        for label, compiled in (("compiled", True), ("lightgbm", False)):
            if compiled:
                ranker = CompiledPredictor.load(root / "ranker_300x31_compiled.so", raw_score=True)
                purchase = CompiledPredictor.load(root / "purchase.so", raw_score=False)
            else:
                ranker = NativePredictor.load(ranker_txt, raw_score=True)
                purchase = NativePredictor.load(root / "purchase.txt", raw_score=False)
            scorer = ExpectedGMVScorer(ranker=ranker, purchase=purchase, calibrator=calibrator, feature_names=names,
                                       purchase_feature_names=names)
            results["scorer"][label] = timings_ms(lambda M, s=scorer: s.score(M, price=price, margin=margin).order(),
                                                  X, repeat=args.repeat, warmup=args.warmup)
        results["scorer"]["models"] = {"ranker": "300x31", "purchase": args.purchase_size}
    results.update({"cpus": os.cpu_count(), "machine": platform.machine(), "python": platform.python_version(),
                    "load_1min": round(os.getloadavg()[0], 2), "repeat": args.repeat,
                    "budget": "score 500 candidates <= 5 ms p99 (DESIGN.md)"})
    print(json.dumps(results, indent=2))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
