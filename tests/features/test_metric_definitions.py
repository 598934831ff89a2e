"""One definition per metric: every package's entry point gives the numbers of features.metrics.

Before, ``ranking.calibration`` and ``experiments.metrics`` each had an
``expected_calibration_error`` (equal-mass vs equal-width bins), ``ranking._metrics.ndcg_at_k``
and ``experiments.metrics.ndcg_score`` disagreed on ties and on requests without a relevant
item, and ``retrieval.evaluation.recall_at_k_score`` was a third recall. These tests pin that
the old call sites now return the shared definition's numbers.
"""

from __future__ import annotations

import numpy as np
import pytest

import experiments.metrics as em
import features.metrics as fm
import ranking.calibration as rc
from ranking._metrics import ndcg_at_k, query_index
from retrieval.evaluation import recall_at_k_score


def _queries(seed: int, n_queries: int = 50):
    rng = np.random.default_rng(seed)
    sizes = rng.integers(2, 15, n_queries)
    n = int(sizes.sum())
    grades = rng.integers(0, 4, n) * (rng.random(n) < 0.3)
    score = np.round(rng.normal(size=n), 1)  # ties within queries
    return sizes, grades.astype(float), score


def test_names_are_one_object_everywhere():
    for name in ("ndcg_score", "ips_ndcg_score", "recall_at_k", "mrr_score", "expected_calibration_error",
                 "reliability_curve", "ReliabilityCurve"):
        assert getattr(em, name) is getattr(fm, name), name
    for name in ("expected_calibration_error", "reliability_curve", "ReliabilityCurve"):
        assert getattr(rc, name) is getattr(fm, name), name


@pytest.mark.parametrize("gain", ["exp2", "linear"])
def test_ranking_ndcg_adapter_equals_the_shared_ndcg(gain):
    sizes, grades, score = _queries(0)
    q = query_index(sizes)
    qw = np.random.default_rng(1).uniform(0.5, 2.0, len(sizes))
    perm = np.random.default_rng(2).permutation(len(q))  # the shared one does not need contiguous rows
    for k in (1, 5, 10):
        shared = em.ndcg_score(grades[perm], score[perm], q[perm], k, gain=gain,
                               sample_weight=np.repeat(qw, sizes)[perm])
        assert ndcg_at_k(grades, score, sizes, k, gain=gain, query_weight=qw) == pytest.approx(shared, rel=1e-12)
    # IPS-NDCG is NDCG of propensity-weighted exp2 gains, linear: what the ranker's validation computes.
    prop = np.random.default_rng(3).uniform(0.2, 1.0, len(q))
    assert em.ips_ndcg_score(grades, score, q, prop, 10, clip=0.01) == pytest.approx(
        ndcg_at_k((np.exp2(grades) - 1.0) / prop, score, sizes, 10, gain="linear"), rel=1e-12)


def test_retrieval_recall_equals_the_shared_recall_and_the_plain_definition():
    rng = np.random.default_rng(4)
    n_users, width, catalog = 60, 30, 200
    retrieved = np.stack([rng.permutation(catalog)[:width] for _ in range(n_users)])
    targets = [rng.choice(catalog, size=int(rng.integers(0, 6)), replace=False) for _ in range(n_users)]
    for k in (1, 10, 30):
        plain = np.mean([np.isin(t, r[:k]).mean() for r, t in zip(retrieved, targets, strict=True) if len(t)])
        rows = [(u, i, -pos, float(i in set(targets[u]))) for u in range(n_users)
                for pos, i in enumerate(retrieved[u])]
        rows += [(u, i, -float(width), 1.0) for u in range(n_users) for i in targets[u] if i not in retrieved[u]]
        user, _, score, rel = map(np.asarray, zip(*rows, strict=True))
        assert recall_at_k_score(retrieved, targets, k) == pytest.approx(plain, rel=1e-12)
        assert em.recall_at_k(rel, score, user, k) == pytest.approx(plain, rel=1e-12)
    # A repeated id counts once and still takes its slot: item 2 sits at position 3, outside the top 3.
    repeated = np.array([[1, 1, 1, 2], [3, 4, 5, 6]])
    assert recall_at_k_score(repeated, [np.array([2, 1]), np.array([], dtype=np.int64)], 3) == pytest.approx(0.5)
    assert recall_at_k_score(repeated, [np.array([2, 1]), np.array([6])], 4) == pytest.approx(1.0)


def test_ece_is_one_number_for_both_former_call_sites():
    rng = np.random.default_rng(5)
    p = rng.beta(0.5, 200, 50_000)
    y = (rng.random(p.size) < p).astype(float)
    w = rng.uniform(0.5, 2.0, p.size)
    a = rc.expected_calibration_error(y, 2 * p, n_bins=15, sample_weight=w)  # ranking/train.py's call
    b = em.expected_calibration_error(y, 2 * p, 15, "quantile", sample_weight=w)  # experiments/evaluate.py's call
    assert a == b


def test_quantile_ece_sees_a_miscalibration_that_uniform_bins_hide():
    rng = np.random.default_rng(6)
    true_p = rng.beta(0.5, 500, 200_000)  # base rate about 1e-3, as purchases
    y = (rng.random(true_p.size) < true_p).astype(float)
    flat = 0.5 * (true_p + true_p.mean())  # pulled halfway to the mean: 2x too high below it, too low above
    base = y.mean()
    curve = fm.reliability_curve(y, flat)
    assert curve.base_rate == pytest.approx(base)
    uniform = fm.expected_calibration_error(y, flat, strategy="uniform")
    quantile = fm.expected_calibration_error(y, flat)
    assert uniform < 0.1 * base  # one bin holds nearly everything: ECE ~ |mean(p) - mean(y)|
    assert quantile > 0.4 * base
    assert fm.expected_calibration_error(y, true_p) < quantile / 2
    assert fm.expected_calibration_error(y, flat, relative=True) == pytest.approx(quantile / base)
    assert curve.calibration_error() == quantile


def test_relative_ece_without_positives_is_nan():
    assert np.isnan(fm.expected_calibration_error([0, 0, 0], [0.1, 0.2, 0.3], relative=True))
