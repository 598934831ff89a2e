"""The price of each re-ranking rule in true GMV: a frontier of GMV vs new-seller share vs diversity.

Takes the bundle and logs of a simulated A/B run (``benchmarks/ab_simulation.py --work DIR``),
scores a sample of experiment requests once with the full system, then re-ranks the same scored
candidates under a grid of ``serving.rerank.RerankConfig`` settings and judges every feed on the
simulator's exact expectations. For each setting it reports expected GMV per request (and its
cost against the same scores without any rule), the new-seller share of the served slots, the
mean largest category share and number of categories per feed, and how many feeds break the
new-seller or category rules without a recorded reason (0 expected). Writes JSON and a frontier
plot (GMV vs new-seller share, colour = category diversity), marking the defaults.

    python benchmarks/ab_simulation.py --work build/ab-work --out build/bench/ab_simulation.json
    python benchmarks/rerank_frontier.py --work build/ab-work --out build/bench/rerank_frontier.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments.config import SimulatorConfig  # noqa: E402
from experiments.policies import PipelinePolicy  # noqa: E402
from experiments.simulator import MarketplaceSimulator  # noqa: E402
from experiments.simulator.world import DAY_US, DEVICES  # noqa: E402
from serving.metrics import StageTimer  # noqa: E402
from serving.requests import FeedRequest  # noqa: E402
from serving.rerank import Candidates, RerankConfig, Reranker, fair_prefix_minimums  # noqa: E402

OFF = RerankConfig(new_seller_min_share=0.0, max_category_share=1.0, max_category_run=0, seller_repeat_penalty=1.0)


def _violations(cfg: RerankConfig, cands: Candidates, order: np.ndarray, reasons: list[list[str]], k: int) -> int:
    """1 when the feed breaks a new-seller or category rule that no reason explains, else 0."""
    if any("category_diversity" in r for r in reasons):
        return 0  # relaxed with a reason (no candidate could satisfy it)
    cats = cands.category_ids[order]
    if cfg.max_category_share < 1.0:
        cap = max(1, int(np.ceil(cfg.max_category_share * k)))  # as the re-ranker
        if np.bincount(cats).max(initial=0) > cap:
            return 1
    if cfg.max_category_run > 0:
        run = 1
        for a, b in zip(cats[:-1], cats[1:], strict=True):
            run = run + 1 if a == b else 1
            if run > cfg.max_category_run:
                return 1
    if cfg.new_seller_min_share > 0:
        need = fair_prefix_minimums(len(order), cfg.new_seller_min_share, cfg.new_seller_alpha)
        have = np.cumsum(cands.is_new_seller[order])
        eligible = int((cands.is_new_seller & cands.in_stock).sum())
        if (have < np.minimum(need, eligible)).any():
            return 1
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", required=True, type=Path, help="the --work folder of a benchmarks/ab_simulation.py run")
    parser.add_argument("--requests", type=int, default=1500, help="experiment requests sampled (first experiment day)")
    parser.add_argument("--candidates", type=int, default=200)
    parser.add_argument("--out", default="build/bench/rerank_frontier.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    meta = json.loads((args.work / "logs" / "_ab" / "experiment.json").read_text())
    sim = MarketplaceSimulator(SimulatorConfig(**meta["simulator"]))
    day = meta["design"]["pre_days"]
    policy = PipelinePolicy.from_bundle(args.work / "full-system" / "train" / "bundle", candidate_count=args.candidates)
    pipe, k = policy.pipeline, sim.config.feed_length
    reqs = sim.requests_for_day(day)
    reqs = reqs.take(np.sort(np.random.default_rng(0).choice(len(reqs), min(args.requests, len(reqs)), replace=False)))
    available = sim.available_items(day)
    snap = pipe.snapshot
    started = time.perf_counter()
    scored = []
    for r in range(len(reqs)):
        request = FeedRequest(request_id=str(int(reqs.request_id[r])), user_id=int(reqs.user_id[r]), k=k,
                              candidate_count=args.candidates, exclude_item_ids=np.flatnonzero(~available),
                              device=DEVICES[int(reqs.device[r])], country=None, hour=int(reqs.hour[r]),
                              day_of_week=int((reqs.ts_us[r] // DAY_US + 3) % 7), ts_us=int(reqs.ts_us[r]))
        s = pipe.score(request, timer=StageTimer())
        rows = s.rows
        scored.append(Candidates(item_ids=snap.item_ids[rows], scores=s.score, seller_ids=snap.seller_ids[rows],
                                 category_ids=snap.category_ids[rows], is_new_seller=snap.is_new_seller[rows],
                                 in_stock=snap.in_stock[rows] & available[snap.item_ids[rows]]))
    logging.info("scored %d requests in %.1f s", len(reqs), time.perf_counter() - started)

    grid = [OFF, RerankConfig()] + [
        RerankConfig(new_seller_min_share=ns, new_seller_alpha=alpha, max_category_share=cs, max_category_run=run,
                     seller_repeat_penalty=sp)
        for ns, alpha, cs, run, sp in itertools.product((0.0, 0.05, 0.1, 0.15, 0.2), (0.1, None),
                                                        (0.3, 0.4, 0.5, 0.6, 1.0), (0, 2, 3, 4), (0.85, 0.95, 1.0))
        if ns > 0 or alpha is None]
    rows_out = []
    for cfg in grid:
        reranker = Reranker(cfg)
        feeds = np.full((len(reqs), k), -1, dtype=np.int64)
        new_share, max_share, n_cats, broken = [], [], [], 0
        for r, cands in enumerate(scored):
            res = reranker.rerank(cands, k)
            order = res.order[:k]
            feeds[r, : order.size] = cands.item_ids[order]
            new_share.append(cands.is_new_seller[order].mean() if order.size else 0.0)
            counts = np.bincount(cands.category_ids[order])
            max_share.append(counts.max() / order.size if order.size else 0.0)
            n_cats.append(int((counts > 0).sum()))
            broken += _violations(cfg, cands, order, res.reasons, k)
        gmv = float(sim.expected_outcome(reqs, feeds).gmv.sum() / len(reqs))
        rows_out.append({"config": asdict(cfg), "gmv_per_request": gmv, "new_seller_share": float(np.mean(new_share)),
                         "max_category_share": float(np.mean(max_share)), "categories_per_feed": float(np.mean(n_cats)),
                         "feeds_breaking_rules": broken})
    base = rows_out[0]["gmv_per_request"]
    for row in rows_out:
        row["gmv_cost_vs_no_rules"] = 1.0 - row["gmv_per_request"] / base
    default = rows_out[1]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"benchmark": "rerank_frontier", "requests": len(reqs), "work": str(args.work),
                               "no_rules": rows_out[0], "defaults": default, "grid": rows_out[2:]}, indent=2))
    _plot(rows_out, out.with_suffix(".png"))
    print(f"{len(reqs)} requests of day {day}; expected GMV per request with no rule {base:.3f}")
    print(f"defaults {asdict(replace(RerankConfig(), blocked_sellers=()))}: GMV {default['gmv_per_request']:.3f} "
          f"(cost {default['gmv_cost_vs_no_rules']:+.1%}), new-seller share {default['new_seller_share']:.3f}, "
          f"max category share {default['max_category_share']:.2f}, {default['categories_per_feed']:.1f} categories "
          f"per feed, {default['feeds_breaking_rules']} feeds breaking a rule")
    print("cheapest settings whose feeds really carry new sellers (served share >= 0.05) with a category share <= 0.5:")
    ok = [r for r in rows_out[2:] if r["new_seller_share"] >= 0.05 and r["config"]["max_category_share"] <= 0.5]
    for row in sorted(ok, key=lambda r: r["gmv_cost_vs_no_rules"])[:10]:
        c = row["config"]
        print(f"  share {c['new_seller_min_share']:.2f} alpha {c['new_seller_alpha']} cat<= {c['max_category_share']:.1f} "
              f"run<= {c['max_category_run']} seller x{c['seller_repeat_penalty']}: cost {row['gmv_cost_vs_no_rules']:+.1%}, "
              f"new-seller {row['new_seller_share']:.3f}, {row['categories_per_feed']:.1f} categories")
    print(f"wrote {out} and {out.with_suffix('.png')}")


def _plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    x = [r["new_seller_share"] for r in rows[2:]]
    y = [r["gmv_per_request"] for r in rows[2:]]
    c = [r["categories_per_feed"] for r in rows[2:]]
    sc = ax.scatter(x, y, c=c, cmap="viridis", s=18)
    fig.colorbar(sc, ax=ax, label="categories per feed (diversity)")
    ax.axhline(rows[0]["gmv_per_request"], ls=":", color="grey", label="no rules")
    d = rows[1]
    ax.scatter([d["new_seller_share"]], [d["gmv_per_request"]], marker="*", s=220, color="#c44e52", label="defaults")
    ax.set_xlabel("new-seller share of served slots")
    ax.set_ylabel("expected GMV per request (simulator truth)")
    ax.set_title("Re-ranking frontier: what each rule costs in true GMV", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
