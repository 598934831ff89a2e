"""Judge the ranking models against the simulator's ground truth.

Pipeline: simulate a marketplace (``experiments.simulator``), run the features ETL
(``python -m features.etl LOGS OUT``), train the IPS-weighted and the naive ranker and the
calibrated purchase model (``ranking.train``), then score the held-out test slice against
what the simulator knows.

What "ground truth NDCG" means here
-----------------------------------
The ranker learns graded labels (click 1, add-to-cart 2, purchase 3) with gains ``2**y - 1``.
For a candidate the simulator gives, free of position, the probability of each outcome
once the buyer looks at it, so the *expected gain* of showing it is::

    G = a * ((1 - c) * 1 + c * (1 - b) * 3 + c * b * 7)

with ``a`` = P(click | examined), ``c`` = P(cart | click), ``b`` = P(buy | cart). DCG is
linear in the gains, so ranking by ``G`` maximises the expected DCG; the truth NDCG@k of a
ranking is its expected DCG@k divided by that maximum. The oracle (sort by ``G``) scores 1
by construction; "oracle by P(click)" sorts by the true attractiveness alone, and the
logging order and a random order give the scale. Candidates are the rows the ETL kept for
each test request (all of a feed's slots when negatives are not downsampled).

Money: each policy's top 10 of each test request is served to the simulator's exact
expectation (``MarketplaceSimulator.expected_outcome``, which applies the true position
bias), giving expected GMV per request: the logged order, each ranker, the scorer with its
configured blend and with blends 0 (E[GMV] alone) to 2, and the GMV oracle (true
P(purchase | examined) x price, optimal under a position-based model).

    python benchmarks/eval_ranking_simulator.py --users 4000 --days 14 --seed 11 --out build/bench/ranking_sim/default
    python benchmarks/eval_ranking_simulator.py --users 4000 --days 14 --seed 12 --policy-noise 0.3 \
        --out build/bench/ranking_sim/popularity_following
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments.config import SimulatorConfig  # noqa: E402
from experiments.simulator import MarketplaceSimulator, Requests  # noqa: E402
from experiments.simulator import behaviour as bh  # noqa: E402
from experiments.simulator.world import DEVICES  # noqa: E402
from ranking._metrics import group_sizes, ndcg_at_k  # noqa: E402
from ranking.config import GBDTParams, RankingConfig  # noqa: E402
from ranking.scorer import ExpectedGMVScorer  # noqa: E402
from ranking.train import TrainingResult, fit_ranker, ranking_metrics, train_ranking_models  # noqa: E402

logger = logging.getLogger("eval_ranking_simulator")


def read_training_table(path: str | os.PathLike[str]) -> pd.DataFrame:
    """The ETL's ``training/`` table (all ``date=`` partitions) as one pandas frame."""
    import pyarrow.dataset as ds

    table = ds.dataset(str(path), format="parquet", partitioning="hive").to_table()
    frame = table.to_pandas()
    return frame.drop(columns=[c for c in ("date",) if c in frame.columns])


