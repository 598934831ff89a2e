"""Tests of experiments.metrics: known answers, scikit-learn cross-checks, invalid inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn import metrics as skm

from experiments import metrics as m


def _random_queries(seed: int, n_groups: int = 40, size: int = 9, ties: bool = False):
    """Graded relevance and scores for n_groups queries, rows shuffled so groups interleave."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, n_groups * size) * (rng.random(n_groups * size) < 0.5)
    s = rng.normal(size=n_groups * size)
    if ties:
        s = np.round(s)
    g = np.repeat(rng.permutation(1000)[:n_groups], size)  # arbitrary, unsorted ids
    perm = rng.permutation(y.size)
    return y[perm], s[perm], g[perm]


# ----------------------------------------------------------------------------- NDCG


def test_ndcg_known_answer():
    # Scores rank the items [rel 0, rel 3, rel 1]; ideal order is [3, 1, 0].
    y, s, g = [0, 3, 1], [0.9, 0.5, 0.1], [7, 7, 7]
    dcg = 0 / math.log2(2) + 7 / math.log2(3) + 1 / math.log2(4)
    idcg = 7 / math.log2(2) + 1 / math.log2(3)
    assert m.ndcg_score(y, s, g, k=None) == pytest.approx(dcg / idcg)
    assert m.ndcg_score(y, s, g, k=1) == 0.0
    assert m.ndcg_score(y, s, g, k=2) == pytest.approx((7 / math.log2(3)) / idcg)


@pytest.mark.parametrize("k", [1, 3, 5, None])
@pytest.mark.parametrize("ties", [False, True])
def test_ndcg_matches_sklearn_per_query(k, ties):
    y, s, g = _random_queries(seed=1, ties=ties)
    ours, theirs = [], []
    for gid in np.unique(g):
        rows = g == gid
        if not np.any(y[rows] > 0):
            continue
        # sklearn uses linear gain: feed it the exponential gain 2**rel - 1 as y_true.
        gain = (2.0 ** y[rows] - 1.0)[None, :]
        theirs.append(skm.ndcg_score(gain, s[rows][None, :], k=k))
        ours.append(m.ndcg_score(y[rows], s[rows], g[rows], k=k))
    np.testing.assert_allclose(ours, theirs, rtol=1e-12)
    assert m.ndcg_score(y, s, g, k=k) == pytest.approx(np.mean(theirs), rel=1e-12)


def test_ndcg_ignores_row_order_and_skips_groups_without_relevance():
    y, s, g = _random_queries(seed=2)
    value = m.ndcg_score(y, s, g, k=5)
    perm = np.random.default_rng(0).permutation(y.size)
    assert m.ndcg_score(y[perm], s[perm], g[perm], k=5) == pytest.approx(value, rel=1e-12)
    # Adding a query with no relevant item changes nothing.
    y2 = np.concatenate((y, [0, 0, 0]))
    s2 = np.concatenate((s, [3.0, 2.0, 1.0]))
    g2 = np.concatenate((g, [-1, -1, -1]))
    assert m.ndcg_score(y2, s2, g2, k=5) == pytest.approx(value, rel=1e-12)


def test_ndcg_is_nan_when_no_group_has_a_relevant_item():
    assert math.isnan(m.ndcg_score([0, 0, 0], [1.0, 2.0, 3.0], [1, 1, 2]))


def test_ndcg_constant_scores_are_tie_averaged():
    # All tied: every item gets the mean discount of the positions, whatever the row order.
    a = m.ndcg_score([1, 0, 0], [0.0, 0.0, 0.0], [1, 1, 1], k=None)
    b = m.ndcg_score([0, 0, 1], [0.0, 0.0, 0.0], [1, 1, 1], k=None)
    mean_disc = np.mean(1 / np.log2(np.arange(3) + 2))
    assert a == pytest.approx(b) == pytest.approx(mean_disc)


def test_ndcg_sample_weight_weights_queries():
    y = [1, 0, 0, 1]
    s = [1.0, 0.0, 1.0, 0.0]  # query 1 perfect (1.0), query 2 relevant item second
    g = [1, 1, 2, 2]
    q2 = 1 / math.log2(3)
    assert m.ndcg_score(y, s, g) == pytest.approx((1 + q2) / 2)
    w = [3.0, 3.0, 1.0, 1.0]
    assert m.ndcg_score(y, s, g, sample_weight=w) == pytest.approx((3 + q2) / 4)


