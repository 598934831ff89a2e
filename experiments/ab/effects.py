"""Treatment-effect estimates: Welch t-test, delta-method ratio test, clustered regression.

Every function returns an :class:`EffectEstimate` with the absolute lift ``treatment - control``,
the relative lift ``treatment / control - 1`` and intervals for both. Relative intervals use the
delta method: for ``r = m_t / m_c - 1`` with independent arm means,
``Var(r) ~= se_t**2 / m_c**2 + m_t**2 * se_c**2 / m_c**4``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import statsmodels.api as sm
from scipy import stats

from experiments.ab._checks import fail, float_1d, open_unit, same_length

__all__ = [
    "EffectEstimate",
    "clustered_regression",
    "ratio_delta_test",
    "welch_ttest",
]


@dataclass(frozen=True)
class EffectEstimate:
    """Treatment-vs-control effect of one metric.

    Attributes
    ----------
    method : str
        How it was computed (``"welch"``, ``"delta_ratio"``, ``"ols_cluster"``, ``"ols"``, ``"cuped"``).
    control_mean, treatment_mean : float
        Metric per arm (for ratio metrics the ratio; for regressions the fitted arm means).
    estimate : float
        Absolute lift ``treatment_mean - control_mean`` (the treatment coefficient for regressions).
    relative_lift : float
        ``estimate / control_mean``; NaN when ``control_mean`` is 0.
    std_error : float
        Standard error of ``estimate``.
    ci_low, ci_high : float
        ``1 - alpha`` interval of ``estimate``.
    relative_ci_low, relative_ci_high : float
        Delta-method normal ``1 - alpha`` interval of ``relative_lift``.
    p_value : float
        Two-sided p-value of ``estimate == 0``.
    alpha : float
        Level used for the intervals.
    n_control, n_treatment : int
        Independent units per arm (users, or clusters for clustered regressions).
    """

    method: str
    control_mean: float
    treatment_mean: float
    estimate: float
    relative_lift: float
    std_error: float
    ci_low: float
    ci_high: float
    relative_ci_low: float
    relative_ci_high: float
    p_value: float
    alpha: float
    n_control: int
    n_treatment: int


def _relative(
    control_mean: float, estimate: float, var_control: float, var_treatment: float, cov: float, alpha: float
) -> tuple[float, float, float]:
    """Relative lift ``estimate / control_mean`` with a delta-method normal interval.

    ``var_control``, ``var_treatment`` and ``cov`` are the variances and the covariance of the
    two arm means; the gradient of ``m_t / m_c`` is ``(-m_t / m_c**2, 1 / m_c)``.
    """
    if control_mean == 0.0:
        nan = float("nan")
        return nan, nan, nan
    treatment_mean = control_mean + estimate
    g_c, g_t = -treatment_mean / control_mean**2, 1.0 / control_mean
    var = g_c**2 * var_control + g_t**2 * var_treatment + 2.0 * g_c * g_t * cov
    half = stats.norm.ppf(1.0 - alpha / 2.0) * np.sqrt(max(var, 0.0))
    rel = estimate / control_mean
    return rel, rel - half, rel + half


def _two_sided_p(stat: float, df: float | None) -> float:
    dist = stats.norm if df is None else stats.t(df)
    return float(2.0 * dist.sf(abs(stat)))


def _estimate(
    method: str,
    *,
    control_mean: float,
    treatment_mean: float,
    var_control_mean: float,
    var_treatment_mean: float,
    alpha: float,
    df: float | None,
    n_control: int,
    n_treatment: int,
) -> EffectEstimate:
    """Assemble an EffectEstimate from two independent arm means and their variances."""
    estimate = treatment_mean - control_mean
    se = float(np.sqrt(var_control_mean + var_treatment_mean))
    q = stats.norm.ppf(1.0 - alpha / 2.0) if df is None else stats.t.ppf(1.0 - alpha / 2.0, df)
    if se > 0.0:
        p_value = _two_sided_p(estimate / se, df)
    else:  # both arms constant: the difference is known exactly
        p_value = 1.0 if estimate == 0.0 else 0.0
    rel, rel_lo, rel_hi = _relative(control_mean, estimate, var_control_mean, var_treatment_mean, 0.0, alpha)
    return EffectEstimate(
        method=method,
        control_mean=float(control_mean),
        treatment_mean=float(treatment_mean),
        estimate=float(estimate),
        relative_lift=rel,
        std_error=se,
        ci_low=float(estimate - q * se),
        ci_high=float(estimate + q * se),
        relative_ci_low=rel_lo,
        relative_ci_high=rel_hi,
        p_value=p_value,
        alpha=alpha,
        n_control=n_control,
        n_treatment=n_treatment,
    )


def welch_ttest(control: Any, treatment: Any, *, alpha: float = 0.05) -> EffectEstimate:
    """Difference in means of a per-unit metric with Welch's unequal-variance t-test.

    ``se = sqrt(s_c**2 / n_c + s_t**2 / n_t)`` (sample variances, ``ddof=1``);
    ``t = (mean_t - mean_c) / se`` against Student's t with Welch-Satterthwaite degrees of freedom
    ``df = se**4 / ((s_c**2/n_c)**2/(n_c-1) + (s_t**2/n_t)**2/(n_t-1))``.

    Parameters
    ----------
    control, treatment : array-like of shape (n_c,), (n_t,)
        One value per randomisation unit (user), at least 2 per arm.
    alpha : float, default=0.05
        Interval level ``1 - alpha``.

    Returns
    -------
    EffectEstimate
        ``method="welch"``.

    Raises
    ------
    TypeError
        If an input is not numeric array-like.
    ValueError
        If an arm has fewer than 2 values or non-finite values, or ``alpha`` is outside (0, 1).
    """
    c = float_1d(control, "control", min_size=2)
    t = float_1d(treatment, "treatment", min_size=2)
    level = open_unit(alpha, "alpha")
    return _welch(c, t, level, "welch")


def _welch(c: np.ndarray, t: np.ndarray, alpha: float, method: str) -> EffectEstimate:
    vc, vt = c.var(ddof=1) / c.size, t.var(ddof=1) / t.size
    denom = vc**2 / (c.size - 1) + vt**2 / (t.size - 1)
    df = (vc + vt) ** 2 / denom if denom > 0.0 else float(c.size + t.size - 2)
    return _estimate(
        method,
        control_mean=float(c.mean()),
        treatment_mean=float(t.mean()),
        var_control_mean=float(vc),
        var_treatment_mean=float(vt),
        alpha=alpha,
        df=float(df),
        n_control=c.size,
        n_treatment=t.size,
    )


def _ratio_and_variance(num: np.ndarray, den: np.ndarray) -> tuple[float, float]:
    """Ratio of means and its delta-method variance for one arm.

    ``R = mean(x) / mean(y)``;
    ``Var(R) ~= (s_x**2 - 2 R s_xy + R**2 s_y**2) / (n * mean(y)**2)``.
    """
    mx, my = num.mean(), den.mean()
    ratio = mx / my
    cov = np.cov(num, den, ddof=1)
    var = (cov[0, 0] - 2.0 * ratio * cov[0, 1] + ratio**2 * cov[1, 1]) / (num.size * my**2)
    return float(ratio), float(max(var, 0.0))


def ratio_delta_test(
    numerator_control: Any,
    denominator_control: Any,
    numerator_treatment: Any,
    denominator_treatment: Any,
    *,
    alpha: float = 0.05,
) -> EffectEstimate:
    """Difference of a ratio metric (e.g. GMV per session) between arms, by the delta method.

    The metric of an arm is ``R = sum(x) / sum(y)`` over its units (users), where ``x`` and
    ``y`` are per-user totals (GMV, sessions). Because sessions of a user are correlated, the
    user -- the randomisation unit -- is the sample; the delta method linearises ``R``::

        Var(R) ~= (s_x**2 - 2 R s_xy + R**2 s_y**2) / (n * mean(y)**2)

    and the arms are independent, so ``se = sqrt(Var(R_c) + Var(R_t))`` with a normal test.

    Parameters
    ----------
    numerator_control, denominator_control : array-like of shape (n_c,)
        Per-user numerator and denominator totals in control.
    numerator_treatment, denominator_treatment : array-like of shape (n_t,)
        The same for treatment.
    alpha : float, default=0.05
        Interval level ``1 - alpha``.

    Returns
    -------
    EffectEstimate
        ``method="delta_ratio"``; arm means are the arm ratios.

    Raises
    ------
    TypeError
        If an input is not numeric array-like.
    ValueError
        If an arm has fewer than 2 users, numerator and denominator lengths differ, values are
        non-finite, a denominator is negative or its arm total is 0, or ``alpha`` is outside (0, 1).
    """
    nc = float_1d(numerator_control, "numerator_control", min_size=2)
    dc = float_1d(denominator_control, "denominator_control", min_size=2)
    nt = float_1d(numerator_treatment, "numerator_treatment", min_size=2)
    dt = float_1d(denominator_treatment, "denominator_treatment", min_size=2)
    same_length(numerator_control=nc, denominator_control=dc)
    same_length(numerator_treatment=nt, denominator_treatment=dt)
    for name, den in (("denominator_control", dc), ("denominator_treatment", dt)):
        if np.any(den < 0.0) or den.sum() <= 0.0:
            raise fail(name, "non-negative with a positive total", f"min {den.min()}, sum {den.sum()}")
    level = open_unit(alpha, "alpha")
    rc, var_c = _ratio_and_variance(nc, dc)
    rt, var_t = _ratio_and_variance(nt, dt)
    return _estimate(
        "delta_ratio",
        control_mean=rc,
        treatment_mean=rt,
        var_control_mean=var_c,
        var_treatment_mean=var_t,
        alpha=level,
        df=None,
        n_control=nc.size,
        n_treatment=nt.size,
    )


def clustered_regression(
    data: pd.DataFrame,
    *,
    metric: str,
    treatment: str,
    cluster: str | None,
    covariates: Sequence[str] = (),
    alpha: float = 0.05,
) -> EffectEstimate:
    """Treatment effect from OLS ``metric ~ 1 + treatment + covariates`` with user-clustered errors.

    For session- or impression-level rows, several rows of one user are correlated, so the
    usual OLS standard error (rows independent) is too small. With ``cluster`` set, statsmodels'
    CRV1 sandwich ``(X'X)^-1 (sum_g X_g' e_g e_g' X_g) (X'X)^-1`` (with its small-sample factor)
    is used and tests use Student's t with ``G - 1`` degrees of freedom (``G`` clusters).
    Covariates are centred, so the intercept is the control mean at the average covariate and
    ``control_mean = b0``, ``treatment_mean = b0 + b1``; the relative lift ``b1 / b0`` takes its
    delta-method interval from the clustered covariance of ``(b0, b1)``.

    Parameters
    ----------
    data : pandas.DataFrame
        One row per observation (session, impression).
    metric : str
        Column with the outcome.
    treatment : str
        Column with the arm: bool or 0/1, 1 = treatment.
    cluster : str or None
        Column with the cluster (user) id; ``None`` gives the naive OLS standard error that
        treats rows as independent (for comparison only).
    covariates : sequence of str, default=()
        Extra numeric columns (e.g. a pre-period metric).
    alpha : float, default=0.05
        Interval level ``1 - alpha``.

    Returns
    -------
    EffectEstimate
        ``method="ols_cluster"`` or ``"ols"``; ``n_control``/``n_treatment`` count clusters
        (rows when ``cluster`` is None).

    Raises
    ------
    TypeError
        If ``data`` is not a DataFrame or a column name is not a str.
    ValueError
        If a column is missing or holds NaN, ``treatment`` is not binary or lacks an arm,
        ``alpha`` is outside (0, 1), a cluster spans both arms, or there are fewer than 2
        clusters per arm.
    """
    if not isinstance(data, pd.DataFrame):
        raise TypeError(f"data must be a pandas DataFrame, got {type(data).__name__}")
    level = open_unit(alpha, "alpha")
    columns = [metric, treatment, *covariates] + ([] if cluster is None else [cluster])
    for col in columns:
        if not isinstance(col, str):
            raise TypeError(f"column names must be str, got {type(col).__name__}")
        if col not in data.columns:
            raise fail(col, "a column of data", f"columns {list(data.columns)}")
        if data[col].isna().any():
            raise fail(col, "free of missing values", f"{int(data[col].isna().sum())} missing")
    y = float_1d(data[metric].to_numpy(), metric)
    arm = float_1d(data[treatment].to_numpy(), treatment)
    if not np.all((arm == 0.0) | (arm == 1.0)):
        raise fail(treatment, "binary (0/1 or bool)", f"values {np.unique(arm)[:5]}")
    x_cov = [float_1d(data[c].to_numpy(), c) for c in covariates]
    exog = np.column_stack([np.ones(y.size), arm, *[v - v.mean() for v in x_cov]])
    if cluster is None:
        n_control, n_treatment = int(np.sum(arm == 0.0)), int(np.sum(arm == 1.0))
        if min(n_control, n_treatment) < 2:
            raise fail(treatment, "holding >= 2 rows per arm", f"{n_control} control, {n_treatment} treatment")
        fit = sm.OLS(y, exog).fit()
        method = "ols"
    else:
        codes, _ = pd.factorize(data[cluster], sort=False)
        arm_per_cluster = pd.Series(arm).groupby(codes).agg(["min", "max"])
        if np.any(arm_per_cluster["min"] != arm_per_cluster["max"]):
            raise fail(cluster, "nested in arms (each cluster in one arm)", "clusters in both arms")
        n_treatment = int(arm_per_cluster["max"].sum())
        n_control = int(arm_per_cluster.shape[0] - n_treatment)
        if min(n_control, n_treatment) < 2:
            raise fail(cluster, "holding >= 2 clusters per arm", f"{n_control} control, {n_treatment} treatment")
        fit = sm.OLS(y, exog).fit(cov_type="cluster", cov_kwds={"groups": codes}, use_t=True)
        method = "ols_cluster"
    b0, b1 = float(fit.params[0]), float(fit.params[1])
    cov = np.asarray(fit.cov_params())
    ci = np.asarray(fit.conf_int(alpha=level))
    # Means are b0 and b0 + b1: Var(m_c) = V00, Var(m_t) = V00 + 2 V01 + V11, Cov = V00 + V01.
    var_c = cov[0, 0]
    var_t = cov[0, 0] + 2.0 * cov[0, 1] + cov[1, 1]
    rel, rel_lo, rel_hi = _relative(b0, b1, var_c, var_t, cov[0, 0] + cov[0, 1], level)
    return EffectEstimate(
        method=method,
        control_mean=b0,
        treatment_mean=b0 + b1,
        estimate=b1,
        relative_lift=rel,
        std_error=float(fit.bse[1]),
        ci_low=float(ci[1, 0]),
        ci_high=float(ci[1, 1]),
        relative_ci_low=rel_lo,
        relative_ci_high=rel_hi,
        p_value=float(fit.pvalues[1]),
        alpha=level,
        n_control=n_control,
        n_treatment=n_treatment,
    )
