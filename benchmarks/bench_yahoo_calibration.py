"""Real data: does calibration ever hurt? Log loss and ECE on the Yahoo LTR sample, labels >= 2 and >= 3.

For each positive threshold, a LightGBM binary model (``ranking.PurchaseModel``, the purchase
stage's default parameters) is trained on the first 60% of rank.train's queries, early-stopped on
the next 20%, and calibrated on the last 20% -- with each fixed kind (isotonic, Platt, none) and
with ``select_calibrator``'s automatic choice by held-out log loss. Every variant is measured on
rank.test (50 queries, 768 rows): log loss, ECE (equal-mass bins) with a bootstrap interval over
test queries, ECE over the base rate. The check the platform promises: the automatic choice's
log loss on rank.test is never worse than the uncalibrated model's.

    python benchmarks/bench_yahoo_calibration.py --data ../shared/data/yahoo_ltr --out build/bench/yahoo_calibration.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ranking._metrics import query_index  # noqa: E402
from ranking.calibration import CALIBRATORS, expected_calibration_error, select_calibrator  # noqa: E402
from ranking.config import RankingConfig  # noqa: E402
from ranking.datasets import load_letor  # noqa: E402
from ranking.purchase import PurchaseModel  # noqa: E402

N_FEATURES = 300


def _log_loss(y: np.ndarray, p: np.ndarray) -> float:
    q = np.clip(p, 1e-7, 1 - 1e-7)
    return float(-np.mean(y * np.log(q) + (1 - y) * np.log1p(-q)))


def check(data: Path, threshold: int, *, seed: int = 0, boot: int = 500) -> dict:
    """Every calibrator's test log loss and ECE for positives ``label >= threshold``."""
    train, test = (load_letor(data / f"rank.{part}", n_features=N_FEATURES) for part in ("train", "test"))
    X, y, sizes = train.X, train.y, train.sizes
    Xt, yt, sizes_t = test.X, test.y, test.sizes
    q = query_index(sizes)
    n_q = len(sizes)
    fit_q, stop_q = int(0.6 * n_q), int(0.8 * n_q)
    parts = {"fit": q < fit_q, "stop": (q >= fit_q) & (q < stop_q), "calibrate": q >= stop_q}
    b, bt = (y >= threshold).astype(float), (yt >= threshold).astype(float)
    model = PurchaseModel(params=RankingConfig().purchase, seed=seed)
    model.fit(X[parts["fit"]], b[parts["fit"]], eval_set=(X[parts["stop"]], b[parts["stop"]], None))
    raw_cal, raw_test = model.predict_proba(X[parts["calibrate"]]), model.predict_proba(Xt)
    qt = query_index(sizes_t)
    rng = np.random.default_rng(seed)
    draws = [np.concatenate([np.flatnonzero(qt == g) for g in rng.integers(0, len(sizes_t), len(sizes_t))])
             for _ in range(boot)]
    out: dict = {"threshold": threshold, "test_rows": int(len(bt)), "test_base_rate": float(bt.mean()),
                 "trees": model.best_iteration_, "variants": {}}
    auto, losses = select_calibrator(raw_cal, b[parts["calibrate"]], seed=seed)
    fitted = {kind: select_calibrator(raw_cal, b[parts["calibrate"]], kind=kind)[0] for kind in CALIBRATORS}
    fitted["auto"] = auto
    for name, cal in fitted.items():
        p = cal.predict(raw_test)
        eces = [expected_calibration_error(bt[d], p[d]) for d in draws if 0 < bt[d].sum() < len(d)]
        ece = expected_calibration_error(bt, p)
        out["variants"][name] = {"log_loss": _log_loss(bt, p), "ece": ece,
                                 "ece_ci": [float(np.quantile(eces, 0.025)), float(np.quantile(eces, 0.975))],
                                 "ece_over_base_rate": ece / bt.mean()}
    out["auto_choice"] = auto.kind
    out["held_out_log_loss_of_each_kind"] = losses
    out["auto_not_worse_than_uncalibrated"] = out["variants"]["auto"]["log_loss"] <= out["variants"]["none"]["log_loss"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, type=Path)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default="build/bench/yahoo_calibration.json")
    args = parser.parse_args()
    runs = [check(args.data, t, seed=s) for t in (2, 3) for s in args.seeds]
    for r in runs:
        v = r["variants"]
        print(f"label >= {r['threshold']} (test base rate {r['test_base_rate']:.3f}, {r['trees']} trees): "
              + "; ".join(f"{k} log loss {x['log_loss']:.4f} ECE {x['ece']:.4f} "
                          f"[{x['ece_ci'][0]:.4f}, {x['ece_ci'][1]:.4f}]" for k, x in v.items())
              + f" -> auto chose {r['auto_choice']}, "
              + ("not worse than uncalibrated" if r["auto_not_worse_than_uncalibrated"] else "WORSE than uncalibrated"))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"benchmark": "yahoo_calibration", "runs": runs}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
