"""Train the two-tower on any contract log and compare it with the baselines, with standard errors.

One call (:func:`compare_on_log`) splits the log (leave-last-out or by time), trains the
two-tower on what comes before, and scores four retrievers on the held-out targets: the
two-tower with exact search, the two-tower with the configured ANN index (calibrated as it
would be for serving, see :meth:`retrieval.index.ItemIndex.calibrate`), popularity, and the
user's own history. Every figure is a mean over users with its standard error, and a paired
difference to popularity. ``feedrank evaluate-retrieval`` runs it from the command line.

Importing this module imports torch and faiss.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from retrieval.config import RetrievalConfig
from retrieval.evaluation import (
    EvaluationQueries,
    compare_retrievers,
    leave_last_out_split,
    time_split_queries,
)
from retrieval.index import ItemIndex, ann_recall_score
from retrieval.logs import EventLog
from retrieval.retriever import HistoryRetriever, PopularityRetriever, Retriever
from retrieval.train import train_two_tower
from retrieval.two_tower import TwoTowerRetriever

__all__ = ["SPLITS", "compare_on_log", "format_table"]

logger = logging.getLogger(__name__)

SPLITS: tuple[str, ...] = ("last", "time")


def _retrievers(tt: TwoTowerRetriever, log: EventLog, config: RetrievalConfig, as_of_us: int,
                impression_weight: float) -> dict[str, Retriever]:
    exact = tt if tt.index.kind == "exact" else tt.with_index(ItemIndex.build(tt.item_vectors, config.index,
                                                                              kind="exact"))
    pop = PopularityRetriever(catalog=tt.catalog, popularity=tt.popularity, users=tt.state, config=config.serving)
    hist = HistoryRetriever.from_log(log, as_of_us=as_of_us, catalog=tt.catalog, popularity=tt.popularity,
                                     users=tt.state, config=config.serving, impression_weight=impression_weight)
    # "two_tower_ann": the configured index as calibrated for serving (index.kind in the report; it may
    # have fallen back to IVF or exact search to keep the target recall)
    return {"two_tower_exact": exact, "two_tower_ann": tt, "popularity": pop, "history": hist}


def _ann_check(tt: TwoTowerRetriever, exact: TwoTowerRetriever, queries: EvaluationQueries,
               ks: Sequence[int]) -> dict[str, Any]:
    """ANN recall against exact search, and search latency per query, on the evaluation's warm users."""
    vectors, warm = tt.user_vectors(queries.user_ids, queries.context)
    q = vectors[warm]
    out: dict[str, Any] = {"index_kind": tt.index.kind, "warm_users": int(warm.sum())}
    if not len(q):
        return out
    k = max(ks)
    timings = {}
    for name, retriever in (("ann", tt), ("exact", exact)):
        t0 = time.perf_counter()
        rows = retriever.index.search(q, k, allowed=tt.searchable)[1]
        timings[name] = (rows, (time.perf_counter() - t0) / len(q) * 1e3)
    for kk in ks:
        out[f"ann_recall@{kk}"] = ann_recall_score(timings["ann"][0][:, :kk], timings["exact"][0][:, :kk])
    out["ann_ms_per_query"] = round(timings["ann"][1], 3)
    out["exact_ms_per_query"] = round(timings["exact"][1], 3)
    return out