def test_ips_ndcg_reduces_to_ndcg_and_matches_sklearn_on_weighted_gains():
    y, s, g = _random_queries(seed=3)
    ones = np.ones(y.size)
    assert m.ips_ndcg_score(y, s, g, ones, k=5) == pytest.approx(m.ndcg_score(y, s, g, k=5))
    p = np.random.default_rng(4).uniform(0.001, 1.0, y.size)
    clip = 0.05
    ours = m.ips_ndcg_score(y, s, g, p, k=5, clip=clip)
    theirs = []
    for gid in np.unique(g):
        rows = g == gid
        if np.any(y[rows] > 0):
            gain = (2.0 ** y[rows] - 1.0) / np.maximum(p[rows], clip)
            theirs.append(skm.ndcg_score(gain[None, :], s[rows][None, :], k=5))
    assert ours == pytest.approx(np.mean(theirs), rel=1e-12)


def test_ips_ndcg_upweights_rarely_examined_relevance():
    # Two relevant items; the one logged at a rarely examined slot counts more after IPS.
    y, s, g = [1, 1, 0], [0.9, 0.1, 0.5], [1, 1, 1]
    plain = m.ips_ndcg_score(y, s, g, [1.0, 1.0, 1.0], k=None)
    ips = m.ips_ndcg_score(y, s, g, [1.0, 0.1, 1.0], k=None)
    assert ips < plain  # the up-weighted item is ranked last


# --------------------------------------------------------------------- recall and MRR


def test_recall_at_k_known_answer():
    # Query 1: 2 relevant, one in the top 2; query 2: 1 relevant at rank 1; query 3: none.
    y = [1, 0, 1, 0, 2, 0, 0]
    s = [0.9, 0.8, 0.1, 0.3, 0.7, 0.5, 0.4]
    g = [1, 1, 1, 2, 2, 3, 3]
    assert m.recall_at_k(y, s, g, k=2) == pytest.approx((0.5 + 1.0) / 2)
    assert m.recall_at_k(y, s, g, k=3) == pytest.approx(1.0)


def test_recall_denominator_is_all_relevant_items():
    # Three relevant items, k = 1: recall is 1/3, not 1/min(k, 3) = 1.
    assert m.recall_at_k([1, 1, 1], [3.0, 2.0, 1.0], [0, 0, 0], k=1) == pytest.approx(1 / 3)


def test_recall_counts_ties_at_the_cutoff_fractionally():
    # The relevant item ties with another for the single top slot: expected hits 1/2.
    assert m.recall_at_k([1, 0, 0], [1.0, 1.0, 0.0], [5, 5, 5], k=1) == pytest.approx(0.5)


def test_mrr_known_answer_ties_and_cutoff():
    y = [0, 1, 0, 0, 0, 1]
    s = [0.9, 0.8, 0.1, 0.5, 0.4, 0.3]
    g = [1, 1, 1, 2, 2, 2]
    assert m.mrr_score(y, s, g) == pytest.approx((1 / 2 + 1 / 3) / 2)
    assert m.mrr_score(y, s, g, k=2) == pytest.approx((1 / 2 + 0.0) / 2)
    # Relevant item tied with two irrelevant ones at the top: expected rank 1 + 2/2 = 2.
    assert m.mrr_score([1, 0, 0], [1.0, 1.0, 1.0], [0, 0, 0]) == pytest.approx(1 / 2)


# ------------------------------------------------------------------ classification


def test_log_loss_and_auc_match_sklearn():
    rng = np.random.default_rng(5)
    p = rng.uniform(0.01, 0.99, 500)
    y = (rng.random(500) < p).astype(int)
    w = rng.uniform(0.5, 2.0, 500)
    assert m.log_loss(y, p) == pytest.approx(skm.log_loss(y, p))
    assert m.log_loss(y, p, sample_weight=w) == pytest.approx(skm.log_loss(y, p, sample_weight=w))
    assert m.auc_score(y, p) == pytest.approx(skm.roc_auc_score(y, p))
    assert m.auc_score(y.astype(bool), p, sample_weight=w) == pytest.approx(
        skm.roc_auc_score(y, p, sample_weight=w)
    )


