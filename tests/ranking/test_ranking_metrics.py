"""The private NDCG helper: known answers, a brute-force check, and agreement with LightGBM's metric."""

from __future__ import annotations

import numpy as np
import pytest

from ranking._metrics import group_sizes, ndcg_at_k


def _brute_ndcg(rel, score, k, gain):
    g = (2.0 ** rel - 1.0) if gain == "exp2" else rel
    order = sorted(range(len(score)), key=lambda i: (-score[i], i))
    dcg = sum(g[i] / np.log2(r + 2) for r, i in enumerate(order[:k]))
    ideal = sum(v / np.log2(r + 2) for r, v in enumerate(sorted(g, reverse=True)[:k]))
    return dcg / ideal if ideal > 0 else 1.0


def test_known_answer():
    # One query: relevance 3, 2, 0 ranked as 0, 2, 3 (worst first).
    rel = np.array([3.0, 2.0, 0.0])
    score = np.array([0.1, 0.5, 0.9])
    dcg = 0 / np.log2(2) + 3 / np.log2(3) + 7 / np.log2(4)
    ideal = 7 / np.log2(2) + 3 / np.log2(3)
    assert ndcg_at_k(rel, score, np.array([3]), 3) == pytest.approx(dcg / ideal)
    assert ndcg_at_k(rel, -score, np.array([3]), 3) == pytest.approx(1.0)


@pytest.mark.parametrize("gain", ["exp2", "linear"])
def test_matches_brute_force_on_random_queries(gain):
    rng = np.random.default_rng(0)
    sizes = rng.integers(1, 12, 40)
    rel = rng.integers(0, 4, sizes.sum()).astype(float) if gain == "exp2" else rng.random(sizes.sum())
    score = rng.integers(0, 3, sizes.sum()).astype(float)  # many ties: broken by row order
    starts = np.r_[0, np.cumsum(sizes)[:-1]]
    for k in (1, 3, 10):
        expected = np.mean([_brute_ndcg(rel[s:s + n], score[s:s + n], k, gain) for s, n in zip(starts, sizes, strict=True)])
        assert ndcg_at_k(rel, score, sizes, k, gain=gain) == pytest.approx(expected)


def test_agrees_with_lightgbm_ndcg_metric():
    import lightgbm as lgb

    rng = np.random.default_rng(1)
    sizes = rng.integers(5, 25, 60)
    n = sizes.sum()
    X = rng.normal(size=(n, 5))
    y = np.clip((X[:, 0] + rng.normal(size=n)).round(), 0, 3)
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
