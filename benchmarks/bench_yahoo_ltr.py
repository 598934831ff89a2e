"""Real data: NDCG@10 on the Yahoo LTR sample's rank.test, LightGBM defaults against the tuned ranker.

- defaults: ``lightgbm.train({"objective": "lambdarank"}, rank.train)`` with LightGBM's default
  parameters (100 rounds, learning rate 0.1, 31 leaves, 20 rows per leaf);
- tuned: ``ranking.tune_ranker`` (Optuna TPE + median pruning, early stopping on ndcg@20)
  on the first 80% of rank.train's queries, validated on the last 20%; the best parameters
  are then refitted on all of rank.train with the tuned number of trees (scaled by 1 / 0.8
  for the larger set).

rank.test has 50 queries and the tuning validates on 40, so one study's result is noisy: the
script runs one study per seed (default 0, 1, 2) and reports each with a paired bootstrap
interval of its difference to the defaults over test queries.

    python benchmarks/bench_yahoo_ltr.py --data ../shared/data/yahoo_ltr --trials 40 --seeds 0 1 2 \
        --out build/bench/yahoo_ltr.json
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ranking._metrics import query_index  # noqa: E402
from ranking.config import GBDTParams, TuningConfig  # noqa: E402
from ranking.datasets import load_letor  # noqa: E402
from ranking.ranker import LambdaMARTRanker  # noqa: E402
from ranking.tuning import tune_ranker  # noqa: E402

N_FEATURES = 300


def per_query_ndcg(y: np.ndarray, score: np.ndarray, sizes: np.ndarray, k: int) -> np.ndarray:
    """NDCG@k of each query (features.metrics' definition, gain 2^y - 1).

    A query without a relevant row has no NDCG there (0/0); it is reported as 1 here, as
    LightGBM and the published Yahoo LTR figures count it, so the means stay comparable.
    """
    from ranking._metrics import ndcg_at_k

    starts = np.r_[0, np.cumsum(sizes)[:-1]]
    return np.array([ndcg_at_k(y[s:s + n], score[s:s + n], np.array([n]), k) if y[s:s + n].max() > 0 else 1.0
                     for s, n in zip(starts, sizes, strict=True)])


def tuned_run(train, test, *, trials: int, seed: int, threads: int) -> dict:
    """Tune on 80/20 of rank.train's queries, refit on all of it, score rank.test per query."""
    n_fit = int(round(0.8 * len(train.sizes)))
    rows = int(train.sizes[:n_fit].sum())
    qid = query_index(train.sizes)
    base = GBDTParams(num_boost_round=500, early_stopping_rounds=30)
    started = time.perf_counter()
    result = tune_ranker(train.X[:rows], train.y[:rows], qid[:rows],
                         eval_set=(train.X[rows:], train.y[rows:], qid[rows:]),
                         tuning=TuningConfig(n_trials=trials, seed=seed), base_params=base, num_threads=threads)
    rounds = max(1, int(round(result.best_iteration / 0.8)))
    params = replace(result.best_params, num_boost_round=rounds)
    final = LambdaMARTRanker(params=params, num_threads=threads, seed=seed).fit(train.X, train.y, qid)
    per_query = per_query_ndcg(test.y, final.predict(test.X), test.sizes, 10)
    return {"seed": seed, "per_query": per_query, "ndcg@10": float(per_query.mean()),
            "valid_ndcg@20": result.best_value, "refit_rounds": rounds, "params": asdict(params),
            "counts": result.summary["counts"], "seconds": round(time.perf_counter() - started, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/yahoo_ltr")
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="build/bench/yahoo_ltr.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("optuna").setLevel(logging.WARNING)
    import lightgbm as lgb

    data = Path(args.data)
    train = load_letor(data / "rank.train", n_features=N_FEATURES)
    test = load_letor(data / "rank.test", n_features=N_FEATURES)

    started = time.perf_counter()
    default = lgb.train({"objective": "lambdarank", "verbosity": -1, "num_threads": args.threads, "seed": 0,
                         "deterministic": True}, lgb.Dataset(train.X, train.y, group=train.sizes))
    default_q = per_query_ndcg(test.y, default.predict(test.X), test.sizes, 10)
    default_s = time.perf_counter() - started

    runs = [tuned_run(train, test, trials=args.trials, seed=s, threads=args.threads) for s in args.seeds]
    rng = np.random.default_rng(0)
    for run in runs:
        diff = run.pop("per_query") - default_q
        boot = np.array([diff[rng.integers(0, len(diff), len(diff))].mean() for _ in range(5000)])
        run["difference_vs_defaults"] = {"mean": float(diff.mean()),
                                         "bootstrap_95ci": [float(np.quantile(boot, 0.025)),
                                                            float(np.quantile(boot, 0.975))]}
    tuned = np.array([r["ndcg@10"] for r in runs])
    out = {
        "benchmark": "yahoo_ltr",
        "data": str(data),
        "train": {"rows": int(len(train.y)), "queries": int(len(train.sizes))},
        "test": {"rows": int(len(test.y)), "queries": int(len(test.sizes))},
        "defaults": {"ndcg@10": float(default_q.mean()), "seconds": round(default_s, 2),
                     "params": "LightGBM defaults (objective=lambdarank, 100 rounds)"},
        "tuned": {"ndcg@10_mean": float(tuned.mean()), "ndcg@10_by_seed": [float(v) for v in tuned],
                  "trials_per_study": args.trials, "runs": runs},
        "threads": args.threads, "python": platform.python_version(),
    }
    print(json.dumps(out, indent=2))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
