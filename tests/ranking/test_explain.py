"""TreeSHAP explanations of the trained ranker and purchase model (ranking.explain)."""

from __future__ import annotations

import numpy as np
import pytest

from ranking.explain import ScoreExplainer, top_contributions
from ranking.scorer import ExpectedGMVScorer


def _identity_error(e) -> float:
    return abs(e.base_value + sum(e.contributions) + e.other - e.raw_output)


def test_contributions_add_up_to_the_raw_outputs_the_scorer_uses(trained, synthetic_frame):
    explainer = ScoreExplainer.from_dir(trained.model_dir)
    scorer = ExpectedGMVScorer.from_dir(trained.model_dir, prefer_compiled=False)
    assert explainer.feature_names == scorer.feature_names  # read from the metadata, not assumed
    X = synthetic_frame[explainer.feature_names].iloc[:300].to_numpy(np.float64)
    X[::7, 0] = np.nan  # missing values are explained too
    got = explainer.explain(X, top=3)
    assert len(got) == 300
    raw_ranker = np.array([e.ranker.raw_output for e in got])
    np.testing.assert_allclose(raw_ranker, scorer.score(X, price=np.ones(300)).ranker_score, atol=1e-9)
    # the purchase model's raw output is the log-odds of the funnel's last stage, P(purchase | click),
    # whose product with the earlier stages is the uncalibrated P(purchase | examined)
    p_stage = 1.0 / (1.0 + np.exp(-np.array([e.purchase.raw_output for e in got])))
    np.testing.assert_allclose(p_stage, scorer.purchase.predict(X), atol=1e-9)
    earlier = np.prod([m.predict(np.hstack([X, np.zeros((len(X), 1))]) if names[-1] == "position" else X)
                       for _, m, names in scorer.stages], axis=0)
    np.testing.assert_allclose(scorer.calibrator.predict(p_stage * earlier), scorer.purchase_probability(X), atol=1e-9)
    for e in got:
        assert _identity_error(e.ranker) < 1e-6 and _identity_error(e.purchase) < 1e-6
        assert len(e.ranker.features) == 3
        sizes = np.abs(e.ranker.contributions)
        assert (np.diff(sizes) <= 0).all()
    # the funnel's first stage has the slot; the purchase stage, explained here, has not
    assert explainer.purchase_feature_names == explainer.feature_names
    assert {f for e in got for f in e.ranker.features} <= set(explainer.feature_names)


def test_top_keeps_the_largest_and_sums_the_rest():
    contrib = np.array([[0.1, -0.5, 0.2, 0.05, 1.0]])  # 4 features, base value 1.0
    X = np.array([[1.0, 2.0, np.nan, 4.0]])
    (e,) = top_contributions(contrib, X, np.array([0.85 + 1.0]), ["a", "b", "c", "d"], 2)
    assert e.features == ("b", "c") and e.contributions == (-0.5, 0.2)
    assert e.values[0] == 2.0 and np.isnan(e.values[1])
    assert e.other == pytest.approx(0.15) and e.base_value == 1.0
    (all_of_them,) = top_contributions(contrib, X, np.array([1.85]), ["a", "b", "c", "d"], 10)
    assert len(all_of_them.features) == 4 and all_of_them.other == 0.0


@pytest.mark.parametrize(("kwargs", "match"), [
    (dict(top=-1), "top must be >= 0"),
    (dict(names=["a"]), "contrib must have shape"),
])
def test_bad_arguments(kwargs, match):
    args = dict(contrib=np.zeros((1, 3)), X=np.zeros((1, 2)), raw=np.zeros(1), names=["a", "b"], top=1)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        top_contributions(**args)


def test_a_model_of_another_width_is_refused(trained):
    explainer = ScoreExplainer.from_dir(trained.model_dir)
    with pytest.raises(ValueError, match="ranker model has"):
        ScoreExplainer(ranker=explainer.ranker, purchase=explainer.purchase, feature_names=["x"],
                       purchase_feature_names=["x"])
    with pytest.raises(ValueError, match=r"X must have shape"):
        explainer.explain(np.zeros((2, 3)), top=1)
