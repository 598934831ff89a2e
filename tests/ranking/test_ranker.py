"""LambdaMART with IPS pair weights: the objective, its agreement with LightGBM, the estimator's contract."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from ranking._metrics import group_sizes, ndcg_at_k
from ranking.config import GBDTParams
from ranking.ranker import LambdaMARTRanker, LambdaRankObjective
from tests.ranking.synthetic import make_training_frame

FEATURES = ["f_item_quality", "f_item_popularity", "f_ui_affinity", "f_ctx_hour", "f_item_log_price", "f_user_noise"]
SMALL = GBDTParams(num_boost_round=30, early_stopping_rounds=10, num_leaves=7, min_data_in_leaf=20, learning_rate=0.1)


def _brute_force(labels, sizes, score, high_weight, sample_weight, trunc=30, sigma=1.0):
    """LightGBM's LambdarankNDCG::GetGradientsForOneQuery, transcribed as loops, with a weight per pair."""
    grad = np.zeros(len(labels))
    hess = np.zeros(len(labels))
    start = 0
    for n in sizes:
        idx = list(range(start, start + n))
        start += n
        lab = labels[idx]
        s = score[idx]
        gains = 2.0 ** lab - 1
        ideal = sorted(gains, reverse=True)[:trunc]
        max_dcg = sum(g / math.log2(r + 2) for r, g in enumerate(ideal))
        inv = 1.0 / max_dcg if max_dcg > 0 else 0.0
        order = sorted(range(n), key=lambda i: (-s[i], i))
        best, worst = s[order[0]], s[order[-1]]
        pairs = []
        for i in range(min(n - 1, trunc)):
            for j in range(i + 1, n):
                a, b = order[i], order[j]
                if lab[a] == lab[b]:
                    continue
                (h, rh), (lo, rl) = ((a, i), (b, j)) if lab[a] > lab[b] else ((b, j), (a, i))
                delta = s[h] - s[lo]
                d = (gains[h] - gains[lo]) * abs(1 / math.log2(rh + 2) - 1 / math.log2(rl + 2)) * inv
                if best != worst:
                    d /= 0.01 + abs(delta)
                rho = 1 / (1 + math.exp(sigma * delta))
                pairs.append((h, lo, -sigma * d * rho, sigma ** 2 * d * rho * (1 - rho)))
        total = sum(-2 * lam for _, _, lam, _ in pairs)
        factor = math.log2(1 + total) / total if total > 0 else 1.0
        for h, lo, lam, hs in pairs:
            w = high_weight[idx[h]] * sample_weight[idx[h]] * sample_weight[idx[lo]] * factor
            grad[idx[h]] += w * lam
            grad[idx[lo]] -= w * lam
            hess[idx[h]] += w * hs
            hess[idx[lo]] += w * hs
    return grad, hess