def compare_on_log(log: EventLog, config: RetrievalConfig, *, split: str = "last", test_start_us: int | None = None,
                   target_types: Sequence[str] = ("click", "add_to_cart", "purchase"),
                   ks: Sequence[int] = (10, 100, 500), impression_weight: float = 0.0) -> dict[str, Any]:
    """Train on the log before the split and compare the two-tower (exact, ANN) with popularity and history.

    Parameters
    ----------
    log : EventLog
    config : RetrievalConfig
        With ``split="last"`` early stopping is leave-last-out too (``training.validation_split``).
    split : {"last", "time"}
        "last": each user's last event of ``target_types`` is held out (works on order-only logs).
        "time": events of ``target_types`` at or after ``test_start_us`` are the targets.
    test_start_us : int, optional
        Required with ``split="time"``.
    target_types : sequence of str
    ks : sequence of int
        Cut-offs of recall@K and NDCG@K; the largest must not exceed the catalog.
    impression_weight : float
        Weight of the user's impressions (own page views) in the history baseline.

    Returns
    -------
    dict
        JSON-ready: the split, training figures, ``ann_vs_exact`` and ``results`` per target set
        (``all``, and ``new_items``: targets the user never touched before) as returned by
        :func:`retrieval.evaluation.compare_retrievers`.

    Raises
    ------
    ValueError
        An unknown split, a time split without ``test_start_us``, or no targets.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
    if split == "last":
        train_log, queries = leave_last_out_split(log, event_types=target_types)
        new_items = leave_last_out_split(log, event_types=target_types, new_items_only=True)[1]
        _, last_us = train_log.time_range_us
        train_end = last_us + 1
        config = dataclasses.replace(config, training=dataclasses.replace(config.training, validation_split="last"))
    else:
        if test_start_us is None:
            raise ValueError("split='time' needs test_start_us")
        train_log, train_end = log, int(test_start_us)
        _, last_us = log.time_range_us
        queries = time_split_queries(log, start_us=train_end, end_us=last_us + 1, event_types=target_types)
        new_items = time_split_queries(log, start_us=train_end, end_us=last_us + 1, event_types=target_types,
                                       new_items_only=True)
    if not len(queries):
        raise ValueError(f"the {split} split leaves no users with targets of types {list(target_types)}")
    t0 = time.perf_counter()
    fit = train_two_tower(train_log, config, train_end_us=train_end)
    train_seconds = time.perf_counter() - t0
    tt = TwoTowerRetriever.from_fitted(fit, train_log, index_kind=config.index.ann)
    retrievers = _retrievers(tt, train_log, config, train_end, impression_weight)
    results = {"all": compare_retrievers(retrievers, queries, ks=ks)}
    if len(new_items):
        results["new_items"] = compare_retrievers(retrievers, new_items, ks=ks)
    trained = np.isin(fit.catalog.item_ids, fit.trained_item_ids)
    return {
        "split": split, "test_start_us": None if split == "last" else train_end, "target_types": list(target_types),
        "ks": list(ks), "users": len(log.users), "items": len(log.items), "events": len(log.events),
        "impressions": len(log.impressions), "queries": {"all": len(queries), "new_items": len(new_items)},
        "training": {"examples": fit.n_examples, "epochs": len(fit.epochs), "best_epoch": fit.best_epoch,
                     "validation_split": config.training.validation_split,
                     f"validation_recall@{config.training.early_stopping_k}": round(fit.validation_recall, 4),
                     "examples_per_second": round(fit.examples_per_second), "seconds": round(train_seconds, 1),
                     "items_with_own_vector": int(trained.sum())},
        "index": {"kind": tt.index.kind, **tt.metadata.get("index_calibration", {})},
        "ann_vs_exact": _ann_check(tt, retrievers["two_tower_exact"], queries, ks),  # type: ignore[arg-type]
        "results": results,
    }


def format_table(report: dict[str, Any]) -> str:
    """The comparison as a Markdown table per target set: mean ± standard error per metric."""
    lines = []
    for target, by_name in report["results"].items():
        metrics = [m for m in next(iter(by_name.values())) if m not in ("users",) and not m.startswith("vs_")]
        lines.append(f"{target} ({next(iter(by_name.values()))['users']} users)")
        lines.append("| retriever | " + " | ".join(metrics) + " |")
        lines.append("| --- |" + " --- |" * len(metrics))
        for name, values in by_name.items():
            cells = [f"{values[m]['mean']:.4f} ± {values[m]['se']:.4f}" for m in metrics]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)
