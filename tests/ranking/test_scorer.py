"""Expected GMV scoring: the formula, the tie-break, the blend, and loading compiled or native models."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from ranking.calibration import IsotonicCalibrator
from ranking.compile import CompiledModelUnavailableWarning
from ranking.scorer import ExpectedGMVScorer


class _Fixed:
    """A stand-in predictor returning a fixed column of X (keeps the formulas visible)."""

    kind = "fixed"

    def __init__(self, column: int, n_features: int) -> None:
        self.column = column
        self.n_features = n_features

    def predict(self, X: np.ndarray) -> np.ndarray:
        return X[:, self.column].copy()


def _identity_calibrator() -> IsotonicCalibrator:
    cal = IsotonicCalibrator()
    cal.x_thresholds_ = np.array([0.0, 1.0])
    cal.y_thresholds_ = np.array([0.0, 1.0])
    return cal


def _scorer(blend=0.0, position=False):
    names = ["f_rank", "f_p"]
    return ExpectedGMVScorer(ranker=_Fixed(0, 2), purchase=_Fixed(1, 3 if position else 2),
                             calibrator=_identity_calibrator(), feature_names=names,
                             purchase_feature_names=names + (["position"] if position else []), blend_weight=blend)


def test_expected_gmv_is_probability_times_price_times_margin():
    X = np.array([[0.0, 0.10], [1.0, 0.20], [2.0, 0.05]])
    out = _scorer().score(X, price=[10.0, 5.0, 100.0], margin=[0.5, 1.0, 0.1])
    np.testing.assert_allclose(out.expected_gmv, [0.5, 1.0, 0.5])
    np.testing.assert_allclose(out.score, out.expected_gmv)
    # Equal E[GMV] for rows 0 and 2: the ranker (row 2 scores higher) breaks the tie.
    assert out.order().tolist() == [1, 2, 0]
    no_margin = _scorer().score(X, price=[10.0, 5.0, 100.0])
    np.testing.assert_allclose(no_margin.expected_gmv, [1.0, 1.0, 5.0])


def test_unknown_margins_take_the_batch_mean():
    X = np.array([[0.0, 0.1], [0.0, 0.1], [0.0, 0.1]])
    out = _scorer().score(X, price=[1.0, 1.0, 1.0], margin=[0.2, np.nan, 0.4])
    np.testing.assert_allclose(out.expected_gmv, [0.02, 0.03, 0.04])


def test_blend_multiplies_by_the_standardised_ranker_score_within_each_request():
    X = np.array([[0.0, 0.1], [2.0, 0.1], [5.0, 0.1], [7.0, 0.1]])
    req = np.array([0, 0, 1, 1])
    out = _scorer(blend=0.5).score(X, price=np.ones(4), request_index=req)
    # Within each request z = -1, +1 regardless of the raw score level.
    np.testing.assert_allclose(out.score, 0.1 * np.exp(0.5 * np.array([-1.0, 1.0, -1.0, 1.0])))
    assert out.order().tolist() == [1, 0, 3, 2]


def test_position_feature_is_filled_with_slot_zero():
    seen = {}

    class _Spy(_Fixed):
        def predict(self, X):
            seen["X"] = X
            return X[:, 1]

    names = ["f_rank", "f_p"]
    scorer = ExpectedGMVScorer(ranker=_Fixed(0, 2), purchase=_Spy(1, 3), calibrator=_identity_calibrator(),
                               feature_names=names, purchase_feature_names=names + ["position"])
    scorer.score(np.array([[0.0, 0.2], [1.0, 0.3]]), price=[1.0, 1.0])
    assert seen["X"].shape == (2, 3) and np.all(seen["X"][:, 2] == 0)


@pytest.mark.parametrize("kwargs, error, match", [
    ({"X": [[0.0, 0.1]]}, TypeError, "X must be a numpy array"),
    ({"X": np.zeros((2, 3))}, ValueError, r"X must have shape \(n, 2\)"),
    ({"price": [1.0]}, ValueError, r"price must have shape \(2,\)"),
    ({"price": [1.0, 0.0]}, ValueError, "price must be > 0"),
    ({"price": [1.0, np.nan]}, ValueError, "price must be > 0"),
    ({"margin": [0.5, 1.5]}, ValueError, r"margin must lie in \[0, 1\]"),
    ({"margin": ["a", "b"]}, TypeError, "margin must be numeric"),
    ({"request_index": [0]}, ValueError, r"request_index must have shape \(2,\)"),
])
def test_invalid_inputs(kwargs, error, match):
    args = {"X": np.array([[0.0, 0.1], [1.0, 0.2]]), "price": [1.0, 2.0], **kwargs}
    with pytest.raises(error, match=match):
        _scorer().score(args.pop("X"), **args)


def test_constructor_checks_the_feature_lists():
    with pytest.raises(ValueError, match="purchase_feature_names must be feature_names"):
        ExpectedGMVScorer(ranker=_Fixed(0, 2), purchase=_Fixed(1, 2), calibrator=_identity_calibrator(),
                          feature_names=["f_a", "f_b"], purchase_feature_names=["f_b", "f_a"])
    with pytest.raises(ValueError, match="blend_weight must be >= 0"):
        _scorer(blend=-1.0)


def test_from_dir_scores_with_compiled_models_like_the_trained_ones(trained, synthetic_frame):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        scorer = ExpectedGMVScorer.from_dir(trained.model_dir)
    assert scorer.ranker.kind == "compiled" and scorer.purchase.kind == "compiled"
    rows = synthetic_frame.iloc[:500]
    X = rows[scorer.feature_names].to_numpy(dtype=np.float64)
    out = scorer.score(X, price=rows["price"].to_numpy(), margin=rows["margin_rate"].to_numpy())
    np.testing.assert_allclose(out.ranker_score, trained.ranker.predict(rows[scorer.feature_names]), atol=1e-5)
    slot0 = rows[scorer.feature_names].assign(position=0.0)
    fit = trained.purchase  # the funnel: P(click | examined, slot 0) x P(cart | click) x P(purchase | cart)
    raw = fit.model.predict_proba(rows[scorer.feature_names])
    for _, model, names in fit.stages:
        raw = raw * model.predict_proba(slot0 if names[-1] == "position" else rows[scorer.feature_names])
    expected_p = fit.calibrator.predict(raw)
    np.testing.assert_allclose(out.purchase_probability, expected_p, atol=1e-5)
    np.testing.assert_allclose(out.expected_gmv, expected_p * rows["price"] * rows["margin_rate"], atol=1e-5)
    native = ExpectedGMVScorer.from_dir(trained.model_dir, prefer_compiled=False)
    assert native.ranker.kind == "lightgbm"
    np.testing.assert_allclose(native.score(X, price=rows["price"].to_numpy()).ranker_score, out.ranker_score,
                               atol=1e-5)


def test_from_dir_without_compiled_libraries_warns_and_uses_lightgbm(trained, tmp_path):
    import shutil

    copy = tmp_path / "model"
    shutil.copytree(trained.model_dir, copy)
    (copy / "ranker.so").unlink()
    with pytest.warns(CompiledModelUnavailableWarning, match="ranker.so does not exist"):
        scorer = ExpectedGMVScorer.from_dir(copy)
    assert scorer.ranker.kind == "lightgbm" and scorer.purchase.kind == "compiled"
