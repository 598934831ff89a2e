"""Retrieval on a plain interaction log: leave-last-out split, metrics with standard errors, the CLI end to end."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
import yaml

from features.adapters import InteractionsConfig, adapt_interactions
from infra.cli import main
from retrieval import RequestContext, read_event_log
from retrieval.evaluation import leave_last_out_split, ndcg_at_k_score, per_user_scores


def _clustered_log(path, *, users=240, items=400, groups=8, per_user=14, seed=0) -> pd.DataFrame:
    """An order-only log: each user interacts with items of their group's block (and a little noise)."""
    rng = np.random.default_rng(seed)
    block = items // groups
    rows = []
    for u in range(users):
        g = u % groups
        for _ in range(per_user):
            own = rng.random() < 0.9
            item = g * block + rng.integers(0, block) if own else rng.integers(0, items)
            rows.append((u, int(item)))
    frame = pd.DataFrame(rows, columns=["user", "item"])
    frame["step"] = rng.permutation(len(frame))  # a global order, no timestamps
    frame.to_csv(path, index=False)
    return frame


def test_ndcg_known_answers():
    retrieved = np.array([[5, 1, 2], [7, 8, 9], [3, 4, 6]])
    targets = [np.array([1]), np.array([7, 9]), np.array([0])]
    # user 0: hit at rank 2 -> 1/log2(3); user 1: ranks 1 and 3 over the ideal ranks 1 and 2; user 2: none
    expected = [1 / np.log2(3), (1 + 1 / np.log2(4)) / (1 + 1 / np.log2(3)), 0.0]
    assert ndcg_at_k_score(retrieved, targets, 3) == pytest.approx(np.mean(expected))
    scores = per_user_scores(retrieved, targets, [1, 3])
    np.testing.assert_allclose(scores["recall@3"], [1.0, 1.0, 0.0])
    np.testing.assert_allclose(scores["ndcg@1"], [0.0, 1.0, 0.0])
    with pytest.raises(ValueError, match="k must be in"):
        ndcg_at_k_score(retrieved, targets, 4)


def test_leave_last_out_cuts_each_user_at_their_last_target(tmp_path):
    _clustered_log(tmp_path / "log.csv", users=30, per_user=5)
    adapt_interactions(tmp_path / "log.csv", tmp_path / "logs",
                       InteractionsConfig(user="user", item="item", timestamp=None, order="step"))
    log = read_event_log(tmp_path / "logs")
    train, queries = leave_last_out_split(log, event_types=("click",))
    last = log.events.sort_values("ts_us").groupby("user_id").tail(1).set_index("user_id")
    assert len(queries) == 30 and len(train.events) == len(log.events) - 30
    for user, target in zip(queries.user_ids, queries.targets, strict=True):
        assert target.tolist() == [last.loc[user, "item_id"]]
        assert (train.events.loc[train.events["user_id"] == user, "ts_us"] < last.loc[user, "ts_us"]).all()
    with pytest.raises(ValueError, match="no events of types"):
        leave_last_out_split(log, event_types=("purchase",))


def test_evaluate_retrieval_on_an_order_only_log(tmp_path, capsys):
    source = tmp_path / "log.csv"
    _clustered_log(source)
    assert main(["adapt", "interactions", str(source), "--out", str(tmp_path / "logs"), "--user", "user",
                 "--item", "item", "--order", "step"]) == 0
    config = tmp_path / "fast.yaml"
    config.write_text(yaml.safe_dump({"retrieval": {
        "model": {"user_buckets": 4096, "item_buckets": 8192, "seller_buckets": 1024, "category_buckets": 256,
                  "min_item_examples": 2},
        "training": {"num_threads": 1, "max_epochs": 8, "patience": 3}, "index": {"calibration_queries": 60}}}))
    code = main(["--config", str(config), "evaluate-retrieval", str(tmp_path / "logs"), "--k", "10", "50",
                 "--out", str(tmp_path / "report.json")])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "last split" in out and "| two_tower_exact |" in out
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["split"] == "last" and report["training"]["validation_split"] == "last"
    results = report["results"]["all"]
    assert set(results) == {"two_tower_exact", "two_tower_ann", "popularity", "history"}
    assert results["popularity"]["users"] == 240
    for name in results:
        for metric in ("recall@10", "recall@50", "ndcg@10", "ndcg@50"):
            assert 0.0 <= results[name][metric]["mean"] <= 1.0 and results[name][metric]["se"] > 0
    # the clusters are learnable: the two-tower beats popularity by more than two standard errors
    diff = results["two_tower_exact"]["vs_popularity"]["recall@50"]
    assert diff["mean"] > 2 * diff["se"], results
    assert report["ann_vs_exact"]["ann_recall@50"] > 0.9


def test_a_content_less_catalog_gives_every_learnt_item_its_own_vector(tmp_path):
    from retrieval import TwoTowerRetriever, train_two_tower
    from tests.retrieval.helpers import small_config

    _clustered_log(tmp_path / "log.csv", users=300, items=1500, per_user=16, seed=1)
    adapt_interactions(tmp_path / "log.csv", tmp_path / "logs",
                       InteractionsConfig(user="user", item="item", timestamp=None, order="step"))
    log = read_event_log(tmp_path / "logs")
    train, queries = leave_last_out_split(log, event_types=("click",))
    config = small_config(validation_split="last")
    # hashing ~1,000 learnt items into 2,048 rows would give hundreds of pairs one id embedding
    config = dataclasses.replace(config, model=dataclasses.replace(config.model, item_buckets=2048))
    fit = train_two_tower(train, config, train_end_us=train.time_range_us[1] + 1)
    tt = TwoTowerRetriever.from_fitted(fit, train)
    assert tt.content_less
    learnt = np.isin(tt.catalog.item_ids, fit.trained_item_ids)
    assert learnt.sum() > 500
    assert len(np.unique(tt.item_vectors[learnt], axis=0)) == learnt.sum()  # no two learnt items share a vector
    # items without an own vector never come from the search: they follow the model's picks, by popularity
    ids, scores = tt.recommend(queries.user_ids[:50], RequestContext(hour=0), k=1200)
    own = np.isin(ids, fit.trained_item_ids)
    for row_own, row_scores in zip(own, scores, strict=True):
        first_blind = np.argmin(row_own) if not row_own.all() else len(row_own)
        assert row_own[:first_blind].all() and not row_own[first_blind:].any()
        assert (row_scores[first_blind:] < -1.0).all()
    popular = tt.popularity.global_item_ids
    blind = ids[0][~own[0]]
    rank = {item: r for r, item in enumerate(popular)}
    ranks = [rank.get(i, len(popular)) for i in blind]
    assert ranks == sorted(ranks)