def test_expected_calibration_error_known_answer():
    # Uniform bins of width 0.5: bin 1 holds p = 0.2, 0.2 (rate 0.5), bin 2 holds p = 0.9 (rate 1).
    y, p = [0, 1, 1], [0.2, 0.2, 0.9]
    assert m.expected_calibration_error(y, p, n_bins=2, strategy="uniform") == pytest.approx((2 * 0.3 + 1 * 0.1) / 3)
    curve = m.reliability_curve(y, p, n_bins=2, strategy="uniform")
    np.testing.assert_allclose(curve.mean_predicted, [0.2, 0.9])
    np.testing.assert_allclose(curve.observed_rate, [0.5, 1.0])
    np.testing.assert_array_equal(curve.count, [2, 1])
    np.testing.assert_allclose(curve.bin_lower, [0.0, 0.5])


def test_reliability_curve_drops_empty_bins_and_puts_one_in_the_last_bin():
    curve = m.reliability_curve([0, 1], [0.05, 1.0], n_bins=10, strategy="uniform")
    np.testing.assert_array_equal(curve.count, [1, 1])
    np.testing.assert_allclose(curve.bin_upper, [0.1, 1.0])


def test_ece_is_small_for_calibrated_and_large_for_overconfident_predictions():
    rng = np.random.default_rng(6)
    p = rng.uniform(0, 1, 20_000)
    y = (rng.random(p.size) < p).astype(int)
    assert m.expected_calibration_error(y, p, strategy="uniform") < 0.02
    assert m.expected_calibration_error(y, p) < 0.02
    sharp = np.clip((p - 0.5) * 3 + 0.5, 0, 1)
    assert m.expected_calibration_error(y, sharp, strategy="uniform") > 0.1
    assert m.expected_calibration_error(y, sharp) > 0.1


def test_quantile_bins_hold_about_equal_counts():
    p = np.random.default_rng(7).beta(1, 8, 3000)
    curve = m.reliability_curve(np.zeros(3000), p, n_bins=10, strategy="quantile")
    assert curve.count.size == 10
    assert curve.count.min() >= 290 and curve.count.max() <= 310


# -------------------------------------------------------------------- marketplace


def test_expected_gmv_per_mille():
    p, price, margin = [0.01, 0.02], [100.0, 50.0], [0.1, 0.2]
    assert m.expected_gmv_per_mille(p, price) == pytest.approx(1000 * (1.0 + 1.0) / 2)
    assert m.expected_gmv_per_mille(p, price, margin) == pytest.approx(1000 * (0.1 + 0.2) / 2)


def test_catalog_coverage():
    assert m.catalog_coverage(np.array([[1, 2, 3], [3, 2, 9]]), 10) == pytest.approx(0.4)


def test_new_seller_exposure_share_default_and_custom_examination():
    new, pos = [True, False, False], [0, 1, 2]
    e = 1 / np.log2(np.arange(3) + 2)
    assert m.new_seller_exposure_share(new, pos) == pytest.approx(e[0] / e.sum())
    assert m.new_seller_exposure_share(new, pos, examination=[0.5, 0.25, 0.25, 0.1]) == pytest.approx(0.5)


def test_exposure_gini():
    assert m.exposure_gini([1, 2, 3, 4], [1.0, 1.0, 1.0, 1.0]) == pytest.approx(0.0)
    # One item gets everything, three never appear: G = 1 - 1/m.
    assert m.exposure_gini([7, 7], [0.5, 0.5], n_items=4) == pytest.approx(0.75)
    # Unseen items only count when n_items says they exist.
    assert m.exposure_gini([7, 7], [0.5, 0.5]) == pytest.approx(0.0)
    # Known value: totals (1, 2, 3): sum (2i - 4) x_i / (3 * 6) = (-2 + 0 + 6) / 18.
    assert m.exposure_gini(["a", "b", "b", "c"], [1.0, 1.0, 1.0, 3.0]) == pytest.approx(4 / 18)


# ------------------------------------------------------------------ invalid inputs

_Y, _S, _G = [1, 0, 2], [0.3, 0.2, 0.1], [1, 1, 2]

