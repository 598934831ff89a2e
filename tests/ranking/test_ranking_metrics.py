"""The ranking package's NDCG adapter: known answers, the shared definition, and LightGBM's metric."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm

from features.metrics import ndcg_score
from ranking._metrics import group_sizes, ndcg_at_k, query_index


def test_known_answer():
    # One query: relevance 3, 2, 0 ranked as 0, 2, 3 (worst first).
    rel = np.array([3.0, 2.0, 0.0])
    score = np.array([0.1, 0.5, 0.9])
    dcg = 0 / np.log2(2) + 3 / np.log2(3) + 7 / np.log2(4)
    ideal = 7 / np.log2(2) + 3 / np.log2(3)
    assert ndcg_at_k(rel, score, np.array([3]), 3) == pytest.approx(dcg / ideal)
    assert ndcg_at_k(rel, -score, np.array([3]), 3) == pytest.approx(1.0)


@pytest.mark.parametrize("gain", ["exp2", "linear"])
def test_matches_sklearn_with_ties_averaged_and_empty_queries_skipped(gain):
    rng = np.random.default_rng(0)
    sizes = rng.integers(2, 12, 40)
    n = int(sizes.sum())
    rel = rng.integers(0, 4, n).astype(float) if gain == "exp2" else rng.random(n) * (rng.random(n) < 0.5)
    score = rng.integers(0, 3, n).astype(float)  # many ties: averaged over their orders, as sklearn does
    starts = np.r_[0, np.cumsum(sizes)[:-1]]
    rel[starts[0]:starts[0] + sizes[0]] = 0.0  # a query without a relevant row is skipped
    g = (2.0 ** rel - 1.0) if gain == "exp2" else rel
    for k in (1, 3, 10):
        per_query = [skm.ndcg_score(g[s:s + m][None], score[s:s + m][None], k=k)
                     for s, m in zip(starts, sizes, strict=True) if g[s:s + m].any()]
        assert ndcg_at_k(rel, score, sizes, k, gain=gain) == pytest.approx(np.mean(per_query), rel=1e-12)
        # The adapter is the shared definition, whatever the row order within a query.
        assert ndcg_at_k(rel, score, sizes, k, gain=gain) == ndcg_score(rel, score, query_index(sizes), k, gain=gain)


def test_query_weight_is_a_weighted_mean_over_queries():
    rel = np.array([1.0, 0.0, 0.0, 1.0])
    score = np.array([1.0, 0.0, 1.0, 0.0])  # query 0 perfect (1), query 1 worst (1 / log2(3))
    sizes = np.array([2, 2])
    assert ndcg_at_k(rel, score, sizes, 2, query_weight=np.array([3.0, 1.0])) == pytest.approx(
        (3 * 1.0 + 1 / np.log2(3)) / 4)


def test_agrees_with_lightgbm_ndcg_metric_when_every_query_has_a_relevant_row():
    import lightgbm as lgb

    rng = np.random.default_rng(1)
    sizes = rng.integers(5, 25, 60)
    n = sizes.sum()
    X = rng.normal(size=(n, 5))
    y = np.clip((X[:, 0] + rng.normal(size=n)).round(), 0, 3)
    starts = np.r_[0, np.cumsum(sizes)[:-1]]
    y[starts] = np.maximum(y[starts], 1)  # LightGBM counts a query without a relevant row as 1; we skip it
    evals: dict = {}
    valid = lgb.Dataset(X, y, group=sizes)
    booster = lgb.train({"objective": "lambdarank", "metric": "ndcg", "eval_at": [5], "verbosity": -1,
                         "num_threads": 1}, lgb.Dataset(X, y, group=sizes), 5, valid_sets=[valid],
                        callbacks=[lgb.record_evaluation(evals)])
    assert ndcg_at_k(y, booster.predict(X), sizes, 5) == pytest.approx(evals["valid_0"]["ndcg@5"][-1], abs=1e-9)


def test_group_sizes_requires_contiguous_queries():
    assert group_sizes(np.array([7, 7, 3, 3, 3, 9])).tolist() == [2, 3, 1]
    with pytest.raises(ValueError, match="contiguously"):
        group_sizes(np.array([1, 2, 1]))
