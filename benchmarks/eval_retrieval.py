"""Evaluate retrieval on a time split: two-tower (configured index and exact) vs popularity vs history.

Simulator (ground truth available)::

    python benchmarks/eval_retrieval.py sim --preset study --seed 0 --out build/bench/retrieval_eval_sim_study.json
    python benchmarks/eval_retrieval.py sim --preset default --out build/bench/retrieval_eval_sim_default.json

Taobao sample, through the features adapter (features.adapters.taobao)::

    python benchmarks/eval_retrieval.py taobao --data ../shared/data/taobao/UserBehavior_head.csv \
        --out build/bench/retrieval_eval_taobao.json

The simulator runs train on everything before the last two days and evaluate on those two
days; "study" is the default world with focused tastes (taste_concentration 0.1) and as much
search as feed traffic (organic_rate 1.0), "default" the default world. Figures are printed
and written as JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
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

from retrieval import (  # noqa: E402
    EvaluationQueries,
    EventLog,
    HistoryRetriever,
    PopularityRetriever,
    RetrievalConfig,
    ServingConfig,
    TrainingConfig,
    TwoTowerConfig,
    TwoTowerRetriever,
    evaluate_retrievers,
    read_event_log,
    time_split_queries,
    train_two_tower,
)
from retrieval.index import ItemIndex, ann_recall_score  # noqa: E402
from retrieval.inputs import DAY_US  # noqa: E402

logger = logging.getLogger("eval_retrieval")
KS = (100, 500)


def _retrievers(fit, log: EventLog, config: RetrievalConfig, *, impression_weight: float = 0.0):
    tt = TwoTowerRetriever.from_fitted(fit, log)
    exact = tt if tt.index.kind == "exact" else tt.with_index(ItemIndex.build(tt.item_vectors, config.index,
                                                                              kind="exact"))
    ann = tt if tt.index.kind != "exact" else tt.with_index(ItemIndex.build(tt.item_vectors, config.index,
                                                                            kind=config.index.ann))
    as_of = fit.window.train_end_us
    pop = PopularityRetriever(catalog=tt.catalog, popularity=tt.popularity, users=tt.state, config=config.serving)
    hist = HistoryRetriever.from_log(log, as_of_us=as_of, catalog=tt.catalog, popularity=tt.popularity,
                                     users=tt.state, config=config.serving, impression_weight=impression_weight)
    return tt, {"two_tower_exact": exact, f"two_tower_{config.index.ann}": ann, "popularity": pop, "history": hist}


def _ann_recall(tt: TwoTowerRetriever, exact: TwoTowerRetriever, ann: TwoTowerRetriever,
                queries: EvaluationQueries) -> dict[str, float]:
    vectors, warm = tt.user_vectors(queries.user_ids, queries.context)
    out = {}
    for k in KS:
        out[f"ann_recall@{k}"] = ann_recall_score(ann.index.search(vectors[warm], k)[1],
                                                  exact.index.search(vectors[warm], k)[1])
    out["index_kind"] = ann.index.kind
    out["warm_users"] = int(warm.sum())
    return out


def _evaluate(targets: dict[str, EvaluationQueries], retrievers) -> dict:
    return {name: evaluate_retrievers(retrievers, q, ks=KS) for name, q in targets.items()}


def run_sim(args: argparse.Namespace) -> dict:
    from experiments.config import SimulatorConfig
    from experiments.simulator import MarketplaceSimulator

    presets = {"study": {"taste_concentration": 0.1, "organic_rate": 1.0}, "default": {}}
    sim_config = SimulatorConfig(**{**presets[args.preset], **_overrides(SimulatorConfig, args.set)}, seed=args.seed)
    config = RetrievalConfig(model=TwoTowerConfig(**_overrides(TwoTowerConfig, args.model)),
                             training=TrainingConfig(**{"num_threads": args.threads,
                                                        **_overrides(TrainingConfig, args.train)}))
    with tempfile.TemporaryDirectory(prefix="feedrank-retrieval-") as tmp:
        sim = MarketplaceSimulator(sim_config)
        sim.run(Path(tmp) / "logs", progress=False)
        log = read_event_log(Path(tmp) / "logs")
    split = sim_config.start_us + (sim_config.days - 2) * DAY_US
    t0 = time.perf_counter()
    fit = train_two_tower(log, config, train_end_us=split)
    train_seconds = time.perf_counter() - t0
    tt, retrievers = _retrievers(fit, log, config)
    end = sim_config.end_us
    targets = {
        "later_purchases": time_split_queries(log, start_us=split, end_us=end),
        "later_off_feed_purchases": time_split_queries(log, start_us=split, end_us=end, off_feed_only=True),
        "later_clicks_and_purchases": time_split_queries(log, start_us=split, end_us=end,
                                                         event_types=("click", "purchase")),
    }
    oracle = TruthOracle(sim, log, as_of_us=split)
    results = _evaluate(targets, {**retrievers, "oracle_truth": oracle})
    results["simulator_expected_recall@500"] = _expected_recall(oracle, retrievers, targets["later_purchases"])
    if args.artifact:
        from retrieval import save_two_tower

        save_two_tower(tt, args.artifact, metrics=results)
    return {
        "source": "simulator", "preset": args.preset, "simulator": dataclasses.asdict(sim_config),
        "split_us": split, "train_seconds": round(train_seconds, 1), "training": _training(fit),
        "ann_vs_exact": _ann_recall(tt, retrievers["two_tower_exact"], retrievers[f"two_tower_{config.index.ann}"],
                                    targets["later_clicks_and_purchases"]),
        "recall": results,
    }


def _overrides(cls, items: list[str]) -> dict:
    """``KEY=VALUE`` strings as keyword arguments of the dataclass ``cls`` (typed like its defaults)."""
    out = {}
    for item in items:
        key, _, value = item.partition("=")
        if key not in cls.__dataclass_fields__:
            raise SystemExit(f"{item}: {cls.__name__} has no field {key!r}")
        default = getattr(cls(), key)
        if isinstance(default, bool):
            out[key] = value.lower() in ("1", "true", "yes")
        elif isinstance(default, tuple):  # comma-separated, typed like the default's first element
            out[key] = tuple(type(default[0])(v) for v in value.split(",") if v)
        else:
            out[key] = type(default)(value)
    return out


class TruthOracle:
    """A retriever that knows the simulator's truth: each buyer's top ``k`` items by true purchase
    probability if shown (the request's device and hour; in stock; not bought before ``as_of_us``).

    No model can beat it on any target, so its recall is the ceiling of the comparison: when even
    the oracle is not 2x popularity on a target, what decides that target is exposure (what the
    logging policy showed), not taste.
    """

    DEVICES = ("mobile", "desktop", "tablet")

    def __init__(self, sim, log: EventLog, *, as_of_us: int) -> None:
        from retrieval.inputs import EVENT_TYPES

        self.sim, self.world = sim, sim.world
        ev = log.events
        bought = ev[(ev["ts_us"] < as_of_us) & (ev["type"] == EVENT_TYPES.index("purchase"))]
        self.bought = bought.groupby("user_id")["item_id"].apply(np.asarray).to_dict()

    def probabilities(self, user: int, device: str | None, hour: int) -> np.ndarray:
        """True P(purchase | examined) of every item for one request; -1 where not servable."""
        w = self.world
        n = w.n_items
        dev = self.DEVICES.index(device) if device in self.DEVICES else int(w.user_device[user])
        p = self.sim.purchase_probability(np.full(n, user), np.arange(n), devices=np.full(n, dev),
                                          hours=np.full(n, hour if hour >= 0 else 20))
        p = np.where(w.item_in_stock, p, -1.0)
        p[self.bought.get(int(user), np.zeros(0, np.int64))] = -1.0
        return p

    def recommend(self, user_ids, context, *, k: int):
        users = np.atleast_1d(np.asarray(user_ids))
        devices = np.broadcast_to(np.asarray(context.device if context.device is not None else None, dtype=object),
                                  users.shape)
        hours = np.broadcast_to(np.asarray(context.hour if context.hour is not None else -1), users.shape)
        ids = np.empty((len(users), k), np.int64)
        scores = np.empty((len(users), k))
        for i, u in enumerate(users):
            p = self.probabilities(int(u), devices[i], int(hours[i]))
            top = np.argsort(-p, kind="stable")[:k]
            ids[i], scores[i] = top, p[top]
        return ids, scores


def _expected_recall(oracle: TruthOracle, retrievers, queries: EvaluationQueries) -> dict[str, float]:
    """Share of each buyer's true purchase propensity (every item equally exposed, the request's
    device and hour) that the top 500 hold: the simulator's truth, free of the logging policy."""
    ids = {name: retrievers[name].recommend(queries.user_ids, queries.context, k=500)[0]
           for name in ("two_tower_exact", "popularity")}
    out: dict[str, list[float]] = {"two_tower": [], "popularity": [], "oracle": []}
    hours = np.broadcast_to(np.asarray(queries.context.hour), queries.user_ids.shape)
    for i, u in enumerate(queries.user_ids):
        p = np.clip(oracle.probabilities(int(u), queries.context.device[i], int(hours[i])), 0.0, None)
        total = p.sum()
        out["two_tower"].append(p[ids["two_tower_exact"][i]].sum() / total)
        out["popularity"].append(p[ids["popularity"][i]].sum() / total)
        out["oracle"].append(np.sort(p)[-500:].sum() / total)
    return {k: float(np.mean(v)) for k, v in out.items()}