def truth_for_rows(sim: MarketplaceSimulator, frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """Position-free truth for each row: P(click|examined), P(purchase|examined), expected gain, E[GMV]."""
    users = frame["user_id"].to_numpy(dtype=np.int64)
    items = frame["item_id"].to_numpy(dtype=np.int64)
    codes = {name: i for i, name in enumerate(DEVICES)}
    device = frame["device"].map(codes) if "device" in frame.columns else pd.Series(np.nan, index=frame.index)
    devices = np.where(device.isna(), sim.world.user_device[users], device.fillna(0)).astype(np.int64)
    hours = pd.DatetimeIndex(frame["ts"]).tz_convert("UTC").hour.to_numpy()
    a = sim.click_probability(users, items, devices=devices, hours=hours)
    c = bh.cart_given_click(sim.world, users, items, sim.params)
    b = bh.buy_given_cart(sim.world, users, items, sim.params)
    purchase = sim.purchase_probability(users, items, devices=devices, hours=hours)
    gain = a * ((1 - c) * 1.0 + c * (1 - b) * 3.0 + c * b * 7.0)
    price = sim.world.item_price[items]
    return {"click": a, "purchase": purchase, "expected_gain": gain,
            "expected_gmv": purchase * price * bh.expected_quantity(sim.params), "devices": devices}


def truth_ndcg(frame: pd.DataFrame, relevance: np.ndarray, scores: dict[str, np.ndarray],
               ks: tuple[int, ...] = (10, 20)) -> dict[str, dict[str, float]]:
    """NDCG@k of each named score against real-valued truth (linear gains), over requests with >= 2 rows."""
    keep = frame.groupby("request_id", sort=False)["request_id"].transform("size").to_numpy() >= 2
    sizes = group_sizes(frame.loc[keep, "request_id"].to_numpy())
    rel = relevance[keep]
    return {name: {f"ndcg@{k}": ndcg_at_k(rel, s[keep], sizes, k, gain="linear") for k in ks}
            for name, s in scores.items()}


def served_gmv(sim: MarketplaceSimulator, frame: pd.DataFrame, scores: dict[str, np.ndarray],
               k: int = 10) -> dict[str, float]:
    """Mean expected GMV per request when each policy serves its top ``k`` of the request's candidates."""
    req = frame["request_id"].to_numpy()
    sizes = group_sizes(req)
    starts = np.r_[0, np.cumsum(sizes)[:-1]]
    first = frame.iloc[starts]
    codes = {name: i for i, name in enumerate(DEVICES)}
    users = first["user_id"].to_numpy(dtype=np.int64)
    device = first["device"].map(codes)
    requests = Requests(request_id=first["request_id"].to_numpy(dtype=np.int64), user_id=users,
                        ts_us=pd.DatetimeIndex(first["ts"]).as_unit("us").asi8,
                        device=np.where(device.isna(), sim.world.user_device[users], device.fillna(0)).astype(np.int8))
    qid = np.repeat(np.arange(len(sizes)), sizes)
    rows = np.arange(len(frame))
    items = frame["item_id"].to_numpy(dtype=np.int64)
    out = {}
    for name, s in scores.items():
        order = np.lexsort((rows, -s, qid))
        rank = rows - starts[qid]
        served = np.full((len(sizes), k), -1, dtype=np.int64)
        top = rank < k
        served[qid[top], rank[top]] = items[order][top]
        out[name] = float(sim.expected_outcome(requests, served).gmv_per_request().mean())
    return out


def skyline_labels(sim: MarketplaceSimulator, frame: pd.DataFrame, *, seed: int) -> pd.DataFrame:
    """``frame`` with graded labels redrawn from the truth as if every slot were examined."""
    rng = np.random.default_rng(seed)
    users = frame["user_id"].to_numpy(dtype=np.int64)
    items = frame["item_id"].to_numpy(dtype=np.int64)
    a = truth_for_rows(sim, frame)["click"]
    c = bh.cart_given_click(sim.world, users, items, sim.params)
    b = bh.buy_given_cart(sim.world, users, items, sim.params)
    click = rng.random(len(frame)) < a
    cart = click & (rng.random(len(frame)) < c)
    buy = cart & (rng.random(len(frame)) < b)
    return frame.assign(label=np.select([buy, cart, click], [3, 2, 1], 0).astype(np.int32))


def _standardise(values: np.ndarray, group: np.ndarray) -> np.ndarray:
    frame = pd.DataFrame({"v": values, "g": group})
    grouped = frame.groupby("g")["v"]
    std = grouped.transform("std", ddof=0).to_numpy()
    return np.divide(values - grouped.transform("mean").to_numpy(), std, out=np.zeros(len(values)), where=std > 0)


def run_etl(logs: Path, out: Path) -> Path:
    """Run the features ETL as its documented entry point; return the ``training/`` folder."""
    cmd = [sys.executable, "-m", "features.etl", str(logs), str(out)]
    logger.info("running %s", " ".join(cmd))
    subprocess.run(cmd, check=True, cwd=Path(__file__).resolve().parents[1])
    return out / "training"


def calibration_gap_to_truth(p_pred: np.ndarray, p_true: np.ndarray, weight: np.ndarray, n_bins: int) -> float:
    """ECE with each bin's true mean probability in place of its observed frequency (no outcome noise)."""
    order = np.argsort(p_pred, kind="stable")
    cum = np.cumsum(weight[order])
    bins = np.minimum((cum / cum[-1] * n_bins).astype(int), n_bins - 1)
    gap = 0.0
    for b in np.unique(bins):
        idx = order[bins == b]
        w = weight[idx]
        gap += w.sum() * abs(np.average(p_pred[idx], weights=w) - np.average(p_true[idx], weights=w))
    return float(gap / weight.sum())


def evaluate(sim: MarketplaceSimulator, frame: pd.DataFrame, config: RankingConfig, out_dir: Path,
             *, figures: bool = True, skyline: bool = True) -> dict[str, Any]:
    """Train IPS and naive rankers on ``frame`` and judge them (and the scorer) against the truth.

    The naive ranker is the same pipeline without weights: same slices, same parameters as
    the IPS ranker ended with (tuned or configured), ``propensity=None``.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    ips: TrainingResult = train_ranking_models(frame, config, out_dir / "model", figures=figures)
    features = ips.metadata["features"]
    params = GBDTParams(**ips.metadata["ranker"]["params"])
    naive = fit_ranker(ips.slices.train, ips.slices.valid, features, config, propensity=None, params=params)
    test = ips.slices.test
    truth = truth_for_rows(sim, test)
    scorer = ExpectedGMVScorer.from_dir(out_dir / "model")
    scored = scorer.score(test[features].to_numpy(dtype=np.float64), price=test["price"].to_numpy(),
                          request_index=test["request_id"].to_numpy())
    scores = {
        "random": np.random.default_rng(0).random(len(test)),
        "logging_policy": -test["position"].astype("float64").fillna(1e9).to_numpy(),
        "naive": naive.predict(test[features]),
        "ips": ips.ranker.predict(test[features]),
        "oracle_by_click": truth["click"],
        "oracle": truth["expected_gain"],
    }
    # Skyline: the same ranker trained on labels drawn without position bias (every slot examined),
    # i.e. what the logs would teach if the buyers looked at everything.
    sky = None
    if skyline:
        sky = fit_ranker(skyline_labels(sim, ips.slices.train, seed=1), skyline_labels(sim, ips.slices.valid, seed=2),
                         features, config, propensity=None, params=params)
        scores["skyline"] = sky.predict(test[features])
    ndcg = truth_ndcg(test, truth["expected_gain"], scores)
    ndcg_purchase = truth_ndcg(test, truth["purchase"], {"naive": scores["naive"], "ips": scores["ips"],
                                                         "oracle_by_purchase": truth["purchase"]})
    # The scorer's own order (the configured blend; the ranker breaks ties, ScoredCandidates.order),
    # as one sort key, then the blend E[GMV] * exp(b * z(ranker score)) for several b (b = 0: E[GMV] alone).
    tie_break = 1e-9 * scored.ranker_score / (1 + np.abs(scored.ranker_score).max())
    policies = {"logging_policy": scores["logging_policy"], "naive": scores["naive"], "ips": scores["ips"],
                "scorer": scored.score + tie_break, "oracle_expected_gmv": truth["expected_gmv"]}
    z = _standardise(scored.ranker_score, test["request_id"].to_numpy())
    for blend in (0.0, 0.25, 0.5, 1.0, 2.0):
        policies[f"scorer_blend_{blend}"] = scored.expected_gmv * np.exp(blend * z) + tie_break
    gmv = served_gmv(sim, test, policies)

    # Calibration: on the held-out purchase slice, against outcomes and against the true probability
    # of a purchase at the logged slot.
    pf = ips.purchase
    held = pf.heldout_rows
    slot = held["position"].astype("float64").fillna(0).to_numpy()
    p_true_at_slot = truth_for_rows(sim, held)["purchase"] * sim.examination(slot)
    calibration = {
        "heldout": pf.metrics["heldout"],
        "heldout_rows": len(held),
        "ece_calibrated": pf.metrics["calibrated"]["ece"],
        "ece_uncalibrated": pf.metrics["uncalibrated"]["ece"],
        "base_rate": pf.metrics["calibrated"]["base_rate"],
        "ece_over_base_rate": pf.metrics["calibrated"]["ece_over_base_rate"],
        "auc": pf.metrics["calibrated"]["auc"],
        "gap_to_true_probability_calibrated": calibration_gap_to_truth(
            pf.heldout_calibrated, p_true_at_slot, pf.heldout_weight, config.calibration_bins),
        "gap_to_true_probability_uncalibrated": calibration_gap_to_truth(
            pf.heldout_raw, p_true_at_slot, pf.heldout_weight, config.calibration_bins),
    }

    curve = None
    if ips.propensity is not None:
        est = ips.propensity
        truth_curve = sim.examination(np.arange(len(est.examination_)))
        curve = {"max_abs_error": float(np.max(np.abs(est.examination_ - truth_curve))),
                 "mean_abs_error": float(np.mean(np.abs(est.examination_ - truth_curve))),
                 "eta": est.eta_, "true_eta": sim.config.examination_eta, "positions": len(truth_curve),
                 "estimate": [float(v) for v in est.examination_]}
        if figures:
            est.plot(out_dir / "examination_vs_truth.png", truth=truth_curve,
                     title="Examination: estimate from randomized traffic vs simulator truth")
    if figures:
        _plot_ndcg(ndcg, out_dir / "truth_ndcg.png")
    return {
        "rows": {"frame": len(frame), "test": len(test), "test_requests": int(test["request_id"].nunique()),
                 "features": len(features)},
        "truth_ndcg_expected_gain": ndcg,
        "truth_ndcg_purchase": ndcg_purchase,
        "expected_gmv_per_request_top10": gmv,
        "logged_test_ndcg": {"ips": ranking_metrics(scores["ips"], test, config.eval_at),
                             "naive": ranking_metrics(scores["naive"], test, config.eval_at)},
        "purchase_calibration": calibration,
        "examination_curve": curve,
        "ranker_trees": {"ips": ips.ranker.best_iteration_, "naive": naive.best_iteration_,
                         "skyline": None if sky is None else sky.best_iteration_},
        "scorer_kinds": {"ranker": scorer.ranker.kind, "purchase": scorer.purchase.kind},
        "seconds": round(time.perf_counter() - started, 1),
        "config": asdict(config),
    }


def _plot_ndcg(ndcg: dict[str, dict[str, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    names = list(ndcg)
    values = [ndcg[n]["ndcg@10"] for n in names]
    fig, ax = plt.subplots(figsize=(8, 3.6))
    palette = {"naive": "tab:orange", "ips": "tab:blue", "skyline": "tab:purple"}
    bars = ax.bar(names, values, color=[palette.get(n, "tab:green" if n.startswith("oracle") else "grey")
                                        for n in names])
    for bar, v in zip(bars, values, strict=True):
        ax.text(bar.get_x() + bar.get_width() / 2, v + 0.005, f"{v:.3f}", ha="center", fontsize=8)
    ax.set_ylim(min(values) - 0.05, 1.02)
    ax.set_ylabel("truth NDCG@10 (expected gain)")
    ax.set_title("Rankers judged against the simulator's ground truth (test slice)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=4000)
    parser.add_argument("--items", type=int, default=5000)
    parser.add_argument("--days", type=int, default=14)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--randomized-share", type=float, default=0.02)
    parser.add_argument("--policy-noise", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--logs", help="existing simulator logs (the simulator is rebuilt from them; "
                                       "the sizing options are then ignored)")
    parser.add_argument("--training", help="an existing ETL training/ folder written from those logs")
    parser.add_argument("--out", default="build/bench/ranking_sim")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    out = Path(args.out)
    cfg = SimulatorConfig(users=args.users, items=args.items, sellers=max(20, args.items // 17), days=args.days,
                          randomized_share=args.randomized_share, policy_noise=args.policy_noise, seed=args.seed)
    if args.logs:
        logs = Path(args.logs)
        sim = MarketplaceSimulator.from_logs(logs)
        cfg = sim.config
    else:
        sim = MarketplaceSimulator(cfg)
        logs = out / "logs"
        sim.run(logs, progress=True)
    training = Path(args.training) if args.training else run_etl(logs, out / "features")
    frame = read_training_table(training)
    result = evaluate(sim, frame, RankingConfig(num_threads=args.threads), out)
    result["simulator"] = asdict(cfg)
    text = json.dumps(result, indent=2, default=float)
    print(text)
    (out / "result.json").write_text(text + "\n")


if __name__ == "__main__":
    main()