INVALID = [
    (m.ndcg_score, {"y_true": [1, 0], "y_score": _S, "group": _G}, ValueError, "y_score must be of the same length as y_true"),
    (m.ndcg_score, {"y_true": [1, -1, 0], "y_score": _S, "group": _G}, ValueError, r"y_true must be in \[0.0"),
    (m.ndcg_score, {"y_true": _Y, "y_score": [0.1, np.nan, 0.2], "group": _G}, ValueError, "y_score must be finite"),
    (m.ndcg_score, {"y_true": _Y, "y_score": _S, "group": _G, "k": 0}, ValueError, "k must be >= 1"),
    (m.ndcg_score, {"y_true": _Y, "y_score": _S, "group": _G, "k": 2.5}, TypeError, "k must be an int"),
    (m.ndcg_score, {"y_true": [[1, 0, 2]], "y_score": _S, "group": _G}, ValueError, "y_true must be a 1-D array"),
    (m.ndcg_score, {"y_true": [], "y_score": [], "group": []}, ValueError, "y_true must be non-empty"),
    (m.ndcg_score, {"y_true": "abc", "y_score": _S, "group": _G}, TypeError, "y_true must be array-like"),
    (m.ndcg_score, {"y_true": _Y, "y_score": _S, "group": _G, "sample_weight": [1.0, 2.0, 1.0]}, ValueError, "sample_weight must be constant"),
    (m.ips_ndcg_score, {"y_true": _Y, "y_score": _S, "group": _G, "propensity": [0.5, 0.0, 1.0]}, ValueError, r"propensity must be in \(0.0"),
    (m.ips_ndcg_score, {"y_true": _Y, "y_score": _S, "group": _G, "propensity": [0.5, 0.5, 1.0], "clip": 0.0}, ValueError, "clip must be in"),
    (m.recall_at_k, {"y_true": _Y, "y_score": _S, "group": _G, "k": None}, TypeError, "k must be an int"),
    (m.mrr_score, {"y_true": _Y, "y_score": ["a", "b", "c"], "group": _G}, TypeError, "y_score must hold numbers"),
    (m.log_loss, {"y_true": [0, 2], "y_prob": [0.1, 0.2]}, ValueError, "y_true must be binary"),
    (m.log_loss, {"y_true": [0, 1], "y_prob": [0.1, 1.2]}, ValueError, r"y_prob must be in \[0.0, 1.0\]"),
    (m.auc_score, {"y_true": [1, 1], "y_score": [0.1, 0.2]}, ValueError, "y_true must be holding both classes"),
    (m.expected_calibration_error, {"y_true": [0, 1], "y_prob": [0.1, 0.2], "n_bins": 0}, ValueError, "n_bins must be >= 1"),
    (m.expected_calibration_error, {"y_true": [0, 1], "y_prob": [0.1, 0.2], "strategy": "kmeans"}, ValueError, "strategy must be"),
    (m.reliability_curve, {"y_true": [0, 1], "y_prob": [0.1, 0.2], "n_bins": 2.0}, TypeError, "n_bins must be an int"),
    (m.expected_gmv_per_mille, {"p_purchase": [0.1], "price": [-1.0]}, ValueError, "price must be in"),
    (m.expected_gmv_per_mille, {"p_purchase": [0.1], "price": [1.0], "margin_rate": [1.5]}, ValueError, "margin_rate must be in"),
    (m.catalog_coverage, {"recommended_item_ids": [1, 2, 3], "catalog_size": 2}, ValueError, "catalog_size must be >= the number"),
    (m.catalog_coverage, {"recommended_item_ids": [1], "catalog_size": 2.0}, TypeError, "catalog_size must be an int"),
    (m.new_seller_exposure_share, {"is_new_seller": [1, 0], "positions": [0, -1]}, ValueError, "positions must be 0-based"),
    (m.new_seller_exposure_share, {"is_new_seller": [1, 0], "positions": [0.0, 1.0]}, TypeError, "positions must hold integers"),
    (m.new_seller_exposure_share, {"is_new_seller": [1, 0], "positions": [0, 3], "examination": [1.0, 0.5]}, ValueError, r"positions must be < len\(examination\)"),
    (m.exposure_gini, {"item_ids": [1, 2], "exposure_weights": [1.0, -1.0]}, ValueError, "exposure_weights must be in"),
    (m.exposure_gini, {"item_ids": [1, 2, 3], "exposure_weights": [1.0, 1.0, 1.0], "n_items": 2}, ValueError, "n_items must be >="),
]


@pytest.mark.parametrize(("func", "kwargs", "error", "match"), INVALID, ids=lambda v: getattr(v, "__name__", None))
def test_invalid_inputs_raise_with_the_argument_named(func, kwargs, error, match):
    with pytest.raises(error, match=match):
        func(**kwargs)