def run_taobao(args: argparse.Namespace) -> dict:
    from features.adapters.taobao import adapt_taobao
    from features.config import parse_utc

    with tempfile.TemporaryDirectory(prefix="feedrank-taobao-") as tmp:
        report = adapt_taobao(args.data, Path(tmp) / "logs")
        log = read_event_log(Path(tmp) / "logs")
    # pv rows are impressions (the user's own page views): pool them into the history; fav (click),
    # cart and buy are positives; repeats are normal here, so purchases are not excluded.
    config = RetrievalConfig(
        model=TwoTowerConfig(history_impressions=True, history_length=50),
        training=TrainingConfig(num_threads=args.threads, positive_types=("click", "add_to_cart", "purchase"),
                                validation_positives="all"),
        serving=ServingConfig(exclude_purchased=False, popularity_weights=(2.0, 3.0, 4.0)))
    split = int(parse_utc("2017-12-02T00:00:00+08:00", "split").timestamp() * 1_000_000)
    end = int(parse_utc("2017-12-04T00:00:00+08:00", "end").timestamp() * 1_000_000)
    t0 = time.perf_counter()
    fit = train_two_tower(log, config, train_end_us=split)
    train_seconds = time.perf_counter() - t0
    tt, retrievers = _retrievers(fit, log, config, impression_weight=1.0)
    buy_cart = ("add_to_cart", "purchase")
    targets = {
        "buy_or_cart_with_repeats": time_split_queries(log, start_us=split, end_us=end, event_types=buy_cart),
        "buy_or_cart_new_items": time_split_queries(log, start_us=split, end_us=end, event_types=buy_cart,
                                                    new_items_only=True),
        "purchases_with_repeats": time_split_queries(log, start_us=split, end_us=end),
    }
    return {
        "source": "taobao", "data": str(args.data), "adapter_report": dataclasses.asdict(report),
        "split": "2017-12-02T00:00:00+08:00", "train_seconds": round(train_seconds, 1), "training": _training(fit),
        "catalog_items": len(tt.catalog), "index_kind": tt.index.kind,
        "ann_vs_exact": _ann_recall(tt, retrievers["two_tower_exact"], retrievers[f"two_tower_{config.index.ann}"],
                                    targets["buy_or_cart_with_repeats"]),
        "recall": _evaluate(targets, retrievers),
    }