@pytest.mark.parametrize("trunc", [30, 3])
def test_objective_matches_a_transcription_of_lightgbm_with_pair_weights(trunc):
    rng = np.random.default_rng(0)
    sizes = np.array([1, 6, 9, 4, 12, 7])
    n = sizes.sum()
    labels = rng.integers(0, 4, n).astype(float)
    labels[1:7] = 0  # a query without pairs
    score = rng.normal(size=n).round(1)  # ties included
    hw = rng.uniform(1, 10, n)
    sw = rng.choice([1.0, 2.0], n)
    obj = LambdaRankObjective(labels, sizes, high_weight=hw, sample_weight=sw, truncation_level=trunc)
    grad, hess = obj.gradients(score)
    exp_grad, exp_hess = _brute_force(labels, sizes, score, hw, sw, trunc=trunc)
    np.testing.assert_allclose(grad, exp_grad, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(hess, exp_hess, rtol=1e-10, atol=1e-12)
    assert np.all(grad[1:7] == 0)


def test_the_weight_goes_to_the_pair_of_the_higher_graded_document():
    # Query: one click (grade 1) and two non-clicks. Weighting the click scales all its pairs;
    # weighting a non-click changes nothing (it is never the higher-graded side).
    labels = np.array([1.0, 0.0, 0.0])
    sizes = np.array([3])
    score = np.array([0.2, 0.1, 0.3])
    base = LambdaRankObjective(labels, sizes).gradients(score)
    clicked_weighted = LambdaRankObjective(labels, sizes, high_weight=np.array([5.0, 1.0, 1.0])).gradients(score)
    negative_weighted = LambdaRankObjective(labels, sizes, high_weight=np.array([1.0, 5.0, 5.0])).gradients(score)
    np.testing.assert_allclose(clicked_weighted[0], 5 * base[0])
    np.testing.assert_allclose(negative_weighted[0], base[0])


def test_unit_weights_reproduce_lightgbm_lambdarank():
    import lightgbm as lgb

    frame, _ = make_training_frame(n_requests=400, seed=2)
    X = frame[FEATURES].to_numpy()
    y = frame["label"].to_numpy(dtype=float)
    sizes = group_sizes(frame["request_id"].to_numpy())
    params = {"num_leaves": 7, "learning_rate": 0.1, "min_data_in_leaf": 20, "num_threads": 1, "verbosity": -1,
              "deterministic": True, "force_row_wise": True}
    native = lgb.train({**params, "objective": "lambdarank"}, lgb.Dataset(X, y, group=sizes), 20)
    custom = lgb.train({**params, "objective": LambdaRankObjective(y, sizes)}, lgb.Dataset(X, y, group=sizes), 20)
    # LightGBM looks the sigmoid up in a table and keeps gradients in float32: agreement to ~1e-5.
    np.testing.assert_allclose(custom.predict(X), native.predict(X), atol=1e-4)


def test_ips_weighting_beats_naive_against_the_truth():
    """On a position-biased log whose logging order follows popularity, IPS ranks closer to the truth."""
    frame, truth = make_training_frame(n_requests=4000, randomized_share=0.1, seed=3)
    frame["true"] = truth["attractiveness"]
    train, valid = frame[frame.request_id < 3000], frame[frame.request_id >= 3000]
    ips = (train["position"].to_numpy(dtype=float) + 1.0)  # true 1 / e(p) with eta = 1
    params = GBDTParams(num_boost_round=60, early_stopping_rounds=0, num_leaves=7, min_data_in_leaf=50)
    scores = {}
    for name, weight in (("naive", None), ("ips", np.minimum(ips, 10.0))):
        ranker = LambdaMARTRanker(params=params).fit(
            train[FEATURES], train["label"], train["request_id"], ips_weight=weight,
            eval_set=(valid[FEATURES], valid["label"], valid["request_id"]))
        sizes = group_sizes(valid["request_id"].to_numpy())
        scores[name] = ndcg_at_k(valid["true"].to_numpy(), ranker.predict(valid[FEATURES]), sizes, 10, gain="linear")
    assert scores["ips"] > scores["naive"] + 0.03, scores  # measured: +0.06 (0.874 -> 0.939)


@pytest.fixture(scope="module")
def small_split():
    frame, _ = make_training_frame(n_requests=600, seed=4)
    return frame[frame.request_id < 450], frame[frame.request_id >= 450]


def test_fit_predict_save_load_round_trip(small_split, tmp_path):
    train, valid = small_split
    ranker = LambdaMARTRanker(params=SMALL).fit(train[FEATURES], train["label"], train["request_id"],
                                                eval_set=(valid[FEATURES], valid["label"], valid["request_id"]))
    assert 1 <= ranker.best_iteration_ <= SMALL.num_boost_round
    assert set(ranker.valid_scores_) == {"ndcg@10", "ndcg@20"}
    sizes = group_sizes(valid["request_id"].to_numpy())
    # LightGBM's own ndcg@k breaks tied scores by row order and counts a request without a relevant
    # row as 1; the shared NDCG averages over ties and skips such requests. Break the ties as it does:
    pred = ranker.predict(valid[FEATURES])
    q = np.repeat(np.arange(len(sizes)), sizes)
    row_order = np.empty(len(pred))
    row_order[np.lexsort((np.arange(len(pred)), -pred, q))] = -np.arange(len(pred), dtype=float)
    ours = ndcg_at_k(valid["label"].to_numpy(float), row_order, sizes, 20)
    empty = (valid.groupby("request_id", sort=False)["label"].max().to_numpy() == 0).mean()
    assert (1 - empty) * ours + empty == pytest.approx(ranker.valid_scores_["ndcg@20"], abs=1e-9)
    path = ranker.save(tmp_path / "ranker.txt")
    assert path.read_text().startswith("tree")
    again = LambdaMARTRanker.load(path)
    np.testing.assert_allclose(again.predict(valid[FEATURES].to_numpy()), ranker.predict(valid[FEATURES]))
    assert again.feature_names_ == FEATURES


def test_early_stopping_follows_the_stop_at_metric(small_split):
    train, valid = small_split
    params = GBDTParams(num_boost_round=200, early_stopping_rounds=5, num_leaves=31, min_data_in_leaf=5,
                        learning_rate=0.3)
    ranker = LambdaMARTRanker(params=params, stop_at=10).fit(
        train[FEATURES], train["label"], train["request_id"],
        eval_set=(valid[FEATURES], valid["label"], valid["request_id"]))
    history = ranker.evals_result_["valid"]["ndcg@10"]
    assert len(history) == ranker.best_iteration_ + 5 < 200
    assert max(history) == pytest.approx(history[ranker.best_iteration_ - 1])


def test_ips_weighted_ndcg_reweights_the_logged_gains():
    from ranking.ranker import IPSWeightedNDCG

    labels = np.array([1.0, 0.0, 1.0, 0.0])  # one query: clicks at rows 0 and 2
    sizes = np.array([4])
    preds = np.array([0.9, 0.5, 0.1, 0.0])
    plain = IPSWeightedNDCG(labels, sizes, np.ones(4), (4,))(preds, None)[0]
    assert plain[0] == "ips_ndcg@4" and plain[2] is True
    assert plain[1] == pytest.approx(ndcg_at_k(labels, preds, sizes, 4))
    # Row 2's click came from a slot examined 1/5 as often: it counts 5 times.
    weighted = IPSWeightedNDCG(labels, sizes, np.array([1.0, 1.0, 5.0, 1.0]), (4,))(preds, None)[0][1]
    ideal = 5 / np.log2(2) + 1 / np.log2(3)
    assert weighted == pytest.approx((1 / np.log2(2) + 5 / np.log2(4)) / ideal)
    assert IPSWeightedNDCG(labels, sizes, np.ones(4), (4,))(np.zeros(7), None) == []  # another dataset


def test_early_stopping_on_the_ips_weighted_metric(small_split):
    train, valid = small_split
    w = valid["position"].to_numpy(dtype=float) + 1.0
    ranker = LambdaMARTRanker(params=SMALL).fit(
        train[FEATURES], train["label"], train["request_id"],
        eval_set=(valid[FEATURES], valid["label"], valid["request_id"]), eval_ips_weight=w)
    history = ranker.evals_result_["valid"]["ips_ndcg@20"]
    assert set(ranker.valid_scores_) == {"ndcg@10", "ndcg@20", "ips_ndcg@10", "ips_ndcg@20"}
    assert ranker.valid_scores_["ips_ndcg@20"] == pytest.approx(max(history))
    with pytest.raises(ValueError, match="eval_ips_weight needs an eval_set"):
        LambdaMARTRanker(params=SMALL).fit(train[FEATURES], train["label"], train["request_id"], eval_ips_weight=w)


X_OK = pd.DataFrame({"f_a": [0.1, 0.2, 0.3, 0.4], "f_b": [1.0, 0.0, 1.0, 0.0]})


@pytest.mark.parametrize("kwargs, error, match", [
    ({"X": [[1, 2]]}, TypeError, "X must be a pandas DataFrame or a numpy array"),
    ({"X": X_OK.assign(f_c="x")}, TypeError, "X columns must be numeric"),
    ({"X": np.zeros((4, 0))}, ValueError, "at least one row and one feature"),
    ({"X": X_OK.assign(f_a=[np.inf, 0, 0, 0])}, ValueError, "infinite"),
    ({"y": [0, 1, 2]}, ValueError, r"y must have shape \(4,\)"),
    ({"y": [0, 1, -1, 0]}, ValueError, "integer grades"),
    ({"y": [0, 1.5, 0, 0]}, ValueError, "integer grades"),
    ({"group": [1, 2, 1, 2]}, ValueError, "group: .*contiguously"),
    ({"group": [1, 1, None, 2]}, ValueError, "group must not contain nulls"),
    ({"ips_weight": [1, 1, -1, 1]}, ValueError, "ips_weight must be finite and >= 0"),
    ({"sample_weight": [1, 1]}, ValueError, r"sample_weight must have shape \(4,\)"),
    ({"eval_set": (X_OK[["f_a"]], [0, 1, 0, 1], [1, 1, 2, 2])}, ValueError, "feature_names must equal"),
])
def test_invalid_inputs(kwargs, error, match):
    args = {"X": X_OK, "y": [0, 1, 0, 1], "group": [1, 1, 2, 2], **kwargs}
    with pytest.raises(error, match=match):
        LambdaMARTRanker(params=SMALL).fit(args.pop("X"), args.pop("y"), args.pop("group"), **args)


def test_predict_checks_features_and_fitting():
    with pytest.raises(RuntimeError, match="not fitted"):
        LambdaMARTRanker().predict(X_OK)
    ranker = LambdaMARTRanker(params=GBDTParams(num_boost_round=2, min_data_in_leaf=1)).fit(
        X_OK, [0, 1, 0, 1], [1, 1, 2, 2])
    with pytest.raises(ValueError, match="training features in the training order"):
        ranker.predict(X_OK[["f_b", "f_a"]])
    with pytest.raises(ValueError, match="must have 2 features"):
        ranker.predict(np.zeros((3, 3)))
    with pytest.raises(ValueError, match="stop_at must be one of eval_at"):
        LambdaMARTRanker(stop_at=7).fit(X_OK, [0, 1, 0, 1], [1, 1, 2, 2])
