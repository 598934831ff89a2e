"""Tests of experiments.ab: assignment, SRM, effects, CUPED, power, A/A, guardrails, sequential."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from experiments import ab
from experiments.ab import EffectEstimate

# ------------------------------------------------------------------ assignment and SRM


def test_assign_arm_is_deterministic_balanced_and_monotone_in_share():
    users = np.arange(20_000)
    first = ab.assign_arm(users, "exp-42", 0.3)
    assert first.dtype == bool
    np.testing.assert_array_equal(first, ab.assign_arm(users, "exp-42", 0.3))
    assert abs(first.mean() - 0.3) < 0.01
    # Ramping up only moves users from control to treatment.
    wider = ab.assign_arm(users, "exp-42", 0.5)
    assert np.all(wider[first])
    # Ids hash through str(): ints and their strings agree; a new salt is an independent split.
    np.testing.assert_array_equal(first[:100], ab.assign_arm([str(u) for u in range(100)], "exp-42", 0.3))
    other = ab.assign_arm(users, "exp-43", 0.5)
    assert abs(np.mean(other == wider) - 0.5) < 0.02
    assert not ab.assign_arm(users[:10], "s", 0.0).any()
    assert ab.assign_arm(users[:10], "s", 1.0).all()


def test_srm_flags_52_48_at_large_n_and_passes_50_50():
    bad = ab.sample_ratio_mismatch(48_000, 52_000)
    assert bad.mismatch and bad.p_value < 1e-10
    assert bad.observed_treatment_share == pytest.approx(0.52)
    good = ab.sample_ratio_mismatch(50_000, 50_000)
    assert not good.mismatch and good.p_value == pytest.approx(1.0)
    assert not ab.sample_ratio_mismatch(5_020, 4_980).mismatch
    # Against a planned 10 % treatment share.
    assert not ab.sample_ratio_mismatch(90_050, 9_950, expected_treatment_share=0.1).mismatch
    assert ab.sample_ratio_mismatch(90_000, 10_000, expected_treatment_share=0.11).mismatch


# ------------------------------------------------------------------ effect estimates


def test_welch_matches_scipy():
    rng = np.random.default_rng(0)
    c, t = rng.normal(10, 2, 300), rng.normal(10.5, 3, 200)
    res = ab.welch_ttest(c, t)
    ref = stats.ttest_ind(t, c, equal_var=False)
    ci = ref.confidence_interval(0.95)
    assert res.p_value == pytest.approx(ref.pvalue, rel=1e-10)
    assert (res.ci_low, res.ci_high) == pytest.approx((ci.low, ci.high), rel=1e-10)
    assert res.estimate == pytest.approx(t.mean() - c.mean())
    assert res.relative_lift == pytest.approx(t.mean() / c.mean() - 1)
    assert res.relative_ci_low < res.relative_lift < res.relative_ci_high


def _sessions_and_gmv(n_users: int, rng: np.random.Generator, lift: float = 0.0):
    sessions = rng.poisson(3.0, n_users) + 1
    spend_rate = rng.gamma(2.0, 5.0, n_users) * (1 + lift)  # heterogeneous users
    gmv = rng.poisson(sessions * spend_rate * 0.2) * 5.0
    return gmv.astype(float), sessions.astype(float)


def test_delta_method_se_agrees_with_bootstrap():
    rng = np.random.default_rng(1)
    gc, sc = _sessions_and_gmv(2000, rng)
    gt, st = _sessions_and_gmv(2000, rng, lift=0.05)
    res = ab.ratio_delta_test(gc, sc, gt, st)
    assert res.control_mean == pytest.approx(gc.sum() / sc.sum())
    boot = np.empty(400)
    for b in range(boot.size):
        i, j = rng.integers(0, 2000, 2000), rng.integers(0, 2000, 2000)
        boot[b] = gt[j].sum() / st[j].sum() - gc[i].sum() / sc[i].sum()
    assert res.std_error == pytest.approx(boot.std(ddof=1), rel=0.10)


def _session_frame(rng: np.random.Generator, n_users: int = 400, lift: float = 0.0) -> pd.DataFrame:
    """Session rows with a strong per-user effect (correlated sessions within a user)."""
    users = np.arange(n_users)
    treated = ab.assign_arm(users, "cluster-test", 0.5)
    n_sessions = rng.integers(1, 15, n_users)
    user_effect = rng.normal(0, 3, n_users)
    user = np.repeat(users, n_sessions)
    y = 10 + user_effect[user] + lift * treated[user] + rng.normal(0, 1, user.size)
    return pd.DataFrame({"user_id": user, "treated": treated[user], "gmv": y})


def test_clustered_se_exceeds_naive_se_with_correlated_sessions():
    df = _session_frame(np.random.default_rng(2), lift=0.5)
    clustered = ab.clustered_regression(df, metric="gmv", treatment="treated", cluster="user_id")
    naive = ab.clustered_regression(df, metric="gmv", treatment="treated", cluster=None)
    assert clustered.estimate == pytest.approx(naive.estimate)
    assert clustered.std_error > 1.5 * naive.std_error
    assert clustered.method == "ols_cluster" and naive.method == "ols"
    assert clustered.n_control + clustered.n_treatment == df.user_id.nunique()
    means = df.groupby("treated").gmv.mean()
    assert clustered.control_mean == pytest.approx(means[False])
    assert clustered.treatment_mean == pytest.approx(means[True])
    assert clustered.relative_ci_low < clustered.relative_lift < clustered.relative_ci_high


def test_aa_false_positive_rate_exposes_naive_se_on_clustered_data():
    df = _session_frame(np.random.default_rng(3), n_users=200)

    def naive(c: pd.DataFrame, t: pd.DataFrame) -> EffectEstimate:
        both = pd.concat([c.assign(arm=0), t.assign(arm=1)])
        return ab.clustered_regression(both, metric="gmv", treatment="arm", cluster=None)

    def clustered(c: pd.DataFrame, t: pd.DataFrame) -> EffectEstimate:
        both = pd.concat([c.assign(arm=0), t.assign(arm=1)])
        return ab.clustered_regression(both, metric="gmv", treatment="arm", cluster="user_id")

    kw = {"n_splits": 60, "groups": df.user_id.to_numpy(), "random_state": 3}
    fpr_naive = ab.run_aa_test(df, naive, **kw).false_positive_rate
    fpr_clustered = ab.run_aa_test(df, clustered, **kw).false_positive_rate
    assert fpr_naive > 0.3
    assert fpr_clustered < 0.15


def test_aa_false_positive_rate_is_near_alpha():
    values = np.random.default_rng(4).lognormal(2, 1, 2000)
    res = ab.run_aa_test(values, n_splits=200, alpha=0.05, random_state=7)
    assert res.p_values.shape == (200,)
    assert 0.01 <= res.false_positive_rate <= 0.10
    assert res.uniformity_p_value > 0.01
    again = ab.run_aa_test(values, n_splits=200, alpha=0.05, random_state=7)
    np.testing.assert_array_equal(res.p_values, again.p_values)


# ------------------------------------------------------------------ CUPED


def _pre_post(rng: np.random.Generator, n: int, effect: float):
    pre = rng.normal(50, 10, n)
    post = 0.9 * pre + rng.normal(5, 6, n) + effect
    return post, pre


def test_cuped_adjust_keeps_the_mean_and_removes_correlated_variance():
    post, pre = _pre_post(np.random.default_rng(5), 5000, 0.0)
    adj = ab.cuped_adjust(post, pre)
    assert adj.adjusted.mean() == pytest.approx(post.mean())
    assert adj.variance_reduction == pytest.approx(np.corrcoef(post, pre)[0, 1] ** 2, rel=1e-6)
    assert adj.theta == pytest.approx(0.9, abs=0.05)


def test_cuped_reduces_variance_and_stays_unbiased():
    rng = np.random.default_rng(6)
    yc, xc = _pre_post(rng, 3000, 0.0)
    yt, xt = _pre_post(rng, 3000, 1.0)
    res = ab.cuped_ttest(yc, xc, yt, xt)
    assert res.variance_reduction > 0.5
    assert res.effect.std_error < 0.7 * res.unadjusted.std_error
    # Unbiased: the mean estimate over replications is close to the true effect 1.0.
    estimates = []
    for _ in range(40):
        yc, xc = _pre_post(rng, 400, 0.0)
        yt, xt = _pre_post(rng, 400, 1.0)
        estimates.append(ab.cuped_ttest(yc, xc, yt, xt).effect.estimate)
    estimates = np.array(estimates)
    assert abs(estimates.mean() - 1.0) < 3.5 * estimates.std(ddof=1) / np.sqrt(estimates.size)


# ------------------------------------------------------------------ power


def test_power_sample_size_round_trip():
    n = ab.required_sample_size(mde=0.1, std=1.0)
    assert n == 1571  # (z_.975 + z_.8)^2 * 2 / 0.1^2 = 1570 plus the t correction
    mde = ab.minimum_detectable_effect(n_control=n, std=1.0)
    assert 0.0995 < mde <= 0.1
    assert ab.statistical_power(effect=0.1, std=1.0, n_control=n) >= 0.8
    assert ab.statistical_power(effect=0.1, std=1.0, n_control=n - 5) < 0.8
    # Unequal arms: twice as many treated users need fewer control users.
    n2 = ab.required_sample_size(mde=2.0, std=20.0, power=0.9, ratio=2.0)
    assert n2 < ab.required_sample_size(mde=2.0, std=20.0, power=0.9)
    assert ab.minimum_detectable_effect(n_control=n2, std=20.0, power=0.9, ratio=2.0) == pytest.approx(2.0, rel=0.01)


def test_power_functions_return_scalars_where_statsmodels_falls_back_to_fsolve():
    # At these inputs solve_power returns a shape-(1,) array, which float() rejects under numpy 2.
    mde = ab.minimum_detectable_effect(n_control=2800, std=1.0, ratio=2943 / 2800)
    assert isinstance(mde, float) and 0.07 < mde < 0.075
    assert ab.statistical_power(effect=mde, std=1.0, n_control=2800, ratio=2943 / 2800) == pytest.approx(0.8, abs=1e-3)


# ------------------------------------------------------------------ guardrails


def _estimate(rel_lo: float, rel_hi: float, rel: float = 0.0) -> EffectEstimate:
    return EffectEstimate(
        method="welch", control_mean=10.0, treatment_mean=10.0 * (1 + rel), estimate=10.0 * rel,
        relative_lift=rel, std_error=0.1, ci_low=10 * rel_lo, ci_high=10 * rel_hi,
        relative_ci_low=rel_lo, relative_ci_high=rel_hi, p_value=0.5, alpha=0.05,
        n_control=100, n_treatment=100,
    )


def test_guardrail_table_applies_non_inferiority_per_direction():
    results = {
        "gmv_per_user": _estimate(-0.005, 0.03, 0.01),  # could be 0.5 % worse: within 1 %
        "conversion": _estimate(-0.04, 0.02),  # could be 4 % worse: fails a 2 % margin
        "p99_latency_ms": _estimate(-0.01, 0.08, 0.03),  # lower is better: could be 8 % worse
    }
    table = ab.guardrail_table(
        results,
        {"gmv_per_user": 0.01, "conversion": 0.02, "p99_latency_ms": 0.10},
        higher_is_better={"p99_latency_ms": False},
    )
    assert list(table.columns) == list(ab.GUARDRAIL_COLUMNS)
    assert table.set_index("metric").passed.to_dict() == {
        "gmv_per_user": True,
        "conversion": False,
        "p99_latency_ms": True,
    }
    strict = ab.guardrail_table(results, {"gmv_per_user": 0.0, "conversion": 0.1, "p99_latency_ms": 0.05},
                                higher_is_better={"p99_latency_ms": False})
    assert strict.passed.tolist() == [False, True, False]


# ------------------------------------------------------------------ sequential testing


def test_obrien_fleming_boundaries_match_published_values():
    plan = ab.obrien_fleming_plan(5, alpha=0.05)
    # gsDesign / ldbounds, 5 equally spaced looks, two-sided 0.05 (sfLDOF at 0.025 per side).
    np.testing.assert_allclose(plan.boundaries, [4.877, 3.357, 2.680, 2.290, 2.031], atol=1e-3)
    assert np.all(np.diff(plan.boundaries) < 0)
    assert 2.0 < plan.boundaries[-1] < 2.05  # a little above the fixed-sample 1.96
    assert plan.cumulative_alpha[-1] == pytest.approx(0.05)
    assert plan.nominal_alpha[-1] < 0.05
    assert ab.obrien_fleming_plan(1).boundaries[0] == pytest.approx(1.959964, abs=1e-6)
    uneven = ab.obrien_fleming_plan(information_fractions=[0.25, 0.6, 1.0])
    assert uneven.n_looks == 3 and uneven.information_fractions == (0.25, 0.6, 1.0)


def test_obrien_fleming_plan_controls_type_one_error_by_simulation():
    plan = ab.obrien_fleming_plan(5)
    rng = np.random.default_rng(8)
    increments = rng.normal(0.0, np.sqrt(0.2), size=(100_000, 5))
    z = np.cumsum(increments, axis=1) / np.sqrt(np.arange(1, 6) * 0.2)
    rejected = np.any(np.abs(z) >= np.array(plan.boundaries), axis=1)
    assert rejected.mean() == pytest.approx(0.05, abs=0.004)
    naive = np.any(np.abs(z) >= 1.959964, axis=1).mean()
    assert naive > 0.12  # peeking five times at 1.96 more than doubles the error rate


def test_sequential_decision():
    plan = ab.obrien_fleming_plan(5)
    early = ab.sequential_decision(plan, 1, 3.0)
    assert not early.reject and not early.stop and early.boundary == plan.boundaries[0]
    assert ab.sequential_decision(plan, 2, -3.5).reject
    last = ab.sequential_decision(plan, 5, 1.0)
    assert last.stop and not last.reject
    assert ab.sequential_decision(plan, 5, 2.05).reject


# ------------------------------------------------------------------ invalid inputs

_DF = pd.DataFrame({"user_id": [1, 1, 2, 3, 4, 5], "treated": [0, 0, 1, 0, 1, 1], "gmv": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]})
_DF_SPAN = _DF.assign(treated=[0, 1, 1, 0, 1, 0])

INVALID = [
    (ab.assign_arm, {"user_ids": [1, 2], "salt": 5, "treatment_share": 0.5}, TypeError, "salt must be a str"),
    (ab.assign_arm, {"user_ids": [1, 2], "salt": "", "treatment_share": 0.5}, ValueError, "salt must be 1 to 64"),
    (ab.assign_arm, {"user_ids": [1, 2], "salt": "s", "treatment_share": 1.5}, ValueError, r"treatment_share must be in \[0, 1\]"),
    (ab.assign_arm, {"user_ids": [[1, 2]], "salt": "s", "treatment_share": 0.5}, ValueError, "user_ids must be a 1-D array"),
    (ab.sample_ratio_mismatch, {"n_control": -1, "n_treatment": 5}, ValueError, "n_control must be >= 0"),
    (ab.sample_ratio_mismatch, {"n_control": 5, "n_treatment": 5.0}, TypeError, "n_treatment must be an int"),
    (ab.sample_ratio_mismatch, {"n_control": 5, "n_treatment": 5, "expected_treatment_share": 1.0}, ValueError, "expected_treatment_share must be in"),
    (ab.welch_ttest, {"control": [1.0], "treatment": [1.0, 2.0]}, ValueError, "control must be of length >= 2"),
    (ab.welch_ttest, {"control": [1.0, np.nan], "treatment": [1.0, 2.0]}, ValueError, "control must be finite"),
    (ab.welch_ttest, {"control": [1.0, 2.0], "treatment": [1.0, 2.0], "alpha": 0.0}, ValueError, r"alpha must be in \(0, 1\)"),
    (ab.ratio_delta_test, {"numerator_control": [1.0, 2.0], "denominator_control": [1.0, 1.0, 1.0], "numerator_treatment": [1.0, 2.0], "denominator_treatment": [1.0, 1.0]}, ValueError, "denominator_control must be of the same length"),
    (ab.ratio_delta_test, {"numerator_control": [1.0, 2.0], "denominator_control": [0.0, 0.0], "numerator_treatment": [1.0, 2.0], "denominator_treatment": [1.0, 1.0]}, ValueError, "denominator_control must be non-negative with a positive total"),
    (ab.clustered_regression, {"data": _DF, "metric": "revenue", "treatment": "treated", "cluster": "user_id"}, ValueError, "revenue must be a column of data"),
    (ab.clustered_regression, {"data": _DF_SPAN, "metric": "gmv", "treatment": "treated", "cluster": "user_id"}, ValueError, "user_id must be nested in arms"),
    (ab.clustered_regression, {"data": _DF.assign(treated=[0, 2, 1, 0, 1, 1]), "metric": "gmv", "treatment": "treated", "cluster": None}, ValueError, "treated must be binary"),
    (ab.clustered_regression, {"data": _DF.assign(gmv=[1.0, None, 3.0, 4.0, 5.0, 6.0]), "metric": "gmv", "treatment": "treated", "cluster": None}, ValueError, "gmv must be free of missing values"),
    (ab.clustered_regression, {"data": _DF.to_dict(), "metric": "gmv", "treatment": "treated", "cluster": None}, TypeError, "data must be a pandas DataFrame"),
    (ab.cuped_adjust, {"metric": [1.0, 2.0, 3.0], "covariate": [1.0, 1.0, 1.0]}, ValueError, "covariate must be non-constant"),
    (ab.cuped_ttest, {"control": [1.0, 2.0], "control_covariate": [1.0, 2.0, 3.0], "treatment": [1.0, 2.0], "treatment_covariate": [1.0, 2.0]}, ValueError, "control_covariate must be of the same length"),
    (ab.required_sample_size, {"mde": 0.0, "std": 1.0}, ValueError, "mde must be > 0"),
    (ab.required_sample_size, {"mde": 0.1, "std": 1.0, "power": 1.0}, ValueError, r"power must be in \(0, 1\)"),
    (ab.minimum_detectable_effect, {"n_control": 1, "std": 1.0}, ValueError, "n_control must be >= 2"),
    (ab.statistical_power, {"effect": "big", "std": 1.0, "n_control": 10}, TypeError, "effect must be a real number"),
    (ab.run_aa_test, {"data": [1.0, 2.0, 3.0]}, TypeError, "data must be a numpy array or a pandas DataFrame"),
    (ab.run_aa_test, {"data": np.arange(3.0)}, ValueError, "data must be large enough"),
    (ab.run_aa_test, {"data": np.arange(10.0), "groups": np.arange(5)}, ValueError, "groups must be a 1-D array of length 10"),
    (ab.guardrail_table, {"results": {"gmv": _estimate(0.0, 0.1)}, "allowed_degradation": {}}, ValueError, "allowed_degradation must be given for metric 'gmv'"),
    (ab.guardrail_table, {"results": {"gmv": _estimate(0.0, 0.1)}, "allowed_degradation": {"gmv": -0.1}}, ValueError, r"allowed_degradation\['gmv'\] must be >= 0"),
    (ab.guardrail_table, {"results": {}, "allowed_degradation": {}}, ValueError, "results must be a non-empty mapping"),
    (ab.obrien_fleming_plan, {"n_looks": 0}, ValueError, "n_looks must be >= 1"),
    (ab.obrien_fleming_plan, {}, ValueError, "exactly one of them"),
    (ab.obrien_fleming_plan, {"information_fractions": [0.5, 0.4, 1.0]}, ValueError, "information_fractions must be strictly increasing"),
    (ab.obrien_fleming_plan, {"information_fractions": [0.5, 0.9]}, ValueError, "ending at 1"),
    (ab.obrien_fleming_spending, {"information_fraction": [0.0, 1.0]}, ValueError, r"information_fraction must be in \(0, 1\]"),
]


@pytest.mark.parametrize(("func", "kwargs", "error", "match"), INVALID, ids=lambda v: getattr(v, "__name__", None))
def test_invalid_inputs_raise_with_the_argument_named(func, kwargs, error, match):
    with pytest.raises(error, match=match):
        func(**kwargs)


def test_sequential_decision_rejects_bad_look_and_z():
    plan = ab.obrien_fleming_plan(3)
    with pytest.raises(ValueError, match=r"look must be <= n_looks \(3\)"):
        ab.sequential_decision(plan, 4, 1.0)
    with pytest.raises(ValueError, match="look must be >= 1"):
        ab.sequential_decision(plan, 0, 1.0)
    with pytest.raises(ValueError, match="z must be finite"):
        ab.sequential_decision(plan, 1, float("nan"))