def _training(fit) -> dict:
    return {"examples": fit.n_examples, "epochs": len(fit.epochs), "best_epoch": fit.best_epoch,
            "validation_recall@100": round(fit.validation_recall, 4),
            "examples_per_second": round(fit.examples_per_second)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="source", required=True)
    sim = sub.add_parser("sim", help="simulated marketplace")
    sim.add_argument("--preset", choices=("study", "default"), default="study")
    sim.add_argument("--seed", type=int, default=0)
    sim.add_argument("--artifact", default="", help="also save the retriever here")
    sim.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="override a simulator setting (repeatable), e.g. --set items=50000")
    sim.add_argument("--train", action="append", default=[], metavar="KEY=VALUE",
                     help="override a retrieval training setting (repeatable), e.g. --train logq_weight=0.5")
    sim.add_argument("--model", action="append", default=[], metavar="KEY=VALUE",
                     help="override a two-tower model setting (repeatable), e.g. --model id_dropout=0.5")
    tb = sub.add_parser("taobao", help="the Taobao sample, through features.adapters.taobao")
    tb.add_argument("--data", default="../shared/data/taobao/UserBehavior_head.csv")
    for p in (sim, tb):
        p.add_argument("--threads", type=int, default=1, help="torch threads (default 1: see the note on shared cores)")
        p.add_argument("--out", default="")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    result = run_sim(args) if args.source == "sim" else run_taobao(args)
    result["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version()}
    text = json.dumps(result, indent=2, default=float)
    print(text)
    out = args.out or f"build/bench/retrieval_eval_{args.source}{'_' + args.preset if args.source == 'sim' else ''}.json"
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(text + "\n")


if __name__ == "__main__":
    main()
