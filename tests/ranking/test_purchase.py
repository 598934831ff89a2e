"""The purchase model: a LightGBM binary classifier honouring downsampling weights."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ranking.config import GBDTParams
from ranking.purchase import PurchaseModel

PARAMS = GBDTParams(num_boost_round=60, early_stopping_rounds=10, num_leaves=7, min_data_in_leaf=50)


def _data(n, seed, keep=1.0):
    rng = np.random.default_rng(seed)
    X = pd.DataFrame({"f_a": rng.normal(size=n), "f_b": rng.normal(size=n)})
    p = 1 / (1 + np.exp(-(-4.0 + 1.2 * X["f_a"] - 0.5 * X["f_b"])))
    y = rng.random(n) < p
    kept = y | (rng.random(n) < keep)
    w = np.where(y, 1.0, 1.0 / keep)
    return X[kept].reset_index(drop=True), y[kept], w[kept], p[kept].to_numpy()


def test_downsampling_weights_keep_probabilities_on_the_population_scale():
    X, y, w, p = _data(60_000, seed=0, keep=0.2)
    Xv, yv, wv, _ = _data(20_000, seed=1, keep=0.2)
    weighted = PurchaseModel(params=PARAMS).fit(X, y, sample_weight=w, eval_set=(Xv, yv, wv))
    unweighted = PurchaseModel(params=PARAMS).fit(X, y, eval_set=(Xv, yv, None))
    # Weighted mean prediction matches the population rate; ignoring the weights inflates it ~3-5x.
    rate = np.average(p, weights=w)
    assert np.average(weighted.predict_proba(X), weights=w) == pytest.approx(rate, rel=0.15)
    assert np.average(unweighted.predict_proba(X), weights=w) > 2 * rate
    assert 1 <= weighted.best_iteration_ <= PARAMS.num_boost_round
    assert set(weighted.valid_scores_) == {"binary_logloss", "auc"} and weighted.valid_scores_["auc"] > 0.7


def test_save_load_round_trip(tmp_path):
    X, y, w, _ = _data(5000, seed=2)
    model = PurchaseModel(params=PARAMS).fit(X, y)
    again = PurchaseModel.load(model.save(tmp_path / "purchase.txt"))
    np.testing.assert_allclose(again.predict_proba(X.to_numpy()), model.predict_proba(X))
    assert again.feature_names_ == ["f_a", "f_b"]


@pytest.mark.parametrize("y, kwargs, error, match", [
    ([0, 1, 2, 0], {}, ValueError, "only 0 and 1"),
    ([0, 0, 0, 0], {}, ValueError, "both classes"),
    ([0, 1, 0], {}, ValueError, r"y must have shape \(4,\)"),
    (["a", "b", "a", "b"], {}, TypeError, "bool or numeric"),
    ([0, 1, 0, 1], {"sample_weight": [1, np.nan, 1, 1]}, ValueError, "sample_weight must be finite"),
])
def test_invalid_inputs(y, kwargs, error, match):
    X = pd.DataFrame({"f_a": [0.1, 0.2, 0.3, 0.4]})
    with pytest.raises(error, match=match):
        PurchaseModel(params=PARAMS).fit(X, np.asarray(y), **kwargs)


def test_unfitted_model_is_refused():
    with pytest.raises(RuntimeError, match="not fitted"):
        PurchaseModel().predict_proba(pd.DataFrame({"f_a": [0.0]}))
